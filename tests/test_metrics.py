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
    assert set(out) == {"accuracy", "f1", "balanced_accuracy"}
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
    assert perfect == {"accuracy": 1.0, "f1": 1.0, "balanced_accuracy": 1.0}
    wrong = classification_metrics([1, 0], [0, 1])
    assert wrong == {"accuracy": 0.0, "f1": 0.0, "balanced_accuracy": 0.0}


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n != "average_precision"])  # scores: tested below
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


# --- multi-label precision / recall / F1 / accuracy, average precision, thresholds, balanced accuracy ---

ML_SEEDS = [0, 1, 2, 3]


def multilabel_data(seed, n=80, k=6):
    """Scores with ties (rounded to 0.1), 0/1 targets; label 2 has no positive, label 4 is positive everywhere."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < 0.3).astype(int)
    targets[:, 2], targets[:, 4] = 0, 1
    scores = np.clip(np.round(0.35 * targets + 0.65 * rng.random((n, k)), 1), 0, 1)
    return scores, targets


def sklearn_ap(scores, targets):
    """scikit-learn's average precision per label, None for a label without positives."""
    from sklearn.metrics import average_precision_score

    return [average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else None
            for j in range(targets.shape[1])]


@pytest.mark.parametrize("seed", ML_SEEDS)
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None], ids=str)
def test_multilabel_precision_recall_f1_match_sklearn(seed, average):
    from sklearn.metrics import precision_recall_fscore_support

    scores, targets = multilabel_data(seed)
    preds = (scores >= 0.5).astype(int)
    preds[:, 5] = 0  # a label never predicted
    expected = precision_recall_fscore_support(targets, preds, average=average, zero_division=0)[:3]
    for name, value in zip(("precision", "recall", "f1"), expected):
        got = load_metric(name, "multilabel").compute(predictions=preds.tolist(), references=targets.tolist(),
                                                      average=average)[name]
        assert np.allclose(got, value, atol=1e-12), (name, average)
        if average is None:
            assert isinstance(got, list) and len(got) == targets.shape[1]
    columns = [5, 0, 3]
    expected = precision_recall_fscore_support(targets, preds, labels=columns, average=average, zero_division=0)
    got = load_metric("f1", "multilabel").compute(predictions=preds, references=targets, labels=columns,
                                                  average=average)["f1"]
    assert np.allclose(got, expected[2], atol=1e-12)


@pytest.mark.parametrize("seed", ML_SEEDS)
def test_multilabel_accuracy_is_subset_accuracy(seed):
    from sklearn.metrics import accuracy_score

    scores, targets = multilabel_data(seed, n=30, k=5)
    preds = (scores >= 0.4).astype(int)
    got = load_metric("accuracy", "multilabel").compute(predictions=preds.tolist(), references=targets.tolist())
    assert got["accuracy"] == pytest.approx(accuracy_score(targets, preds))
    weights = np.random.default_rng(seed).random(len(preds))
    got = load_metric("accuracy", "multilabel").compute(predictions=preds, references=targets, sample_weight=weights)
    assert got["accuracy"] == pytest.approx(accuracy_score(targets, preds, sample_weight=weights))


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1"])
def test_multilabel_config_loads_offline_by_path(name, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(metric_path(name), "multilabel")  # a fresh load, by path, like the Hub's f1
    assert isinstance(metric, evaluate.Metric) and metric.config_name == "multilabel"
    truth, pred = [[1, 0, 0], [0, 1, 1]], [[1, 0, 1], [0, 1, 1]]
    expected = {"accuracy": 0.5, "precision": (1 + 1 + 0.5) / 3, "recall": 1.0, "f1": (1 + 1 + 2 / 3) / 3}[name]
    assert metric.compute(predictions=pred, references=truth)[name] == pytest.approx(expected)
    assert load_metric(name, "multilabel") is load_metric(name, "multilabel")
    assert load_metric(name, "multilabel") is not load_metric(name)
    assert load_metric(name, None) is load_metric(name) and load_metric(name).config_name == "default"


def test_multilabel_inputs_are_checked():
    with pytest.raises(ValueError, match="config_name should be one of"):
        evaluate.load(metric_path("f1"), "samples")
    with pytest.raises(ValueError, match="0/1 label indicators"):
        load_metric("f1", "multilabel").compute(predictions=[[2, 0]], references=[[1, 0]])
    with pytest.raises(ValueError, match="average should be"):
        load_metric("f1", "multilabel").compute(predictions=[[1, 0]], references=[[1, 0]], average="samples")
    with pytest.raises(ValueError, match="only the default config"):
        evaluate.load(metric_path("average_precision"), "multilabel")


@pytest.mark.parametrize("seed", ML_SEEDS)
def test_average_precision_matches_sklearn_with_ties(seed):
    from sklearn.metrics import average_precision_score

    scores, targets = multilabel_data(seed)
    ap = load_metric("average_precision")
    rows = {"predictions": scores.tolist(), "references": targets.tolist()}
    per_label, expected = ap.compute(**rows, average=None)["average_precision"], sklearn_ap(scores, targets)
    assert per_label[2] is None and expected[2] is None
    assert np.allclose([v for v in per_label if v is not None], [v for v in expected if v is not None],
                       rtol=0, atol=1e-9)
    kept = [j for j in range(targets.shape[1]) if targets[:, j].any()]
    assert ap.compute(**rows)["average_precision"] == pytest.approx(np.mean([expected[j] for j in kept]), abs=1e-9)
    assert ap.compute(**rows, average="weighted")["average_precision"] == pytest.approx(
        average_precision_score(targets[:, kept], scores[:, kept], average="weighted"), abs=1e-9)
    assert ap.compute(**rows, average="micro")["average_precision"] == pytest.approx(
        average_precision_score(targets, scores, average="micro"), abs=1e-9)


def test_average_precision_by_hand_and_at_scale():
    ap = load_metric("average_precision")
    # column 0: 0.9 (pos), then a tie 0.8/0.8 (one pos) cut together: 0.5 * 1 + 0.5 * 2/3; column 1: all tied
    scores = [[0.9, 0.5], [0.8, 0.5], [0.8, 0.5], [0.1, 0.5]]
    targets = [[1, 0], [0, 1], [1, 0], [0, 0]]
    assert ap.compute(predictions=scores, references=targets, average=None)["average_precision"] == pytest.approx(
        [0.5 + 0.5 * 2 / 3, 0.25])
    nothing = ap.compute(predictions=scores, references=[[0, 0]] * 4, average=None)["average_precision"]
    assert nothing == [None, None]
    assert np.isnan(ap.compute(predictions=scores, references=[[0, 0]] * 4)["average_precision"])
    with pytest.raises(ValueError, match="average should be"):
        ap.compute(predictions=scores, references=targets, average="samples")
    from tl_hub.metrics.average_precision.average_precision import per_label_average_precision

    rng = np.random.default_rng(0)  # the vectorised core on 10,000 x 100, with ties
    big_scores, big_targets = np.round(rng.random((10_000, 100)), 3), (rng.random((10_000, 100)) < 0.05).astype(int)
    values, positives = per_label_average_precision(big_scores, big_targets)
    expected = sklearn_ap(big_scores[:, :5], big_targets[:, :5])
    assert np.allclose(values[:5], expected, rtol=0, atol=1e-9)
    assert np.array_equal(positives, big_targets.sum(0))


def best_f1_brute_force(scores, targets):
    """Per label: the best F1 over every candidate threshold, and the highest threshold (midpoints and halfway
    below the smallest) reaching it, with sklearn's f1_score."""
    best = []
    for j in range(scores.shape[1]):
        distinct = np.unique(scores[:, j])
        candidates = list((distinct[1:] + distinct[:-1]) / 2) + [distinct[0] / 2]
        f1s = [f1_score(targets[:, j], scores[:, j] >= c, zero_division=0) for c in candidates]
        top = max(f1s)
        best.append((top, max(c for c, f in zip(candidates, f1s) if f == top)))
    return best


@pytest.mark.parametrize("seed", ML_SEEDS)
def test_choose_thresholds_maximises_f1_like_a_brute_force_search(seed):
    from tl_hub.metrics import choose_thresholds

    scores, targets = multilabel_data(seed, n=60, k=5)
    thresholds, fell_back = choose_thresholds(scores, targets, default=0.42)
    assert thresholds.shape == (5,) and fell_back == [2] and thresholds[2] == 0.42
    for j, (top, threshold) in enumerate(best_f1_brute_force(scores, targets)):
        if j in fell_back:
            continue
        assert f1_score(targets[:, j], scores[:, j] >= thresholds[j]) == pytest.approx(top)
        assert thresholds[j] == pytest.approx(threshold)
        assert not np.isin(thresholds[j], scores[:, j])  # between scores, not on one


def test_choose_thresholds_by_hand():
    from tl_hub.metrics import choose_thresholds

    scores = np.array([
        # label 0: F1 .5, .8, .67, .86, .75 at cuts .85, .55, .25, .15, .05 -> 0.15
        # label 1: F1 .67 at .8 and at .2 (tie) -> the higher, 0.8
        # label 2: 0.5, 0.5 tied (can't be split): best cut below them -> 0.3
        # label 3: every example positive -> halfway below the smallest score (0.2) -> 0.1
        # label 4: no positive -> the default, reported
        [0.9, 0.9, 0.9, 0.2, 0.7],
        [0.8, 0.7, 0.5, 0.6, 0.6],
        [0.3, 0.6, 0.5, 0.4, 0.5],
        [0.2, 0.4, 0.1, 0.3, 0.4],
        [0.1, 0.0, 0.1, 0.5, 0.3],
    ])
    targets = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 0, 1, 0]])
    thresholds, fell_back = choose_thresholds(scores, targets)
    assert thresholds == pytest.approx([0.15, 0.8, 0.3, 0.1, 0.5])
    assert fell_back == [4]
    assert choose_thresholds(scores, np.zeros_like(targets), default=0.7)[1] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", ML_SEEDS)
def test_multilabel_metrics_match_sklearn(seed):
    from sklearn.metrics import precision_recall_fscore_support, precision_score, recall_score

    from tl_hub.metrics import choose_thresholds, multilabel_metrics

    scores, targets = multilabel_data(seed)
    thresholds = choose_thresholds(scores, targets)[0] if seed % 2 else None
    names = [f"label{j}" for j in range(targets.shape[1])]
    out = multilabel_metrics(scores, targets, thresholds, labels=names)
    used = np.full(targets.shape[1], 0.5) if thresholds is None else thresholds
    preds = (scores >= used).astype(int)
    assert set(out) == {"mAP", "f1", "f1_macro", "f1_micro", "precision_micro", "recall_micro", "accuracy",
                        "label_accuracy", "per_label"}
    expected_ap = sklearn_ap(scores, targets)
    assert out["mAP"] == pytest.approx(np.mean([v for v in expected_ap if v is not None]), abs=1e-9)
    assert out["f1"] == out["f1_macro"] == pytest.approx(f1_score(targets, preds, average="macro", zero_division=0))
    assert out["f1_micro"] == pytest.approx(f1_score(targets, preds, average="micro", zero_division=0))
    assert out["precision_micro"] == pytest.approx(precision_score(targets, preds, average="micro", zero_division=0))
    assert out["recall_micro"] == pytest.approx(recall_score(targets, preds, average="micro", zero_division=0))
    assert out["accuracy"] == pytest.approx(accuracy_score(targets, preds))
    assert out["label_accuracy"] == pytest.approx(np.mean(preds == targets))
    precision, recall, f1, support = precision_recall_fscore_support(targets, preds, zero_division=0)
    assert list(out["per_label"]) == names
    for j, name in enumerate(names):
        m = out["per_label"][name]
        assert (m["precision"], m["recall"], m["f1"], m["support"], m["threshold"]) == pytest.approx(
            (precision[j], recall[j], f1[j], support[j], used[j]))
        assert m["average_precision"] == (None if expected_ap[j] is None else pytest.approx(expected_ap[j], abs=1e-9))
    assert "per_label" not in multilabel_metrics(scores, targets)
    with pytest.raises(ValueError, match="one value per label"):
        multilabel_metrics(scores, targets, thresholds=[0.5])
    with pytest.raises(ValueError, match="at least one example"):
        multilabel_metrics(np.zeros((0, 3)), np.zeros((0, 3)))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", SEEDS)
def test_balanced_accuracy_matches_sklearn(seed):
    from sklearn.metrics import balanced_accuracy_score

    preds, refs = random_pair(seed, k=6)
    preds[0] = 9  # a class only predicted: it is left out of the average, as in scikit-learn
    out = classification_metrics(preds, refs)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(refs, preds))
    assert out["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    imbalanced = classification_metrics([0] * 10, [0] * 9 + [1])  # always the majority class: 0.9 right, half
    assert imbalanced["accuracy"] == pytest.approx(0.9) and imbalanced["balanced_accuracy"] == pytest.approx(0.5)
