"""The model zoo's bases (recipes/pretrain_base.py --task / --random-init, recipes/build_zoo.py) and the metric
helpers of benchmarks/rank.py (weighted tau, top-1 regret, summary, targets) on hand-made cases."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, os.path.join(ROOT, "recipes"))
pretrain_base = _load("recipes/pretrain_base.py", "pretrain_base")
bench = _load("benchmarks/rank.py", "rank_benchmark")


@pytest.mark.parametrize("args, labels", [
    (["--task", "digits04"], 5),
    (["--task", "textures"], 8),
    (["--task", "noise"], 10),
    (["--random-init"], 52),
    (["--random-init", "--task", "noise"], 10),
], ids=["digits04", "textures", "noise", "random-init", "random-init-noise"])
def test_pretrain_task_quick_loads(tmp_path, args, labels):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = str(tmp_path / "base")
    assert pretrain_base.main([*args, "--quick", "--output-dir", out]) == 0
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_labels == labels and model.config.model_type == "resnet"
    AutoImageProcessor.from_pretrained(out)
    if "--random-init" not in args:
        assert len(json.load(open(os.path.join(out, "tl_hub.json")))["labels"]) == labels


def test_random_init_is_seeded_and_refuses_to_overwrite(tmp_path):
    from safetensors.torch import load_file

    from tl_hub.errors import OutputError

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        pretrain_base.main(["--random-init", "--quick", "--output-dir", out])
    wa, wb = (load_file(os.path.join(p, "model.safetensors")) for p in (a, b))
    assert all((wa[k] == wb[k]).all() for k in wa)
    with pytest.raises(OutputError):
        pretrain_base.main(["--random-init", "--quick", "--output-dir", a])


def test_full_plans_share_the_shipped_resnet_architecture():
    for task in pretrain_base.TASKS:
        plan = {**pretrain_base.PLANS["resnet"]["full"], **pretrain_base.TASK_PLANS[task]["full"]}
        assert plan["hidden_sizes"] == [32, 64, 128, 128]
    assert pretrain_base.TASK_PLANS["glyphs"] == {"full": {}, "quick": {}}  # the glyph plans are unchanged


def test_noise_labels_are_random():
    ds = pretrain_base.noise_dataset(20, seed=1)
    assert len(ds) == 200 and len(set(ds["label"])) == 10
    assert ds[0]["image"].size == (32, 32)


def test_build_zoo_skips_built_candidates(tmp_path, capsys):
    build_zoo = _load("recipes/build_zoo.py", "build_zoo")
    built = build_zoo.build_zoo(str(tmp_path), quick=True, names=["glyph-resnet", "random-resnet"])
    assert all(b["built"] for b in built.values())
    assert os.path.isfile(tmp_path / "glyph-resnet" / "model.safetensors")
    again = build_zoo.build_zoo(str(tmp_path), quick=True, names=["glyph-resnet", "random-resnet"])
    assert not any(b["built"] for b in again.values())
    with pytest.raises(ValueError, match="Unknown zoo candidates"):
        build_zoo.build_zoo(str(tmp_path), names=["nope"])


# -- benchmarks/rank.py metric helpers -------------------------------------------------------------------------------
TRUTH = {"a": 0.90, "b": 0.80, "c": 0.50, "d": 0.20}


def test_weighted_tau_order():
    assert bench.weighted_tau({"a": 4, "b": 3, "c": 2, "d": 1}, TRUTH) == pytest.approx(1.0)
    assert bench.weighted_tau({"a": 1, "b": 2, "c": 3, "d": 4}, TRUTH) == pytest.approx(-1.0)
    # a swap at the top costs more than the same swap at the bottom (hyperbolic weights)
    top_swap = bench.weighted_tau({"a": 3, "b": 4, "c": 2, "d": 1}, TRUTH)
    bottom_swap = bench.weighted_tau({"a": 4, "b": 3, "c": 1, "d": 2}, TRUTH)
    assert 0 < top_swap < bottom_swap < 1


def test_weighted_tau_missing_and_degenerate():
    # None / NaN scores are left out: evaluated on the candidates that have them
    assert bench.weighted_tau({"a": 2.0, "b": None, "c": float("nan"), "d": 1.0}, TRUTH) == pytest.approx(1.0)
    assert bench.weighted_tau({"a": 1.0, "b": None}, TRUTH) is None  # one candidate: no ranking
    assert bench.weighted_tau({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, TRUTH) is None  # constant score


def test_top1_regret():
    assert bench.top1_regret({"a": 4, "b": 3, "c": 2, "d": 1}, TRUTH) == {"top": "a", "best": "a",
                                                                          "regret_points": pytest.approx(0.0)}
    r = bench.top1_regret({"a": 1, "b": 2, "c": 5, "d": 0}, TRUTH)
    assert r["top"] == "c" and r["regret_points"] == pytest.approx(40.0)
    # a tie for the top counts its worst candidate
    assert bench.top1_regret({"a": 5, "b": 5, "c": 1, "d": 0}, TRUTH)["regret_points"] == pytest.approx(10.0)
    # among the candidates that have the score: the best of those
    r = bench.top1_regret({"a": None, "b": 1.0, "c": 2.0}, TRUTH)
    assert r == {"top": "c", "best": "b", "regret_points": pytest.approx(30.0)}
    assert bench.top1_regret({"a": 1.0, "b": None}, TRUTH) is None  # one candidate: no choice to make


def test_evaluate_score_and_summary():
    evaluations = {
        "t1": {"logme": bench.evaluate_score({"a": 4, "b": 3, "c": 2, "d": 1}, TRUTH),
               "leep": bench.evaluate_score({"a": None, "b": 2, "c": 3, "d": 1}, TRUTH)},
        "t2": {"logme": bench.evaluate_score({"a": 1, "b": 4, "c": 3, "d": 2}, TRUTH),
               "leep": bench.evaluate_score({"a": None, "b": None, "c": None, "d": None}, TRUTH)},
    }
    assert evaluations["t1"]["leep"]["candidates"] == 3 and evaluations["t1"]["leep"]["missing"] == ["a"]
    s = bench.summarise(evaluations)
    assert s["logme"]["within"] == 1 and s["logme"]["targets"] == 2
    assert s["logme"]["mean_regret_points"] == pytest.approx(5.0)
    assert s["logme"]["mean_tau"] == pytest.approx((1.0 + evaluations["t2"]["logme"]["tau"]) / 2)
    assert s["leep"]["targets"] == 1 and s["leep"]["within"] == 0
    assert s["leep"]["mean_regret_points"] == pytest.approx(30.0)
    checks = bench.check_targets(s, "logme", 1.1, n_targets=4)
    assert [c["ok"] for c in checks] == [s["logme"]["mean_tau"] >= 0.6, False, True]
    assert not bench.check_targets(s, "missing", None, n_targets=1)[0]["ok"]


def test_truth_means_and_cost():
    entries = [{"candidate": "a", "target": "t", "seed": s, "test_accuracy": v} for s, v in ((0, 0.5), (1, 0.7))]
    entries.append({"candidate": "b", "target": "t", "seed": 0, "test_accuracy": 0.4})
    means, seeds = bench.truth_means(entries, ["a", "b", "c"], ["t", "u"])
    # seed 1 lacks b (an interrupted run): the mean is over the seeds every candidate has
    assert means == {"t": {"a": 0.5, "b": 0.4}, "u": {}} and seeds == {"t": [0], "u": []}
    entries.append({"candidate": "b", "target": "t", "seed": 1, "test_accuracy": 0.6})
    means, seeds = bench.truth_means(entries, ["a", "b"], ["t"])
    assert means == {"t": {"a": pytest.approx(0.6), "b": pytest.approx(0.5)}} and seeds == {"t": [0, 1]}
    measured = {"t": {"failed": {"b": "boom"}, "plain_pass_seconds": {"a": 2.0, "b": 1.0},
                      "seconds": {"a": {"encode": 2.5, "logme": 0.1}, "b": {}}}}
    c = bench.cost(measured)
    assert c["ratio"] == pytest.approx(1.25) and c["score_seconds"] == {"logme": pytest.approx(0.1)}


def test_truth_file_is_written_atomically(tmp_path):
    path = str(tmp_path / "t.json")
    bench.write_json(path, {"x": 1})
    assert json.load(open(path)) == {"x": 1} and os.listdir(tmp_path) == ["t.json"]


def test_random_lite0_candidate_is_untrained_lite0(tmp_path):
    """The real tier's random-init candidate: Lite0's architecture and preprocessing, its normalisation layers
    started at scale 1 as tl-hub's scratch baseline starts them (not transformers' N(0, 0.02) draw)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    build_zoo = _load("recipes/build_zoo.py", "build_zoo")
    assert build_zoo.REAL == ["imagenet-lite0", "random-lite0", "opennsfw-resnet"]
    assert not set(build_zoo.REAL) & set(bench.CANDIDATES)  # the glyph tier is unchanged
    build_zoo.build_zoo(str(tmp_path), names=["random-lite0"])
    folder = tmp_path / "random-lite0"
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert model.config.model_type == "efficientnet" and model.config.num_labels == 1000
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    processor = AutoImageProcessor.from_pretrained(folder)
    from PIL import Image

    pixels = processor(Image.new("RGB", (300, 260), (120, 30, 200)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (224, 224)
    with torch.no_grad():
        assert torch.isfinite(model(pixels).logits).all()
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary folder renamed into place
