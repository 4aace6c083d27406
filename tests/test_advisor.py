"""Advisor, transfer-vs-scratch comparison and the offline demo."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from support.tiny import colour_dataset

from tl_hub import DataError, advise
from tl_hub.advisor import Thresholds
from tl_hub.compare import compare, curve_summary
from tl_hub.demo import base_model_path
from tl_hub.demo_data import digits_dataset
from tl_hub.scores import knn_accuracy

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_curve_summary_from_a_known_history():
    history = [{"accuracy": a} for a in (0.2, 0.4, 0.5, 0.45, 0.6, 0.55)]
    s = curve_summary(history, slope_epochs=3)
    assert s["start"] == 0.2
    assert s["slope"] == pytest.approx(0.15)  # (0.5 - 0.2) / 2
    assert s["asymptote"] == 0.6 and s["best_epoch"] == 5 and s["final"] == 0.55
    assert curve_summary(history[:1])["slope"] is None  # one record: a head solved in one step


def test_knn_accuracy_separable_and_random():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    centres = torch.randn(4, 16) * 10
    assert knn_accuracy(centres[labels] + torch.randn(40, 16), labels, k=3) == 1.0
    noise = knn_accuracy(torch.randn(400, 16), torch.arange(4).repeat(100), k=5)
    assert 0.1 < noise < 0.45


def test_small_similar_digits_get_feature_extraction():
    train, _ = digits_dataset(per_class=5, seed=1)
    advice = advise(base_model_path(), train)
    assert (advice.size, advice.similarity) == ("small", "similar")
    assert advice.recipe == "feature-extraction"
    assert advice.pretrained_knn_accuracy > advice.random_knn_accuracy + 0.1
    assert "feature-extraction" in advice.report() and "why:" in advice.report()
    assert advice.make_recipe().name == "feature-extraction"


def test_small_different_colours_are_not_transferred():
    # colour classes: the letter-reading base sees nothing a random network doesn't
    advice = advise(base_model_path(), colour_dataset(30))
    assert (advice.size, advice.similarity) == ("small", "different")
    assert advice.recipe == "scratch"
    assert "transfer would not help" in advice.reason


def test_large_cases_follow_the_size_threshold():
    train, _ = digits_dataset(per_class=5, seed=1)
    large_similar = advise(base_model_path(), train, thresholds=Thresholds(large_per_class=4))
    assert large_similar.case == "large+similar" and large_similar.recipe == "fine-tune"
    tuned = large_similar.make_recipe().config
    assert tuned.head_epochs is None and tuned.backbone_lr_ratio < 1
    large_different = advise(base_model_path(), colour_dataset(30), thresholds=Thresholds(large_per_class=4))
    assert large_different.case == "large+different"
    assert large_different.recipe == "train-all"
    everything = large_different.make_recipe().config  # no head period, one learning rate for every group
    assert everything.head_epochs == 0 and everything.backbone_lr_ratio == 1.0


def test_one_example_per_class_answers_clearly():
    train, _ = digits_dataset(per_class=1, seed=1)
    advice = advise(base_model_path(), train)
    assert advice.pretrained_knn_accuracy is None and advice.size == "small"
    assert any("single example" in w for w in advice.warnings)


def test_class_without_examples_is_reported():
    train, _ = digits_dataset(classes=(0, 1, 2), per_class=4, seed=1)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["0", "1", "2", "never"])})
    train = train.cast(features)
    advice = advise(base_model_path(), train)
    assert advice.per_class["never"] == 0 and advice.classes == 3
    assert any("no examples" in w and "never" in w for w in advice.warnings)


def test_advise_one_class_is_an_error():
    train, _ = digits_dataset(classes=(3,), per_class=4, seed=1)
    with pytest.raises(DataError, match="at least two"):
        advise(base_model_path(), train)


def test_compare_reports_start_slope_asymptote(tmp_path):
    train, used = digits_dataset(per_class=5, seed=1)
    val, _ = digits_dataset(per_class=10, seed=2, exclude=used)
    result = compare(base_model_path(), train, val, epochs=3, output_dir=str(tmp_path),
                     common={"batch_size": 32, "augment": False, "feature_cache": "memory"})
    assert set(result.summaries) == {"feature-extraction", "fine-tune", "scratch"}
    data = json.load(open(tmp_path / "results.json"))
    for name, s in data["recipes"].items():
        assert set(s) >= {"start", "slope", "asymptote"}
        assert s == curve_summary(data["histories"][name])
    assert open(tmp_path / "learning_curves.png", "rb").read(4) == b"\x89PNG"
    # transfer starts higher than scratch
    assert result.summaries["feature-extraction"]["start"] > result.summaries["scratch"]["start"]


@pytest.mark.slow
def test_demo_end_to_end_quick(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "tl-hub")
    proc = subprocess.run([exe, "demo", "--quick", "--output-dir", str(tmp_path / "demo")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("1) advise", "2) compare", "3) test accuracy", "vs scratch", "the advisor chose", "saved:",
                 "results:", "curves:", "model:"):
        assert step in proc.stdout
    results = json.load(open(tmp_path / "demo" / "results.json"))
    assert results["advisor_case"] == "small+similar" and results["plan"]["scenario"] == "quick"
    assert (results["plan"]["train"], results["plan"]["validation"], results["plan"]["test"]) == (50, 100, 1647)
    assert set(results["recipes"]) == {"feature-extraction", "fine-tune", "scratch"}
    assert all({"start", "slope", "asymptote", "test_accuracy"} <= set(s) for s in results["recipes"].values())
    from tl_hub import load
    clf = load(str(tmp_path / "demo" / "model"))
    assert clf.labels == [str(d) for d in range(10)]
    # its own text: a "try it" command that runs as printed, every progress line names its recipe, no stray lines
    try_it = next(l for l in proc.stdout.splitlines() if "try it:" in l).split("try it:")[1].split("(")[0].split()
    assert try_it[:2] == ["tl-hub", "predict"] and os.path.isfile(try_it[3])
    assert clf.predict(try_it[3])[0]["label"] in clf.labels
    assert results["example"]["label"] in clf.labels
    periods = [l for l in proc.stderr.splitlines() if "Period '" in l]
    assert periods and all(l.split(":")[0] in results["recipes"] for l in periods), periods
    assert not [l for l in proc.stdout.splitlines() if l.strip().startswith("(") and l.strip().endswith(" s)")]
    assert "vs scratch: +" in proc.stdout or "vs scratch: -" in proc.stdout


@pytest.mark.slow
def test_pretrain_base_quick(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "pretrain_base.py"), "--quick",
                           "--output-dir", str(tmp_path / "base")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.load(open(tmp_path / "base" / "tl_hub.json"))
    assert info["recipe"] == "scratch" and len(info["labels"]) == 52


def test_shipped_base_model_is_small_and_loadable():
    from tl_hub import load

    size = sum(os.path.getsize(os.path.join(base_model_path(), f)) for f in os.listdir(base_model_path()))
    assert size < 5e6
    clf = load(base_model_path())
    assert len(clf.labels) == 52 and clf.info["recipe"] == "scratch"


@pytest.mark.slow
def test_quadrants_script_runs_at_reduced_size(tmp_path):
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "quadrants.py"), "--output", str(out),
                           "--small", "3", "--large", "6", "--epochs", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.load(open(out))
    assert [r["intended"] for r in rows] == ["small+similar", "large+similar", "small+different", "large+different"]
    for r in rows:
        assert set(r["accuracy"]) == {"feature-extraction", "fine-tune", "train-all", "scratch"}
        assert r["advisor_choice"] in r["accuracy"]
    assert "quadrants" in proc.stdout
