"""The shipped `evaluate` metric modules against scikit-learn."""

import os

import evaluate
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tl_hub.metrics import AVAILABLE, METRICS_DIR, classification_metrics, load_metric, metric_path

SEEDS = [0, 1, 2, 3, 4]


def random_pair(seed, n=60, k=5):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.5, refs, rng.integers(0, k, n))  # better than chance, not perfect
    return preds.tolist(), refs.tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed):
    preds, refs = random_pair(seed)
    out = classification_metrics(preds, refs)
    assert set(out) == {"accuracy", "f1"}
    assert out["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert out["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert 0 < out["f1"] < 1 and 0 < out["accuracy"] < 1


def test_macro_f1_ignores_absent_classes_and_counts_prediction_only_classes():
    # class 7 never occurs; class 3 is only predicted; classes need not be contiguous
    refs = [0, 0, 1, 1, 5, 5, 5]
    preds = [0, 1, 1, 1, 5, 3, 5]
    out = classification_metrics(preds, refs)
    assert out["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert out["accuracy"] == pytest.approx(5 / 7)
    perfect = classification_metrics([2, 4, 4], [2, 4, 4])
    assert perfect == {"accuracy": 1.0, "f1": 1.0}
    wrong = classification_metrics([1, 0], [0, 1])
    assert wrong == {"accuracy": 0.0, "f1": 0.0}


@pytest.mark.parametrize("name", AVAILABLE)
def test_metric_modules_load_offline_with_evaluate(name):
    path = metric_path(name)
    assert os.path.isfile(path)
    assert os.path.dirname(os.path.dirname(path)) == METRICS_DIR
    assert os.path.normpath(path).endswith(os.path.join("tl_hub", "metrics", name, f"{name}.py"))
    metric = evaluate.load(path)
    assert isinstance(metric, evaluate.Metric)
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    truth, pred = [0, 1, 0, 2], [0, 1, 1, 2]
    expected = {"accuracy": 0.75, "f1": f1_score(truth, pred, average="macro"),
                "precision": precision_score(truth, pred, average="macro"),
                "recall": recall_score(truth, pred, average="macro"),
                "confusion_matrix": confusion_matrix(truth, pred).tolist()}
    got = metric.compute(predictions=pred, references=truth)[name]
    assert got == (expected[name] if name == "confusion_matrix" else pytest.approx(expected[name]))
    assert load_metric(name) is load_metric(name)  # cached


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available: accuracy, f1"):
        metric_path("bleu")


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_module_with_weights(seed):
    preds, refs = random_pair(seed)
    weights = np.random.default_rng(seed + 100).random(len(preds)).tolist()
    acc = load_metric("accuracy")
    assert acc.compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    got = acc.compute(predictions=preds, references=refs, sample_weight=weights)["accuracy"]
    assert got == pytest.approx(accuracy_score(refs, preds, sample_weight=weights))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None], ids=str)
def test_f1_averages_match_sklearn(seed, average):
    preds, refs = random_pair(seed, n=40, k=4)
    got = load_metric("f1").compute(predictions=preds, references=refs, average=average)["f1"]
    expected = f1_score(refs, preds, average=average)
    if average is None:
        assert isinstance(got, list)
        assert np.allclose(got, expected)
        assert len(got) == len(np.union1d(preds, refs))
    else:
        assert got == pytest.approx(expected)


def test_f1_with_explicit_labels_matches_sklearn():
    preds, refs = random_pair(7, n=50, k=6)
    for labels in ([0, 1, 2], [5, 3], [0, 1, 2, 3, 4, 5]):
        got = load_metric("f1").compute(predictions=preds, references=refs, labels=labels, average="macro")["f1"]
        assert got == pytest.approx(f1_score(refs, preds, labels=labels, average="macro"))
    with pytest.raises(ValueError, match="average should be"):
        load_metric("f1").compute(predictions=preds, references=refs, average="samples")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_precision_and_recall_match_sklearn(seed, average):
    from sklearn.metrics import precision_score, recall_score

    p, r = random_pair(seed)
    for name, reference in (("precision", precision_score), ("recall", recall_score)):
        got = load_metric(name).compute(predictions=p, references=r, average=average)[name]
        expected = reference(r, p, average=average, zero_division=0)
        assert np.allclose(got, expected), (name, average)


def test_class_report_matches_sklearn_with_an_absent_class():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tl_hub.metrics import class_report

    p, r = random_pair(3, k=4)
    labels = ["a", "b", "c", "d", "never seen"]  # the last class has no examples and is never predicted
    report = class_report(p, r, labels)
    precision, recall, f1, support = precision_recall_fscore_support(r, p, labels=range(5), zero_division=0)
    for i, name in enumerate(labels):
        m = report["per_class"][name]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]))
    assert report["confusion_matrix"] == confusion_matrix(r, p, labels=range(5)).tolist()
    assert list(report["per_class"]) == labels
