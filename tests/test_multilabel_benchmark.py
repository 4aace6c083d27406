"""benchmarks/multilabel.py: the mosaic builder (multi-label), the imbalanced-set builder, and a --quick run."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("multilabel_benchmark",
                                                  os.path.join(ROOT, "benchmarks", "multilabel.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the module runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arrays(bench):
    return bench._arrays()


def test_mosaics_show_one_to_four_classes_of_their_items(bench, arrays):
    plan = bench.mosaic_plan(120, 40, 60, seed=0)
    for split, source in (("train", "train_labels"), ("validation", "train_labels"), ("test", "test_labels")):
        rows, classes = plan[split]
        assert rows.shape == classes.shape == ({"train": 120, "validation": 40, "test": 60}[split], 4)
        assert (arrays[source][rows] == classes).all()  # every cell's class is its item's class
        assert all(len(set(r)) == 4 for r in rows)  # a class shown twice shows two different items
        assert set(classes.ravel().tolist()) == set(range(10))  # every class shows in every split
    distinct = np.array([len(set(c)) for c in plan["train"][1]])
    assert distinct.min() == 1 and distinct.max() == 4 and 2.0 < distinct.mean() < 3.0  # 1 + Binomial(3, 0.5)


def test_mosaic_dataset_labels_are_the_classes_present(bench, arrays):
    train, val, test = bench.mosaic_data(12, 10, 10, seed=3)
    plan = bench.mosaic_plan(12, 10, 10, seed=3)
    assert (len(train), len(val), len(test)) == (12, 10, 10)
    assert train.features["labels"].feature.names == list(bench.CLASSES)
    for ds, (rows, classes), images in ((train, plan["train"], arrays["train_images"]),
                                        (test, plan["test"], arrays["test_images"])):
        for i in range(3):
            example = ds[i]
            assert example["labels"] == sorted(set(classes[i].tolist()))
            assert example["image"].size == (56, 56) and example["image"].mode == "RGB"
            pixels = np.asarray(example["image"])[..., 0]
            assert (pixels[:28, 28:] == images[rows[i, 1]]).all() and (pixels[28:, :28] == images[rows[i, 2]]).all()


def test_mosaics_are_seeded_and_splits_use_disjoint_items(bench):
    a, b, other = (bench.mosaic_plan(200, 60, 300, seed=s) for s in (1, 1, 2))
    for split in a:
        assert (a[split][0] == b[split][0]).all() and (a[split][1] == b[split][1]).all()
    assert not (a["train"][0] == other["train"][0]).all()
    assert (a["test"][0] == other["test"][0]).all()  # the same test mosaics for every seed
    for plan in (a, other):
        assert not set(plan["train"][0].ravel()) & set(plan["validation"][0].ravel())


@pytest.mark.parametrize("ratio", [1, 10, 50])
def test_class_sizes_follow_the_geometric_profile(bench, ratio):
    sizes = bench.class_sizes(ratio, 50, seed=4)
    ordered = np.sort(sizes)[::-1]
    assert ordered[0] == 50 and ordered[-1] == max(1, round(50 / ratio)) and ordered.min() >= 1
    expected = np.maximum(1, np.round(50 * float(ratio) ** (-np.arange(10) / 9)))
    assert (ordered == expected).all()
    if ratio > 1:
        assert not (bench.class_sizes(ratio, 50, seed=5) == sizes).all()  # which class is small: shuffled by seed


def test_imbalanced_sets_follow_the_profile_and_validation_is_disjoint(bench, arrays):
    sizes = bench.class_sizes(50, 50, seed=2)
    plan = bench.imbalanced_plan(50, 50, seed=2)
    labels = arrays["train_labels"]
    assert (np.bincount(labels[plan["train"]], minlength=10) == sizes).all()
    val_counts = np.bincount(labels[plan["validation"]], minlength=10)
    assert (val_counts == np.maximum(1, np.round(0.2 * sizes))).all() and val_counts.min() >= 1
    assert not set(plan["train"]) & set(plan["validation"])
    again = bench.imbalanced_plan(50, 50, seed=2)
    assert (again["train"] == plan["train"]).all() and (again["validation"] == plan["validation"]).all()
    train, val, test = bench.imbalanced_data(50, 50, 30, seed=2)
    assert (len(train), len(val)) == (sizes.sum(), val_counts.sum())
    assert np.bincount(test["label"], minlength=10).tolist() == [30] * 10  # a balanced test set


def test_multilabel_scores_skip_labels_without_positives(bench):
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.9], [0.7, 0.6, 0.1]])
    out = bench.multilabel_scores(scores, targets)
    assert out["mAP"] == pytest.approx(1.0)  # label 2 has no positive: left out of the mean
    assert out["f1"] == pytest.approx(2 / 3)  # macro over all 3 labels: the label predicted without positives is 0


def test_targets_compare_means_and_the_strict_one_needs_a_gain(bench):
    ml = {"fine-tune": {"mAP": [0.8, 0.9]}, "hand BCE fine-tune": {"mAP": [0.85]},
          "feature-extraction": {"mAP": [0.70]}, "probe": {"mAP": [0.72]}}
    same = {"accuracy": [0.5], "f1": [0.5]}
    imbalance = {"1:1": {"feature-extraction": same, "feature-extraction, none": same},
                 "10:1": {"feature-extraction": same, "feature-extraction, none": same}}
    checks = {c["target"].split(" ", 1)[1] if c["part"] == "ml" else c["part"]: c
              for c in bench.check_targets(ml, imbalance)}
    assert checks["mAP >= hand BCE fine-tune mAP"]["ok"]
    assert not checks["mAP >= probe mAP - 0.01"]["ok"]
    assert checks["imbalance 1:1"]["ok"] and not checks["imbalance 10:1"]["ok"]  # a tie is no gain


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "multilabel.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "multilabel.py"), "--quick",
                           "--output", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == summary and os.listdir(tmp_path) == ["multilabel.json"]
    assert {"benchmark", "date", "host", "base_model", "quick", "seeds", "parts", "sizes", "multilabel",
            "imbalance", "targets", "targets_met", "seconds"} <= set(summary)
    assert summary["quick"] and summary["seeds"] == [0] and {"cpu", "torch"} <= set(summary["host"])
    methods = summary["multilabel"]
    assert set(methods) == {"feature-extraction", "fine-tune", "hand BCE fine-tune", "probe"}
    for m in methods.values():
        assert {"mAP", "f1", "seconds"} <= set(m["mean"]) and 0 <= m["mean"]["mAP"] <= 1
    assert set(summary["imbalance"]) == {"1:1", "10:1", "50:1"}
    for runs in summary["imbalance"].values():
        assert set(runs) == {"feature-extraction", "feature-extraction, none"}
        for m in runs.values():
            assert {"accuracy", "balanced_accuracy", "f1", "seconds"} <= set(m["mean"])
    assert len(summary["targets"]) == 5 and all({"part", "target", "margin", "ok"} <= set(t) for t in summary["targets"])
    assert summary["targets_met"] == all(t["ok"] for t in summary["targets"])
    assert "| method | mAP | macro-F1 |" in proc.stdout and "| ratio | method |" in proc.stdout
