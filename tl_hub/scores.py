"""Transferability scores: rank pretrained models for a labelled task before training any of them.

Each score is a pure function of what a model produces on the target images, computed once and without training.
Every score returns a Python float, and higher means better expected transfer.

- **Feature scores** take the frozen encoder's features ``(N, D)`` and integer labels ``(N,)``:

  - `logme`: LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning"). For each class, a Bayesian linear regression from the features to that class's one-hot column,
    ``y = F w + noise``, with prior ``w ~ N(0, alpha^-1 I)`` and noise precision ``beta``. The two precisions are
    set by maximising the evidence ``p(y | F, alpha, beta)`` with MacKay's fixed-point iteration. The score is the
    mean over classes of the maximised log evidence divided by ``N``. Features are used as given: they are not
    centred and not standardised. The evidence depends on their scale and offset, so the caller decides (compare
    models on features prepared the same way).
  - `h_score`: H-score (Bao et al., ICIP 2019), ``tr(cov(f)^-1 cov(E[f | y]))``. It measures how much of the
    features' spread lies between the class means. By default it is the regularised H-score of Ibrahim et al. (ICLR
    2023, "Newer is not always better: rethinking transferability metrics, their peculiarities, stability and
    performance"): ``cov(f)`` is shrunk towards a multiple of the identity with the Ledoit-Wolf coefficient ``a``,
    and ``cov(E[f | y])`` is scaled by the same ``1 - a``. Without shrinkage, a covariance estimated from fewer
    examples than dimensions makes every set of features look perfectly separable.
  - `knn_accuracy`: leave-one-out k-nearest-neighbour accuracy with cosine similarity. It is the measurement that
    `tl_hub.advisor` uses, here computed a block of rows at a time so that it never holds an ``N x N`` matrix.

- **Source scores** use the pretrained model's own (source) classification head on the target images:

  - `leep`: LEEP (Nguyen et al., ICML 2020), from the head's softmax outputs ``(N, Z)`` over its ``Z`` source
    classes. It is the mean log-likelihood of the target labels under the "empirical predictor" that maps the
    source outputs to target classes through their empirical joint distribution.
  - `nce`: NCE (Tran et al., ICCV 2019), from the head's argmax predictions ``(N,)``. It is minus the conditional
    entropy of the target labels given the predicted source class.

`FEATURE_SCORES` and `SOURCE_SCORES` list the scores by name so that callers can loop over them. `DESCRIPTIONS` and
`legend` explain each score under a printed table.

Example::

    >>> from tl_hub.scores import FEATURE_SCORES, legend
    >>> table = {name: score(features, labels) for name, score in FEATURE_SCORES.items()}
    >>> print(legend(table))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import numpy as np
import torch

from .errors import ConfigError, DataError

# LogME's fixed-point iteration stops once every alpha and beta changes by less than this, relative to its value
LOGME_TOLERANCE = 1e-7
LOGME_MAX_ITERATIONS = 1000
# rows of the k-NN similarity matrix computed at once (1024 x 50,000 float32 = 200 MB)
KNN_CHUNK_SIZE = 1024


# --- input checks -----------------------------------------------------------------------------------------------

def _to_numpy(values: Any, name: str, dtype=None) -> np.ndarray:
    """``values`` (a tensor on any device, an array or nested lists) as a numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu")
        if dtype is not None or values.dtype in (torch.bfloat16, torch.float16):
            values = values.to(torch.float64)
        values = values.numpy()
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"`{name}` should be a numeric array or tensor ({e}).") from e


def _check_matrix(shape: tuple, n_labels: int, name: str) -> None:
    if len(shape) != 2:
        raise DataError(f"`{name}` should be 2-D (N examples x D values), got shape {tuple(shape)}; flatten each "
                        f"example, e.g. `{name}.reshape(len({name}), -1)`.")
    if shape[0] != n_labels:
        raise DataError(f"`{name}` has {shape[0]} rows but `labels` has {n_labels} entries; give one label per "
                        "example, in the same order.")
    if shape[1] == 0:
        raise DataError(f"`{name}` has no columns (shape {tuple(shape)}); give at least one value per example.")


def _check_finite(all_finite: bool, name: str) -> None:
    if not all_finite:
        raise DataError(f"`{name}` contains NaN or infinite values; check the model's outputs (e.g. compute them in "
                        "float32 rather than float16) or drop those examples.")


def _index_array(values: Any, name: str, n: Optional[int] = None) -> np.ndarray:
    """``values`` as a 1-D int64 array of non-negative indices (of length ``n`` when given)."""
    array = _to_numpy(values, name)
    if array.ndim != 1:
        raise DataError(f"`{name}` should be 1-D (one class index per example), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"`{name}` should be integer class indices, got dtype {array.dtype}; convert them, e.g. "
                        f"`{name}.astype(int)` (class names: map them to 0..K-1 first).")
    if n is not None and len(array) != n:
        raise DataError(f"`{name}` has {len(array)} entries but there are {n} examples; give one per example.")
    if len(array) and array.min() < 0:
        raise DataError(f"`{name}` contains negative values ({int(array.min())}); class indices start at 0.")
    return array.astype(np.int64)


def _labels_array(labels: Any, n: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The labels renumbered ``0..K-1`` over the classes that have examples (empty classes are skipped), and the
    number of examples in each of those ``K`` classes."""
    array = _index_array(labels, "labels", n)
    present, compact, counts = np.unique(array, return_inverse=True, return_counts=True)
    if len(present) < 2:
        which = f" (class {int(present[0])})" if len(present) else ""
        raise DataError(f"Only {len(present)} class has examples{which}; a transferability score compares classes, "
                        "so give examples of at least two.")
    return compact.reshape(-1), counts


def _features_array(features: Any, n_labels: int, name: str = "features") -> np.ndarray:
    """``features`` as a checked ``(N, D)`` float64 array."""
    x = _to_numpy(features, name, dtype=np.float64)
    _check_matrix(x.shape, n_labels, name)
    _check_finite(bool(np.isfinite(x).all()), name)
    return x


def _class_sums(x: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Rows of ``x`` summed per class: ``(classes, D)``."""
    sums = np.zeros((classes, x.shape[1]))
    np.add.at(sums, labels, x)
    return sums


# --- LogME ------------------------------------------------------------------------------------------------------

def _converged(old: np.ndarray, new: np.ndarray, tolerance: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        relative = np.abs(new - old) < tolerance * np.abs(old)
    return np.where(np.isinf(old) | np.isinf(new), old == new, relative)


def _logme_fixed_point(s: np.ndarray, z: np.ndarray, outside: np.ndarray, target_norm2: np.ndarray,
                       n: int) -> tuple[np.ndarray, np.ndarray]:
    """Evidence-maximising ``(alpha, beta)`` for each of the ``K`` targets at once, by the fixed-point iteration
    ``alpha <- gamma / m^T m``, ``beta <- (N - gamma) / ||F m - y||^2``, starting from ``alpha = beta = 1``.

    Everything is written in the SVD basis of ``F``: ``s`` the ``r`` eigenvalues of ``F^T F`` ``(r, 1)``, ``z = U^T y``
    ``(r, K)``, ``outside = ||y||^2 - ||z||^2`` ``(K,)``. With ``rho = beta / alpha`` and ``w_i = rho s_i / (1 + rho
    s_i)`` (the fraction of direction ``i`` that the posterior mean keeps), ``gamma = sum w_i``,
    ``F m = U (w * z)`` and ``m^T m = rho^2 sum s_i z_i^2 / (1 + rho s_i)^2``.

    Two limits are reached on real data:

    - When the evidence grows without bound in ``alpha`` (for example, for features that are all zero, or for a
      target orthogonal to them), ``alpha`` becomes ``inf``. That is the limit in which the prior pins ``w`` to
      zero, and ``rho = 0`` carries it through the formulas.
    - When ``N <= D`` and the classes are separable, the features can fit the target exactly. The evidence then
      increases towards a finite supremum as ``beta -> inf`` (noise-free interpolation), and ``beta`` grows
      geometrically. Two measures keep this limit exact. First, ``N - gamma`` is computed as
      ``(N - r) + sum_i (1 - w_i)``; the direct difference cancels to zero or below, and the iteration would then
      collapse into the ``alpha = inf`` state. Second, the residual is floored at float64 precision of ``||y||^2``,
      where ``beta`` settles a negligible distance from the supremum.
    """
    alpha, beta = np.ones(z.shape[1]), np.ones(z.shape[1])
    s_z2 = s * z ** 2
    for _ in range(LOGME_MAX_ITERATIONS):
        rho = beta / alpha
        keep = rho * s / (1.0 + rho * s)  # w_i
        drop = 1.0 / (1.0 + rho * s)  # 1 - w_i, computed without cancellation
        gamma = keep.sum(0)
        noise_dof = (n - len(s)) + drop.sum(0)  # N - gamma
        m_norm2 = rho ** 2 * (s_z2 * drop ** 2).sum(0)
        residual = ((drop * z) ** 2).sum(0) + outside  # ||F m - y||^2
        with np.errstate(over="ignore"):
            new_alpha = np.divide(gamma, m_norm2, out=np.full_like(gamma, np.inf), where=m_norm2 > 0)
        new_beta = noise_dof / np.maximum(residual, np.finfo(np.float64).eps * target_norm2)
        done = _converged(alpha, new_alpha, LOGME_TOLERANCE) & _converged(beta, new_beta, LOGME_TOLERANCE)
        alpha, beta = new_alpha, new_beta
        if done.all():
            break
    return alpha, beta


def _log_evidence(alpha: np.ndarray, beta: np.ndarray, s: np.ndarray, z: np.ndarray, outside: np.ndarray,
                  n: int) -> np.ndarray:
    """``L = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log det A``
    per target. In the SVD basis, ``D/2 log alpha - 1/2 log det A = 1/2 sum_i log(1 - w_i)`` (the directions with
    ``s = 0``, including the ``D - r`` outside the row space, contribute ``log alpha`` to each term and cancel).
    Also, ``beta ||F m - y||^2 + alpha m^T m = beta (sum_i (1 - w_i) z_i^2 + outside)``."""
    drop = 1.0 / (1.0 + (beta / alpha) * s)
    misfit = (drop * z ** 2).sum(0) + outside
    return 0.5 * (n * np.log(beta) - n * math.log(2 * math.pi) - beta * misfit + np.log(drop).sum(0))


def logme(features: Any, labels: Any) -> float:
    """LogME (You et al., ICML 2021): the maximised log evidence per example of a Bayesian linear model from the
    features to the labels, averaged over the classes.

    For each class ``k`` with examples, the target is that class's one-hot column. ``alpha`` (prior precision of the
    weights) and ``beta`` (noise precision) are set by the paper's fixed-point iteration, for all classes at once and
    until every ``alpha`` and ``beta`` changes by less than 1e-7 relative to its value (at most 1000 iterations).
    All classes share one economy SVD of the features. Features are used as given, not centred or standardised. The
    score depends on their scale and offset, so prepare the features of the compared models the same way. Classes
    without examples are skipped. The computation runs in float64.

    Args:
        features (`torch.Tensor` or `np.ndarray` of shape ``(N, D)``): one feature vector per example.
        labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): integer class indices.

    Returns:
        `float`: the score, any real number (compare models on the same data; higher is better).

    Raises:
        DataError: the features are not 2-D or not finite, do not match the labels, or fewer than two classes have
            examples.

    Example::

        >>> logme(torch.randn(100, 16), torch.arange(4).repeat(25))  # noise: lower than useful features
    """
    y, counts = _labels_array(labels)
    x = _features_array(features, len(y))
    n = x.shape[0]
    u, singular_values, _ = np.linalg.svd(x, full_matrices=False)
    s = (singular_values ** 2)[:, None]
    z = _class_sums(u, y, len(counts)).T  # U^T y for each one-hot target: (r, K)
    outside = np.maximum(counts - (z ** 2).sum(0), 0.0)  # the part of each target outside the column space of F
    alpha, beta = _logme_fixed_point(s, z, outside, counts.astype(np.float64), n)
    return float(np.mean(_log_evidence(alpha, beta, s, z, outside, n)) / n)


# --- H-score ----------------------------------------------------------------------------------------------------

def _ledoit_wolf(centred: np.ndarray, cov: np.ndarray) -> float:
    """The Ledoit-Wolf (2004) coefficient for centred data ``(N, D)`` and its covariance ``centred^T centred / N``.

    The target is ``mu I`` with ``mu = tr(S) / D``. The coefficient is ``min(b^2, d^2) / d^2``, where
    ``d^2 = ||S - mu I||_F^2`` is the estimate's distance from the target and
    ``b^2 = 1/N^2 sum_i ||x_i x_i^T - S||_F^2 = (1/N sum_i ||x_i||^4 - ||S||_F^2) / N`` the estimate's variance. The
    paper's normalisation of the norm by ``1/D`` cancels in the ratio.
    """
    n, d = centred.shape
    cov_norm2 = float((cov ** 2).sum())
    distance = cov_norm2 - float(np.trace(cov)) ** 2 / d
    variance = max((float((np.einsum("ij,ij->i", centred, centred) ** 2).sum()) / n - cov_norm2) / n, 0.0)
    variance = min(variance, distance)
    return 0.0 if variance <= 0 else variance / distance


def ledoit_wolf_shrinkage(features: Any) -> float:
    """The Ledoit-Wolf optimal shrinkage coefficient (in ``[0, 1]``) of the features' covariance towards
    ``tr(cov) / D * I``. Features are centred, and the covariance is the maximum-likelihood one (``1/N``). This is
    the coefficient that ``h_score(..., shrinkage="auto")`` uses. It equals scikit-learn's
    ``sklearn.covariance.ledoit_wolf_shrinkage``.

    Raises:
        DataError: the features are not 2-D or not finite.
    """
    x = _to_numpy(features, "features", dtype=np.float64)
    _check_matrix(x.shape, x.shape[0] if x.ndim == 2 else -1, "features")
    _check_finite(bool(np.isfinite(x).all()), "features")
    x = x - x.mean(0)
    return _ledoit_wolf(x, x.T @ x / len(x))


def _shrinkage_setting(shrinkage: Union[str, float, None]) -> Union[str, float, None]:
    if shrinkage is None or shrinkage == "auto":
        return shrinkage
    if isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0 <= shrinkage <= 1:
        return float(shrinkage)
    raise ConfigError(f"`shrinkage` should be 'auto' (Ledoit-Wolf), a number in [0, 1] or None (no shrinkage), "
                      f"got {shrinkage!r}.")


def h_score(features: Any, labels: Any, shrinkage: Union[str, float, None] = "auto") -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(f)^-1 cov(E[f | y]))``. It measures how much of the features'
    spread lies between the class means, in the metric of the features' own covariance.

    Both covariances use centred features and the ``1/N`` normalisation. ``cov(E[f | y])`` is the covariance of
    each example's class-mean feature, ``sum_k (N_k / N) (mu_k - mu)(mu_k - mu)^T``. With shrinkage ``a``, the score
    is the regularised H-score of Ibrahim et al. (ICLR 2023),
    ``tr(((1 - a) cov(f) + a tr(cov(f)) / D I)^-1 (1 - a) cov(E[f | y]))``. Both covariances are shrunk by the same
    factor, so shrinkage can only lower the score. If the between-class covariance were not scaled, pure noise with
    ``D > N`` would score above well-separated classes, because its ``a`` is close to 1. The score is computed from
    one symmetric eigendecomposition of ``cov(f)``. Eigenvalues below ``D * eps`` times the largest are treated as
    zero, as a pseudo-inverse does.

    Args:
        features (`torch.Tensor` or `np.ndarray` of shape ``(N, D)``): one feature vector per example.
        labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): integer class indices.
        shrinkage (`str`, `float` or `None`, *optional*, defaults to ``"auto"``): ``"auto"`` for the Ledoit-Wolf
            coefficient (`ledoit_wolf_shrinkage`), a number ``a`` in ``[0, 1]`` to fix it, ``None`` for the plain
            H-score, which uses a pseudo-inverse. The plain score reaches its maximum ``K - 1`` for any features once
            ``D >= N - 1``, so keep the shrinkage unless ``N`` is well above ``D``.

    Returns:
        `float`: the score, from 0 to ``K - 1`` for ``K`` classes (higher is better).

    Raises:
        DataError: the features are not 2-D or not finite, do not match the labels, or fewer than two classes have
            examples.
        ConfigError: ``shrinkage`` is not one of the above.
    """
    shrinkage = _shrinkage_setting(shrinkage)
    y, counts = _labels_array(labels)
    x = _features_array(features, len(y))
    n, d = x.shape
    x = x - x.mean(0)
    cov = x.T @ x / n
    a = _ledoit_wolf(x, cov) if shrinkage == "auto" else (shrinkage or 0.0)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues = (1.0 - a) * eigenvalues + a * float(np.trace(cov)) / d
    # class means of the centred features, projected on the eigenvectors: (K, D)
    means = (_class_sums(x, y, len(counts)) / counts[:, None]) @ eigenvectors
    between = (counts / n) @ means ** 2  # the between-class variance along each eigenvector
    largest = eigenvalues.max()
    if largest <= 0:  # constant features: nothing separates the classes
        return 0.0
    kept = eigenvalues > largest * d * np.finfo(np.float64).eps
    return float((1.0 - a) * (between[kept] / eigenvalues[kept]).sum())


# --- k-NN -------------------------------------------------------------------------------------------------------

def _knn_predictions(x: torch.Tensor, labels: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Leave-one-out k-NN predictions for the rows of ``x`` (L2-normalised), ``chunk_size`` rows at a time."""
    n = len(x)
    k = max(1, min(k, n - 1))
    rank_bonus = 1e-3 * torch.arange(k, 0, -1).float()  # ties go to the nearest neighbour
    classes = int(labels.max()) + 1
    predictions = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk_size):
        sim = x[start:start + chunk_size] @ x.T
        rows = torch.arange(len(sim))
        sim[rows, start + rows] = -float("inf")  # never its own neighbour
        top_sim, top = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), classes)
        votes.scatter_add_(1, labels[top], (1.0 + top_sim) + rank_bonus)
        predictions[start:start + len(sim)] = votes.argmax(1)
    return predictions


def knn_accuracy(features: Any, labels: Any, k: int = 5, *, chunk_size: int = KNN_CHUNK_SIZE) -> float:
    """Leave-one-out k-nearest-neighbour accuracy with cosine similarity.

    Each example is classified by its ``k`` most similar other examples. A neighbour's vote weighs
    ``1 + similarity``, plus ``1e-3 * (k - rank)`` so that a tie goes to the nearest. ``k`` is clipped to
    ``[1, N - 1]``. This is `tl_hub.advisor.knn_accuracy`, computed ``chunk_size`` rows of the similarity matrix at
    a time (in float32, with torch), so its memory grows as ``chunk_size x N`` and not ``N x N``.

    Args:
        features (`torch.Tensor` or `np.ndarray` of shape ``(N, D)``): one feature vector per example.
        labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): integer class indices.
        k (`int`, *optional*, defaults to 5): neighbours that vote.
        chunk_size (`int`, *optional*, defaults to `KNN_CHUNK_SIZE`): rows of the similarity matrix held at once.

    Returns:
        `float`: the fraction of examples whose neighbours vote for their own class, in ``[0, 1]`` (higher is
        better).

    Raises:
        DataError: the features are not 2-D or not finite, do not match the labels, or fewer than two classes have
            examples.
        ConfigError: ``chunk_size`` is below 1.
    """
    if chunk_size < 1:
        raise ConfigError(f"`chunk_size` should be >= 1, got {chunk_size}.")
    y = _index_array(labels, "labels")
    _labels_array(y)
    x = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(_to_numpy(features, "features"))
    _check_matrix(tuple(x.shape), len(y), "features")
    x = x.to("cpu", torch.float32)
    _check_finite(bool(torch.isfinite(x).all()), "features")
    x = torch.nn.functional.normalize(x, dim=1)
    labels_t = torch.from_numpy(y)
    correct = int((_knn_predictions(x, labels_t, k, chunk_size) == labels_t).sum())
    return correct / len(y)


# --- LEEP and NCE -----------------------------------------------------------------------------------------------

def _probabilities_array(source_probs: Any, n_labels: int) -> np.ndarray:
    theta = _features_array(source_probs, n_labels, "source_probs")
    if theta.min() < 0 or not np.allclose(theta.sum(1), 1.0, rtol=0, atol=1e-3):
        raise DataError("`source_probs` should be probabilities (non-negative rows summing to 1); pass the source "
                        "head's softmax outputs, e.g. `logits.softmax(-1)`, not its logits.")
    return theta


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP (Nguyen et al., ICML 2020): how well the source head's outputs predict the target labels through their
    empirical joint distribution.

    With ``theta_i`` the source head's softmax output for example ``i``: ``P(y, z) = 1/N sum_i theta_i(z) [y_i = y]``
    and ``P(y | z) = P(y, z) / P(z)``. Then ``LEEP = 1/N sum_i log(sum_z P(y_i | z) theta_i(z))``, the mean
    log-likelihood of the "expected empirical predictor".

    Args:
        source_probs (`torch.Tensor` or `np.ndarray` of shape ``(N, Z)``): the source head's softmax outputs over its
            ``Z`` classes, for the target images.
        labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): target class indices.

    Returns:
        `float`: the score, at most 0, which it reaches when the source class determines the label. A source whose
        outputs are the same for every image gives ``-H(Y)`` (higher is better).

    Raises:
        DataError: ``source_probs`` is not an ``(N, Z)`` array of probabilities, or fewer than two classes have
            examples.
    """
    y, counts = _labels_array(labels)
    theta = _probabilities_array(source_probs, len(y))
    joint = _class_sums(theta, y, len(counts)) / len(y)  # P(y, z): (K, Z)
    marginal = joint.sum(0)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = np.einsum("iz,iz->i", theta, conditional[y])  # sum_z P(y_i | z) theta_i(z), > 0
    return float(np.log(expected).mean())


def nce(source_labels: Any, labels: Any) -> float:
    """NCE (Tran et al., ICCV 2019): minus the conditional entropy of the target labels given the source head's
    predicted class, ``-H(Y | Z) = sum_{y, z} P(y, z) log P(y | z)``, from the empirical joint distribution.

    Args:
        source_labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): the source head's argmax predictions for
            the target images.
        labels (`torch.Tensor` or `np.ndarray` of shape ``(N,)``): target class indices.

    Returns:
        `float`: the score, from ``-H(Y)`` (the prediction says nothing about the label) to 0 (it determines the
        label). Higher is better.

    Raises:
        DataError: the inputs are not 1-D integer arrays of the same length, or fewer than two classes have
            examples.
    """
    y, counts = _labels_array(labels)
    _, z = np.unique(_index_array(source_labels, "source_labels", len(y)), return_inverse=True)
    joint = np.zeros((len(counts), int(z.max()) + 1))
    np.add.at(joint, (y, z.reshape(-1)), 1.0 / len(y))
    marginal = np.broadcast_to(joint.sum(0), joint.shape)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / marginal[seen])).sum()) + 0.0  # + 0.0: no -0.0


# --- registry ---------------------------------------------------------------------------------------------------

# feature scores: ``score(features (N, D), labels (N,)) -> float``
FEATURE_SCORES: dict[str, Callable[..., float]] = {"logme": logme, "hscore": h_score, "knn": knn_accuracy}
# source scores take the source head's outputs: LEEP its softmax ``(N, Z)``, NCE its argmax ``(N,)``
SOURCE_SCORES: dict[str, Callable[..., float]] = {"leep": leep, "nce": nce}

DESCRIPTIONS = {
    "logme": "LogME: log evidence per example of a Bayesian linear model from the features to each class's one-hot "
             "labels (You et al. 2021); any real number, comparable between models on the same data; higher is "
             "better.",
    "hscore": "H-score: share of the features' spread that lies between class means, tr(cov^-1 cov_between), "
              "with Ledoit-Wolf shrinkage (Bao et al. 2019, Ibrahim et al. 2023); 0 to K-1; higher is better.",
    "knn": "k-NN: leave-one-out accuracy of the 5 nearest neighbours by cosine similarity; 0 to 1; higher is "
           "better.",
    "leep": "LEEP: mean log-likelihood of the labels given the source head's softmax, through their empirical joint "
            "distribution (Nguyen et al. 2020); at most 0; higher is better.",
    "nce": "NCE: minus the conditional entropy of the labels given the source head's predicted class "
           "(Tran et al. 2019); -H(labels) to 0; higher is better.",
}


def legend(names: Optional[Iterable[str]] = None) -> str:
    """One line per score (all of them by default, or those in ``names``, in order) to print under a table.

    Raises:
        ConfigError: an unknown score name.
    """
    names = list(DESCRIPTIONS) if names is None else list(names)
    unknown = [name for name in names if name not in DESCRIPTIONS]
    if unknown:
        raise ConfigError(f"Unknown score(s) {unknown}; choose from {list(DESCRIPTIONS)}.")
    return "\n".join(f"{name}: {DESCRIPTIONS[name]}" for name in names)
