"""Every image-classification type transformers maps, enumerated at run time, on a tiny checkpoint with the depth of
a real one (`arch_zoo`): the split, feature extraction, fine-tuning with ``unfreeze=2`` and ``layer_decay``, LoRA
where the blocks have linear layers, save -> load, and the ONNX export with its parity (`arch_check`).  A type is either passing, or skipped because
it cannot be built here (`arch_zoo.SKIP`, with the missing dependency), or refused by tl-hub with a clear error
(`arch_check.REFUSED`); a new type that is none of these fails."""

import pytest
from support import arch_check, arch_zoo
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from tl_hub import ModelError, load_backbone

pytestmark = pytest.mark.slow  # see pyproject.toml: the inner loop is -m "not slow"

TYPES = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def test_the_zoo_covers_every_mapped_type():
    assert arch_zoo.TYPES == TYPES and len(TYPES) >= 42
    assert not arch_zoo.missing_recipes(), "a new architecture needs a tiny config in tests/arch_zoo.py"
    assert set(arch_zoo.SKIP) <= {"dinat", "timm_wrapper"}, "only types whose dependency cannot be installed"
    passing = [t for t in TYPES if t not in arch_zoo.SKIP and t not in arch_check.REFUSED]
    assert len(passing) >= 38


@pytest.mark.parametrize("model_type", TYPES)
def test_every_mapped_architecture(model_type, tmp_path):
    if model_type in arch_zoo.SKIP:
        pytest.skip(arch_zoo.SKIP[model_type])
    if model_type in arch_check.REFUSED:
        folder = arch_zoo.save_tiny(model_type, str(tmp_path / "base"))
        with pytest.raises(ModelError, match="cannot classify an image on its own"):
            load_backbone(folder, arch_check.LABELS)
        return
    result = arch_check.check(model_type, str(tmp_path))
    print(result)
    assert result["blocks"] >= 2
    assert isinstance(result["onnx"], dict), result["onnx"]  # exported within the parity tolerance
