"""`split_model` and `load_backbone` on tiny saved checkpoints of every supported architecture."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from support.tiny import ARCHITECTURES, save_tiny_model

from tl_hub.backbone import load_backbone, split_model
from tl_hub.errors import ModelError, TlHubError

LABELS = ["a", "b", "c"]
VIT_LIKE = ("vit", "deit", "dinov2")


def expected_blocks(arch, config):
    if arch in VIT_LIKE:
        assert config.num_hidden_layers == 2
        return config.num_hidden_layers
    return len(config.depths)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """``loaded(arch)`` -> Backbone loaded from the session's tiny checkpoint (cached for the module)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = load_backbone(tiny_model_dir(arch), LABELS)
        return cache[arch]

    return get


def _non_head(sd):
    return {k: v for k, v in sd.items() if not k.startswith("classifier")}


def _match_tensors(checkpoint, model_sd):
    """Pair every checkpoint tensor with an equal, distinct model tensor (names may differ: transformers 5
    renames some checkpoint keys on load). Returns the unmatched checkpoint keys and leftover model keys."""
    pool = list(model_sd.items())
    unmatched = []
    for key, t in checkpoint.items():
        for i, (_, u) in enumerate(pool):
            if u.shape == t.shape and u.dtype == t.dtype and torch.equal(u, t):
                pool.pop(i)
                break
        else:
            unmatched.append(key)
    return unmatched, [k for k, _ in pool]


# ---------------------------------------------------------------------------------------------------------------------
# split_model


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_split_model_groups_in_order(arch, loaded):
    model = loaded(arch).model
    parts = split_model(model)
    n = expected_blocks(arch, model.config)
    assert n == (2 if arch in VIT_LIKE + ("swin",) else 4)

    # the head is the layer that makes the logits: ResNet's classifier is Sequential(Flatten, Linear)
    assert parts.head == (("classifier.1",) if arch == "resnet" else ("classifier",))
    assert parts.encoder == model.base_model_prefix == arch
    expected = ["embeddings"] + [f"block.{i}" for i in range(n)] + ([] if arch == "resnet" else ["norm"])
    assert [g.name for g in parts.groups] == expected
    assert [g.kind for g in parts.groups] == [name.split(".")[0] for name in expected]
    assert len(parts.blocks) == n
    # the blocks are the consecutive children of one container, in order
    for i, block in enumerate(parts.blocks):
        assert len(block.modules) == 1
        assert block.modules[0].endswith(f".{i}")
        assert block.params and all(p.startswith(block.modules[0] + ".") for p in block.params)
    containers = {b.modules[0].rsplit(".", 1)[0] for b in parts.blocks}
    assert len(containers) == 1
    assert parts.group("embeddings").name == "embeddings"
    with pytest.raises(KeyError):
        parts.group("block.99")


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_split_model_partitions_all_parameters(arch, loaded):
    model = loaded(arch).model
    parts = split_model(model)
    all_names = [n for n, _ in model.named_parameters()]
    head = parts.head_params(model)
    groups = parts.encoder_params()
    assert head and all(h.startswith("classifier.") for h in head)
    together = head + groups + list(parts.unused)
    assert len(together) == len(set(together)), "a parameter is in two groups"
    assert set(together) == set(all_names), "some parameters are in no group"
    # only parameters the forward never uses are left out of the groups (DINOv2's mask token: no masked inputs)
    assert list(parts.unused) == (["dinov2.embeddings.mask_token"] if arch == "dinov2" else [])
    # the groups themselves do not overlap
    seen = set()
    for g in parts.groups:
        assert g.params, f"empty group {g.name}"
        assert not seen & set(g.params)
        seen |= set(g.params)
    # embeddings come from the input side, norm from the output side
    assert any("embed" in p for p in parts.group("embeddings").params)
    if arch != "resnet":
        assert all("norm" in p for p in parts.group("norm").params)


# ---------------------------------------------------------------------------------------------------------------------
# load_backbone


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_load_backbone_new_head_labels_and_processor(arch, loaded, tiny_model_dir):
    bb = loaded(arch)
    model = bb.model
    assert bb.pretrained is True
    assert bb.source == tiny_model_dir(arch)
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.config.label2id == {"a": 0, "b": 1, "c": 2}
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3)

    assert "ImageProcessor" in type(bb.processor).__name__
    from PIL import Image

    pixel_values = bb.processor(images=[Image.new("RGB", (50, 40), (10, 20, 30))], return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 3, 32, 32)
    assert [g.name for g in bb.parts.groups] == [g.name for g in split_model(model).groups]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_load_backbone_keeps_encoder_weights(arch, loaded, tiny_model_dir):
    checkpoint = _non_head(load_file(os.path.join(tiny_model_dir(arch), "model.safetensors")))
    model_sd = _non_head(loaded(arch).model.state_dict())
    # keys with the same name in the checkpoint and the model hold the same values
    common = set(checkpoint) & set(model_sd)
    assert common
    for key in common:
        assert torch.equal(checkpoint[key], model_sd[key]), key
    # and every checkpoint tensor was loaded somewhere (whatever transformers renamed)
    unmatched, leftover = _match_tensors(checkpoint, model_sd)
    assert unmatched == [] and leftover == []


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_load_backbone_reinitialises_head_with_same_label_count(arch, tmp_path):
    path = save_tiny_model(arch, str(tmp_path / arch), num_labels=3)
    checkpoint = load_file(os.path.join(path, "model.safetensors"))
    head_weights = {k: v for k, v in checkpoint.items() if k.startswith("classifier") and v.ndim == 2}
    assert head_weights and all(v.shape[0] == 3 for v in head_weights.values())
    bb = load_backbone(path, LABELS)
    sd = bb.model.state_dict()
    for key, value in head_weights.items():
        assert sd[key].shape == value.shape
        assert not torch.equal(sd[key], value), f"{key} was kept from the checkpoint"
    # the encoder still comes from the checkpoint
    unmatched, _ = _match_tensors(_non_head(checkpoint), _non_head(sd))
    assert unmatched == []


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURES)
def test_load_backbone_scratch_has_random_encoder(arch, tiny_model_dir):
    checkpoint = _non_head(load_file(os.path.join(tiny_model_dir(arch), "model.safetensors")))
    torch.manual_seed(1234)
    bb = load_backbone(tiny_model_dir(arch), LABELS, pretrained=False)
    assert bb.pretrained is False
    assert bb.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert bb.model.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert bb.model.config.num_labels == 3
    sd = _non_head(bb.model.state_dict())
    random_ckpt = {k: v for k, v in checkpoint.items()
                   if v.is_floating_point() and v.ndim >= 2 and v.min() != v.max()}
    assert random_ckpt
    unmatched, _ = _match_tensors(random_ckpt, sd)
    assert sorted(unmatched) == sorted(random_ckpt), "scratch model has pretrained weights"


@pytest.mark.slow
def test_scratch_starts_norm_layers_as_identity_so_a_deep_efficientnet_carries_signal(tmp_path):
    """transformers' EfficientNet draws BatchNorm scales from N(0, 0.02): 16 blocks of that and the features are
    ~1e-29, so a scratch baseline never leaves chance.  Scratch starts every norm layer at scale 1, shift 0."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, ViTImageProcessor

    from tl_hub.backbone import NORMS

    folder = str(tmp_path / "effnet")
    EfficientNetForImageClassification(EfficientNetConfig(image_size=64, num_labels=3)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    bb = load_backbone(folder, LABELS, pretrained=False)
    norms = [m for m in bb.model.modules() if isinstance(m, NORMS)]
    assert len(norms) > 40 and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    features = []
    bb.model.classifier.register_forward_pre_hook(lambda module, args: features.append(args[0]))
    bb.model.train()(pixel_values=torch.randn(4, 3, 64, 64))
    assert features[0].std() > 1e-2
    # the pretrained path keeps the checkpoint's norm scales
    pretrained = load_backbone(folder, LABELS)
    assert not all(torch.equal(m.weight, torch.ones_like(m.weight))
                   for m in pretrained.model.modules() if isinstance(m, NORMS))


# ---------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name, expected", [
    ("/nonexistent/model", ["model folder not found", "folder of a saved model", "Hub model id"]),
    ("no-such-org/no-such-model", ["Could not load model", "Check the name", "path of a saved model"]),
])
def test_unknown_model_is_a_model_error(name, expected):
    with pytest.raises(ModelError) as info:
        load_backbone(name, LABELS)
    msg = str(info.value)
    assert isinstance(info.value, TlHubError)
    assert name in msg
    assert all(e in msg for e in expected), msg


def test_non_image_model_is_a_model_error(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    BertModel(config).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ModelError) as info:
        load_backbone(str(tmp_path / "bert"), LABELS)
    msg = str(info.value)
    assert "'bert'" in msg and "no image-classification architecture" in msg
    assert "Use an image classification checkpoint" in msg


def test_pickle_only_checkpoint_needs_allow_pickle(tiny_model_dir, tmp_path):
    src = tiny_model_dir("vit")
    path = str(tmp_path / "pickled")
    shutil.copytree(src, path)
    state = load_file(os.path.join(path, "model.safetensors"))
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    os.remove(os.path.join(path, "model.safetensors"))

    with pytest.raises(ModelError) as info:
        load_backbone(path, LABELS)
    msg = str(info.value)
    assert "no safetensors weights" in msg and "pickle" in msg
    assert "allow_pickle=True" in msg

    bb = load_backbone(path, LABELS, allow_pickle=True)
    unmatched, leftover = _match_tensors(_non_head(state), _non_head(bb.model.state_dict()))
    assert unmatched == [] and leftover == []
    assert bb.model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_missing_image_processor_is_a_model_error(tiny_model_dir, tmp_path):
    path = str(tmp_path / "noproc")
    shutil.copytree(tiny_model_dir("vit"), path)
    os.remove(os.path.join(path, "preprocessor_config.json"))
    with pytest.raises(ModelError) as info:
        load_backbone(path, LABELS)
    msg = str(info.value)
    assert path in msg
    assert "no usable image processor" in msg and "preprocessor_config.json" in msg
    assert "save the processor" in msg


@pytest.mark.parametrize("model_type,blocks,joined", [
    ("convnext", 18, {3: "convnext.encoder.stages.1.downsampling_layer", 6: "convnext.encoder.stages.2.downsampling_layer",
                      15: "convnext.encoder.stages.3.downsampling_layer"}),
    ("swin", 12, {2: "swin.encoder.layers.0.downsample", 4: "swin.encoder.layers.1.downsample",
                  10: "swin.encoder.layers.2.downsample"}),
    ("resnet", 16, {}),
])
def test_staged_models_get_one_group_per_block(model_type, blocks, joined):
    """ConvNeXt 3-3-9-3, Swin 2-2-6-2 and ResNet 3-4-6-3: depth counts blocks across stages, and a stage's
    downsampling layer goes with the block that runs after it (it was one group per stage)."""
    from support import arch_zoo

    model, _ = arch_zoo.build_tiny(model_type)
    parts = split_model(model)
    assert len(parts.blocks) == blocks
    for index, module in joined.items():
        assert module in parts.group(f"block.{index}").modules
    top2 = {p for g in parts.blocks[-2:] for p in g.params}
    assert len(top2) < len(parts.encoder_params()) / 2  # unfreeze=2 no longer means most of the encoder
