"""Two real processes (gloo on CPU) give the one-process metrics, across the head -> fine-tune change."""

import json
import os
import sys

import datasets
import pytest
from support.launch import accelerate_launch, launch_env, run
from support.tiny import colour_dataset

SCRIPT = os.path.join(os.path.dirname(__file__), "support", "scripts", "dist_fit.py")

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    # 96 training images = 6 global batches of 16; 30 validation images in one batch of 32 (even per process)
    data = datasets.DatasetDict({"train": colour_dataset(96, seed=1), "validation": colour_dataset(30, seed=2)})
    data.save_to_disk(str(root / "data"))
    return tiny_model_dir("vit"), str(root / "data"), root


def test_two_processes_match_one_process(setup):
    model_dir, data_dir, root = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = root / "single"
    run([sys.executable, SCRIPT, model_dir, data_dir, str(root / "out1"), str(single)], env)

    double = root / "double"
    # a cold feature cache: the two processes compute the head period's features themselves (sharded)
    run(accelerate_launch(SCRIPT, model_dir, data_dir, str(root / "out2"), str(double)),
        launch_env(TL_HUB_CACHE=str(root / "cold-cache")))

    one = json.load(open(f"{single}.rank0"))
    ranks = [json.load(open(f"{double}.rank{r}")) for r in (0, 1)]
    assert one["world_size"] == 1
    assert [r["world_size"] for r in ranks] == [2, 2], "accelerate did not start two processes"
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [h["period"] for h in one["history"]] == ["head", "fine-tune", "fine-tune"]
    worst = 0.0
    for rank in ranks:
        assert len(rank["history"]) == len(one["history"])
        for h1, h2 in zip(one["history"], rank["history"]):
            for key in ("train_loss", "loss", "accuracy", "f1"):
                assert h2[key] == pytest.approx(h1[key], abs=1e-4), (key, h1["epoch"])
                worst = max(worst, abs(h2[key] - h1[key]))
    print(f"largest 1- vs 2-process difference in any per-epoch metric: {worst:.2g}")
    # only the main process wrote the model folder, and completely
    assert sorted(os.listdir(root / "out2")) == sorted(os.listdir(root / "out1"))
    assert not [p for p in os.listdir(root) if p.startswith(".out")]
    assert os.listdir(root / "cold-cache" / "features")  # they did compute (and cache) the features


DDP_TYPES = ("vit", "convnext", "clip", "dinov2", "siglip", "efficientnet", "swin")


def test_two_processes_fine_tune_every_kind_of_encoder(tmp_path):
    """ViT, ConvNeXt (3-3-9-3), CLIP, DINOv2, SigLIP, EfficientNet and Swin (2-2-6-2) under DDP, 3 optimizer steps
    in each period: no unused-parameter error (CLIP's post-layernorm, DINOv2's mask token and SigLIP's pooling head
    are never trained) and the one-process metrics.  The runs are in float64 (float32 noise, which these tiny random
    models amplify, would hide a real difference), and dropout and stochastic depth are off: with them on, each
    process draws its own masks, so N processes match one only in distribution."""
    from support.arch_check import one_vs_two_processes

    result = one_vs_two_processes(DDP_TYPES, str(tmp_path))
    for name, r in result.items():
        assert r["world_sizes"] == [1, 2, 2], "accelerate did not start two processes"
        assert r["epochs"] == {"head": 1, "fine-tune": 1}
        assert r["max_difference"] <= 1e-4, (name, r)
    assert result["dinov2"]["unused"] == 1 and result["clip"]["unused"] == 2 and result["siglip"]["unused"] > 0
    print("largest 1- vs 2-process difference per model:", {k: f"{v['max_difference']:.2g}" for k, v in result.items()})


def test_two_processes_train_top_blocks_on_the_cached_prefix(tmp_path):
    """Top-2 fine-tuning on the cached frozen prefix (a plain ViT, a staged ConvNeXt, Swin with its patch merging)
    under DDP: every process uses the same cut and the metrics are those of one process."""
    from support.arch_check import one_vs_two_processes

    result = one_vs_two_processes(("vit", "convnext", "swin"), str(tmp_path), prefix=True)
    for name, r in result.items():
        assert r["world_sizes"] == [1, 2, 2], "accelerate did not start two processes"
        assert r["prefix_cuts"][0] is not None and len(set(r["prefix_cuts"])) == 1, (name, r)
        assert r["max_difference"] <= 1e-4, (name, r)


def test_two_processes_train_the_same_multi_label_model(tiny_model_dir, tmp_path):
    """Multi-label: the one-vs-rest solve, the thresholds and a fine-tune give the one-process figures."""
    from support.tiny import multilabel_dataset

    script = os.path.join(os.path.dirname(__file__), "support", "scripts", "dist_multilabel.py")
    data = datasets.DatasetDict({"train": multilabel_dataset(96, seed=1), "validation": multilabel_dataset(32, seed=2)})
    data.save_to_disk(str(tmp_path / "data"))
    model_dir = tiny_model_dir("vit")
    run([sys.executable, script, model_dir, str(tmp_path / "data"), str(tmp_path / "single")],
        {**os.environ, "OMP_NUM_THREADS": "1"})
    run(accelerate_launch(script, model_dir, str(tmp_path / "data"), str(tmp_path / "double")),
        launch_env(TL_HUB_CACHE=str(tmp_path / "cold-cache")))
    one = json.load(open(f"{tmp_path / 'single'}.rank0"))
    ranks = [json.load(open(f"{tmp_path / 'double'}.rank{r}")) for r in (0, 1)]
    assert one["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    worst = {}
    for name in ("feature-extraction", "fine-tune"):
        for rank in ranks:
            a, b = one[name], rank[name]
            diffs = [abs(a["metrics"][k] - b["metrics"][k]) for k in a["metrics"]]
            diffs += [abs(a["thresholds"][k] - b["thresholds"][k]) for k in a["thresholds"]]
            diffs += [abs(x - y) for ra, rb in zip(a["probabilities"], b["probabilities"]) for x, y in zip(ra, rb)]
            diffs += [abs(h1[k] - h2[k]) for h1, h2 in zip(a["history"], b["history"])
                      for k in ("train_loss", "loss", "mAP", "f1")]
            worst[name] = max(worst.get(name, 0.0), *diffs)
    print(f"largest 1- vs 2-process difference: {worst}")
    assert worst["feature-extraction"] <= 1e-6 and worst["fine-tune"] <= 1e-6, worst
