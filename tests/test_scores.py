"""Transferability scores: each against a slow reference or a case small enough to compute by hand."""

import math

import numpy as np
import pytest
import torch

from tl_hub import ConfigError, DataError
from tl_hub.scores import (
    DESCRIPTIONS,
    FEATURE_SCORES,
    SOURCE_SCORES,
    _knn_predictions,
    h_score,
    knn_accuracy,
    ledoit_wolf_shrinkage,
    leep,
    legend,
    logme,
    nce,
)


def blobs(n_per_class=40, classes=4, dim=16, spread=4.0, seed=0):
    """Gaussian blobs, one per class, and pure noise of the same shape."""
    rng = np.random.default_rng(seed)
    labels = np.arange(classes).repeat(n_per_class)
    centres = rng.normal(size=(classes, dim)) * spread
    return centres[labels] + rng.normal(size=(len(labels), dim)), rng.normal(size=(len(labels), dim)), labels


# --- LogME ------------------------------------------------------------------------------------------------------

def logme_reference(f, labels, tol=1e-12, max_iter=20000):
    """LogME as the paper writes it: one class at a time, explicit D x D matrices, the fixed-point iteration."""
    n, d = f.shape
    ftf = f.T @ f
    s = np.linalg.eigvalsh(ftf)
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.inv(a) @ f.T @ y
            gamma = np.sum(beta * s / (alpha + beta * s))
            new_alpha, new_beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
            done = abs(new_alpha - alpha) < tol * alpha and abs(new_beta - beta) < tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.inv(a) @ f.T @ y
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n,d", [(60, 8), (20, 40)], ids=["N>D", "N<D"])
def test_logme_matches_the_papers_iteration(n, d):
    rng = np.random.default_rng(n + d)
    labels = np.array([0, 2, 5])[rng.integers(0, 3, n)]  # classes 1, 3, 4 have no examples: skipped
    f = rng.normal(size=(n, d)) + 0.5 * labels[:, None] * rng.normal(size=d)
    f[:, 0] = 3.0  # a constant feature: used as given, no centring
    assert logme(f, labels) == pytest.approx(logme_reference(f, labels), abs=1e-4)
    assert logme(torch.tensor(f, dtype=torch.float32), torch.tensor(labels)) == pytest.approx(logme(f, labels),
                                                                                           abs=1e-3)


def test_logme_of_zero_features_is_the_evidence_of_noise_alone():
    # F = 0: nothing to regress on, alpha -> inf and y ~ N(0, 1/beta) with beta = N / ||y||^2, so per class
    # L / N = 1/2 log(N / N_k) - 1/2 log(2 pi) - 1/2
    labels = np.array([0] * 10 + [1] * 30)
    expected = np.mean([0.5 * math.log(40 / nk) - 0.5 * math.log(2 * math.pi) - 0.5 for nk in (10, 30)])
    assert logme(np.zeros((40, 5)), labels) == pytest.approx(expected, abs=1e-9)


def test_logme_of_few_shot_separable_features_is_the_noise_free_limit():
    # N <= D and separable classes: the features fit each target exactly, and the evidence rises towards its supremum
    # as beta -> inf, the evidence of y ~ N(0, G / alpha) (G = F F^T) at its best alpha = N / q, q = y^T G^-1 y:
    # L / N = -1/2 log(2 pi) + 1/2 log(N / q) - log det G / (2 N) - 1/2.  The iteration must follow beta out there:
    # with N - gamma as a plain difference and no floor on the residual, N - gamma cancels to 0, beta collapses and
    # a class scores as if unrelated to the features
    good, noise, labels = blobs(n_per_class=5, classes=3, dim=60)
    gram, n = good @ good.T, len(labels)
    limits = []
    for c in range(3):
        y = (labels == c).astype(np.float64)
        q = y @ np.linalg.solve(gram, y)
        limits.append(-0.5 * math.log(2 * math.pi) + 0.5 * math.log(n / q) - np.linalg.slogdet(gram)[1] / (2 * n) - 0.5)
    assert logme(good, labels) == pytest.approx(np.mean(limits), abs=1e-6)
    assert logme(noise, labels) < logme(good, labels) - 1.0


def test_logme_ranks_separable_features_above_noise_and_ignores_class_ids():
    good, noise, labels = blobs()
    assert logme(good, labels) > logme(noise, labels) + 0.5
    renamed = np.array([7, 3, 5, 0])[labels]
    assert logme(good, renamed) == pytest.approx(logme(good, labels), abs=1e-10)


# --- H-score ----------------------------------------------------------------------------------------------------

def test_h_score_by_hand():
    # 1-D: f = 0, 2, 4, 6 with classes {0, 2} and {4, 6}: var(f) = (9 + 1 + 1 + 9) / 4 = 5, class means 1 and 5
    # around 3, so var(E[f|y]) = 4 and H = 4 / 5
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), [0, 0, 1, 1], shrinkage=None) == pytest.approx(0.8)
    # 2-D: the corners of a square, cov(f) = I; split by the first coordinate the class means are (+-1, 0), so
    # cov(E[f|y]) = diag(1, 0) and H = 1; split along a diagonal both class means are 0 and H = 0
    square = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert h_score(square, [0, 0, 1, 1], shrinkage=None) == pytest.approx(1.0)
    assert h_score(square, [0, 1, 1, 0], shrinkage=None) == pytest.approx(0.0, abs=1e-12)
    # the identity covariance is its own shrinkage target, so only the (1 - a) on cov(E[f|y]) remains
    assert h_score(square, [0, 0, 1, 1], shrinkage=0.7) == pytest.approx(0.3)


def test_plain_h_score_is_invariant_to_invertible_linear_maps():
    good, _, labels = blobs(dim=6)
    mix = np.random.default_rng(1).normal(size=(6, 6))
    assert h_score(good @ mix, labels, shrinkage=None) == pytest.approx(h_score(good, labels, shrinkage=None))


@pytest.mark.parametrize("n,d", [(80, 10), (15, 40)], ids=["N>D", "D>N"])
def test_auto_shrinkage_is_ledoit_wolf(n, d):
    sklearn_covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(d)
    f = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, d) + 5.0
    labels = np.arange(n) % 3
    a = ledoit_wolf_shrinkage(f)
    assert a == pytest.approx(sklearn_covariance.ledoit_wolf_shrinkage(f), rel=1e-9)
    assert 0 < a < 1
    assert h_score(f, labels) == pytest.approx(h_score(f, labels, shrinkage=a), rel=1e-12)
    # Ibrahim et al.'s formula with explicit matrices: tr(((1 - a) C + a tr(C)/D I)^-1 (1 - a) B)
    centred = f - f.mean(0)
    class_means = np.stack([centred[labels == c].mean(0) for c in labels])  # each example's class mean
    cov, between = centred.T @ centred / n, class_means.T @ class_means / n
    shrunk = (1 - a) * cov + a * np.trace(cov) / d * np.eye(d)
    assert h_score(f, labels) == pytest.approx(np.trace(np.linalg.solve(shrunk, (1 - a) * between)), rel=1e-9)
    assert h_score(f, labels, shrinkage=1.0) == 0.0


def test_shrinkage_ranks_features_when_dimensions_exceed_examples():
    good, noise, labels = blobs(n_per_class=5, classes=3, dim=60)
    # with D >= N - 1 the plain score is K - 1 for any features, noise included: it cannot rank
    assert h_score(noise, labels, shrinkage=None) == pytest.approx(2.0, abs=1e-6)
    assert h_score(good, labels, shrinkage=None) == pytest.approx(2.0, abs=1e-6)
    shrunk_good, shrunk_noise = h_score(good, labels), h_score(noise, labels)
    assert math.isfinite(shrunk_good) and math.isfinite(shrunk_noise)
    assert 0 < shrunk_noise < 2.0 and 0 < shrunk_good < 2.0
    assert shrunk_good > 2 * shrunk_noise


def test_h_score_of_constant_features_is_zero_and_bad_shrinkage_is_refused():
    assert h_score(np.ones((10, 3)), np.arange(10) % 2) == 0.0
    for bad in (1.5, -0.1, "ledoit", True):
        with pytest.raises(ConfigError, match="shrinkage"):
            h_score(np.ones((10, 3)), np.arange(10) % 2, shrinkage=bad)


# --- k-NN -------------------------------------------------------------------------------------------------------

def knn_reference(features, labels, k=5):
    """The advisor's original k-NN accuracy, on the whole N x N similarity matrix: predictions and accuracy."""
    x = torch.nn.functional.normalize(features.flatten(1).float(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    k = max(1, min(k, len(x) - 1))
    top_sim, top = sim.topk(k, dim=1)
    votes = torch.zeros(len(x), int(labels.max()) + 1)
    votes.scatter_add_(1, labels[top], (1.0 + top_sim) + 1e-3 * torch.arange(k, 0, -1).float())
    return votes.argmax(1), float((votes.argmax(1) == labels).float().mean())


def test_knn_by_hand_on_a_circle():
    # points on the unit circle at these angles; cosine similarity = cos(angle between them)
    degrees = np.array([0, 10, 100, 110, 200, 240])
    labels = np.array([1, 1, 0, 0, 0, 1])
    f = np.stack([np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))], 1) * np.arange(1, 7)[:, None]  # any norm
    # k=1: 200's nearest is 240 (class 1, 40 degrees away) and 240's is 200: those two are wrong, the rest right
    assert knn_accuracy(f, labels, k=1) == pytest.approx(4 / 6)
    # k=3, votes 1 + cos: at 0, class 1 gets 1 + cos 10 = 1.98 against class 0's (1 + cos 100) + (1 + cos 110) = 1.48
    # (a plain majority would say 0); at 200, class 0's 1.00 + 0.83 now beats class 1's 1.77; 240 stays wrong
    # (class 0: 1.77, class 1: (1 + cos 120) + (1 + cos 130) = 0.86)
    x = torch.nn.functional.normalize(torch.tensor(f).float(), dim=1)
    assert _knn_predictions(x, torch.tensor(labels), 3, chunk_size=4).tolist() == [1, 1, 0, 0, 0, 0]
    assert knn_accuracy(f, labels, k=3) == pytest.approx(5 / 6)


@pytest.mark.parametrize("k", [1, 5, 500], ids=["k=1", "k=5", "k>N"])
def test_chunked_knn_equals_the_original(k):
    torch.manual_seed(k)
    features, labels = torch.randn(203, 12), torch.randint(0, 5, (203,))
    features[::7] += 2.0  # some structure, so the answer is not only noise
    expected_predictions, expected_accuracy = knn_reference(features, labels, k)
    x = torch.nn.functional.normalize(features, dim=1)
    for chunk_size in (1, 17, 203, 4096):
        assert torch.equal(_knn_predictions(x, labels, k, chunk_size), expected_predictions)
        assert knn_accuracy(features, labels, k, chunk_size=chunk_size) == pytest.approx(expected_accuracy, abs=1e-7)
    with pytest.raises(ConfigError, match="chunk_size"):
        knn_accuracy(features, labels, k, chunk_size=0)


# --- LEEP and NCE -----------------------------------------------------------------------------------------------

def test_leep_by_hand():
    theta = np.array([[0.8, 0.2], [0.3, 0.7]])
    # P(y, z) = theta_i(z) / 2 in row y_i: y=0 -> (0.4, 0.1), y=1 -> (0.15, 0.35); P(z) = (0.55, 0.45)
    # P(y=0 | z) = (0.4 / 0.55, 0.1 / 0.45), P(y=1 | z) = (0.15 / 0.55, 0.35 / 0.45)
    eep0 = 0.8 * 0.4 / 0.55 + 0.2 * 0.1 / 0.45
    eep1 = 0.3 * 0.15 / 0.55 + 0.7 * 0.35 / 0.45
    assert leep(theta, [0, 1]) == pytest.approx((math.log(eep0) + math.log(eep1)) / 2)
    assert leep(torch.tensor(theta, dtype=torch.float32), torch.tensor([0, 1])) == pytest.approx(leep(theta, [0, 1]),
                                                                                                 abs=1e-6)


def test_nce_by_hand():
    # joint: (y0, z0) 1/4, (y1, z0) 1/4, (y1, z1) 1/2; P(y | z0) = 1/2 each, P(y1 | z1) = 1: NCE = -1/2 log 2
    assert nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * math.log(2))
    # a prediction independent of the label: NCE = -H(Y) = -log 2
    assert nce([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-math.log(2))


def test_a_source_that_determines_the_label_scores_the_maximum():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    source = 2 * labels + rng.integers(0, 2, 300)  # 6 source classes, each inside one target class
    assert nce(source, labels) == 0.0
    assert nce(rng.integers(0, 6, 300), labels) < -0.9  # about -H(Y) = -log 3
    confident = np.full((300, 6), 0.002)
    confident[np.arange(300), source] = 0.99
    assert -0.02 < leep(confident, labels) <= 0.0
    # the same output for every image says nothing: LEEP = mean log P(y_i) = -H(Y) (empirical)
    p_y = np.bincount(labels) / len(labels)
    assert leep(np.full((300, 6), 1 / 6), labels) == pytest.approx(np.sum(p_y * np.log(p_y)))


# --- all scores -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FEATURE_SCORES))
def test_every_feature_score_ranks_blobs_above_noise(name):
    good, noise, labels = blobs(spread=1.5)
    assert FEATURE_SCORES[name](good, labels) > FEATURE_SCORES[name](noise, labels)
    assert isinstance(FEATURE_SCORES[name](torch.tensor(good), torch.tensor(labels)), float)


def test_every_score_is_described():
    assert set(DESCRIPTIONS) == set(FEATURE_SCORES) | set(SOURCE_SCORES)
    assert all("higher is better" in d for d in DESCRIPTIONS.values())
    assert legend(["knn", "leep"]).splitlines()[0].startswith("knn: ")
    with pytest.raises(ConfigError, match="Unknown score"):
        legend(["accuracy"])


GOOD_X, LABELS = np.random.default_rng(0).normal(size=(12, 3)), np.arange(12) % 3
NAN_X = GOOD_X.copy()
NAN_X[3, 1] = np.nan
BAD_FEATURE_INPUTS = {
    "1-D features": (GOOD_X[:, 0], LABELS, "2-D"),
    "3-D features": (GOOD_X.reshape(12, 3, 1), LABELS, "2-D"),
    "fewer labels": (GOOD_X, LABELS[:-1], "rows"),
    "one class": (GOOD_X, np.zeros(12, dtype=int), "at least two"),
    "NaN": (NAN_X, LABELS, "NaN"),
    "float labels": (GOOD_X, LABELS + 0.5, "integer"),
    "negative label": (GOOD_X, LABELS - 1, "negative"),
    "2-D labels": (GOOD_X, LABELS[:, None], "1-D"),
}


@pytest.mark.parametrize("name", list(FEATURE_SCORES))
@pytest.mark.parametrize("case", list(BAD_FEATURE_INPUTS))
def test_bad_feature_inputs_raise_data_error(name, case):
    features, labels, message = BAD_FEATURE_INPUTS[case]
    with pytest.raises(DataError, match=message):
        FEATURE_SCORES[name](features, labels)


PROBS = np.full((12, 4), 0.25)
BAD_SOURCE_INPUTS = {
    "logits, not probabilities": ("leep", PROBS * 3 - 1, LABELS, "probabilities"),
    "negative probabilities": ("leep", PROBS + np.array([-0.5, 0.5, 0.0, 0.0]), LABELS, "probabilities"),
    "probabilities of other examples": ("leep", PROBS[:5], LABELS, "rows"),
    "NaN probabilities": ("leep", np.where(np.eye(12, 4) > 0, np.nan, PROBS), LABELS, "NaN"),
    "leep: one class": ("leep", PROBS, np.ones(12, dtype=int), "at least two"),
    "predictions of other examples": ("nce", np.arange(5), LABELS, "12 examples"),
    "probabilities instead of predictions": ("nce", PROBS, LABELS, "1-D"),
    "nce: one class": ("nce", np.arange(12), np.ones(12, dtype=int), "at least two"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCE_INPUTS))
def test_bad_source_inputs_raise_data_error(case):
    name, outputs, labels, message = BAD_SOURCE_INPUTS[case]
    with pytest.raises(DataError, match=message):
        SOURCE_SCORES[name](outputs, labels)
