"""A new linear head trained to convergence on frozen features: the linear-probe protocol.

While the encoder is frozen, its features are cached (`tl_hub.features`), so the head's whole training set fits in
one tensor.  A head that is one ``nn.Linear`` (possibly after parameter-free modules such as ``Flatten`` or
``Dropout``) is then a multinomial logistic regression, and is fitted as one: full-batch L-BFGS on

    mean cross-entropy + ||W||^2 / (2 C N)

(scikit-learn's ``LogisticRegression(C=C)`` objective divided by ``C N``), on centred features scaled to unit RMS,
for ``C`` values of a grid from strong to weak regularisation (warm-started along the path, which stops once
`PATIENCE` values in a row do not improve on validation), keeping the ``C`` with the best validation accuracy (ties:
the lower validation loss). This is the standard linear-probe protocol (e.g.
Kornblith et al. 2019, Radford et al. 2021); it converges whatever the number of epochs, where a few epochs of AdamW
on a few dozen images leave the head far from its optimum (and LP-FT, Kumar et al. 2022, shows that fine-tuning from
an unconverged head distorts the pretrained features).

The solve is deterministic (on the CPU: the products in the features' float32, so that they are held once, the sums
and the optimizer in float64) and runs on features gathered from every process; the result is broadcast from the
main process, so 1 and N processes train the same head.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# C values tried, strong to weak regularisation (the objective is scikit-learn's ``LogisticRegression(C)``).
C_GRID = tuple(10.0 ** e for e in (-4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 2, 3))
# the path stops after this many C values in a row that do not beat the best one on validation: past its best,
# weaker regularisation only fits the training data more closely, and the weakest C values take the most iterations
PATIENCE = 3
# L-BFGS stops when the largest entry of the gradient (of the mean loss, on standardised features) is below this.
# On the transfer benchmark's 18 task x seed feature sets the chosen heads' mean test accuracy is 0.6998 at 3e-5,
# 0.6997 at 1e-5 (1.3x the iterations); 1e-4 and 3e-4 lose up to 0.7 points on some of them.
GRADIENT_TOLERANCE = 3e-5
# folds of the cross-validation that chooses C when the validation split is too small to trust
CV_FOLDS = 5
# full-batch L-BFGS costs about 2 * N * D * K flops per evaluation; past this budget per evaluation the head is
# trained by the optimizer instead (large data gives it enough steps to converge anyway)
MAX_SOLVE_FLOPS = 2e10


@dataclass
class ProbeResult:
    """The fitted head and how it was chosen.

    Attributes:
        weight / bias: the head's parameters in the original (not standardised) feature space.
        C: the regularisation chosen on validation (or by cross-validation, see ``chosen_by``).
        path: per ``C`` tried: validation accuracy, validation loss, training loss, L-BFGS iterations.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    C: float
    train_loss: float
    path: list = field(default_factory=list)
    seconds: float = 0.0
    chosen_by: str = "validation"


def linear_layer(head: nn.Module) -> Optional[nn.Linear]:
    """The head's one ``nn.Linear`` if every other module of the head has no parameters, else None."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        return None
    owned = {id(p) for p in linears[0].parameters()}
    return linears[0] if all(id(p) in owned for p in head.parameters()) else None


@torch.no_grad()
def linear_inputs(head: nn.Module, features: torch.Tensor, batch_size: int = 4096,
                  dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
    """What the head's linear layer sees for each feature row (``features`` of shape ``(N, ...)``, read
    ``batch_size`` rows at a time), in eval mode, as one ``(N, in_features)`` tensor of ``dtype``; None unless the
    head's output is exactly that linear layer's output (nothing after it changes the logits)."""
    linear = linear_layer(head)
    if linear is None or features.shape[0] == 0:
        return None
    seen: dict = {}

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0], output

    was_training = head.training
    head.eval()
    handle = linear.register_forward_hook(hook)
    inputs = torch.empty((features.shape[0], linear.in_features), dtype=dtype)
    try:
        for start in range(0, features.shape[0], batch_size):
            out = head(features[start:start + batch_size])
            if "y" not in seen or out is not seen["y"] and not torch.equal(out, seen["y"]):
                return None
            inputs[start:start + out.shape[0]] = seen.pop("x").reshape(out.shape[0], -1)
            seen.clear()
    finally:
        handle.remove()
        head.train(was_training)
    return inputs


def can_solve(n: int, dim: int, classes: int) -> bool:
    return 2.0 * n * dim * classes <= MAX_SOLVE_FLOPS


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, C: float, *, bias: bool = True,
                 init: Optional[tuple[torch.Tensor, torch.Tensor]] = None, max_iter: int = 500,
                 tol: float = GRADIENT_TOLERANCE, class_weight: Optional[torch.Tensor] = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Logistic regression, mean loss + ``||W||^2 / (2 C N)``, by full-batch L-BFGS: multinomial (cross-entropy)
    for class ids ``y`` of shape ``(N,)``, one-vs-rest (BCE summed over labels) for multi-hot ``y`` of shape
    ``(N, K)``, which is ``K`` independent regressions, each scikit-learn's ``LogisticRegression(C)``.

    ``x`` (float32 or float64, standardised) of shape ``(N, D)``.  ``class_weight``: per-class weights of the
    examples (single-label; normalised so that the mean example weight is 1) or per-label weights of the positives
    (multi-label, BCE's ``pos_weight``).  Returns ``(W, b, iterations)``.
    The solver is scipy's L-BFGS-B (as scikit-learn's ``LogisticRegression`` uses) with the exact gradient; it stops
    when the largest gradient entry is below ``tol``.
    """
    from scipy.optimize import minimize

    n, d = x.shape
    xn = x.detach().to("cpu").numpy()
    penalty = 1.0 / (2.0 * C * n)
    size = classes * d
    logit_gradient = _logit_gradient(y, class_weight)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:size].reshape(classes, d)
        # the products in the features' precision (float32 features are not copied to float64), sums in float64
        z = (xn @ w.T.astype(xn.dtype)).astype(np.float64) + (theta[size:] if bias else 0.0)
        loss, g = logit_gradient(z)  # g: the gradient of the mean loss with respect to the logits, in z's memory
        loss += penalty * (w * w).sum()
        grad_w = ((g.T.astype(xn.dtype) @ xn).astype(np.float64) + 2.0 * penalty * w).ravel()
        return loss, np.concatenate([grad_w, g.sum(0)]) if bias else grad_w

    start = np.zeros(size + (classes if bias else 0))
    if init is not None:
        start[:size] = init[0].numpy().ravel()
        if bias:
            start[size:] = init[1].numpy()
    with _one_blas_thread():
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12, "maxcor": 20})
    w = torch.from_numpy(result.x[:size].reshape(classes, d).copy())
    b = torch.from_numpy(result.x[size:].copy()) if bias else torch.zeros(classes, dtype=torch.float64)
    return w, b, int(result.nit)


def _logit_gradient(y: torch.Tensor, class_weight: Optional[torch.Tensor]):
    """``f(z) -> (mean loss, d loss / d z)`` for logits ``z`` (overwritten by the gradient): weighted cross-entropy
    for class ids, BCE with positive weights (summed over labels) for multi-hot rows."""
    from .imbalance import example_weights

    if y.ndim == 2:
        targets = y.detach().to("cpu", torch.float64).numpy()
        pos = class_weight.to(torch.float64).numpy() if class_weight is not None else np.ones(targets.shape[1])
        n = targets.shape[0]

        def bce(z: np.ndarray) -> tuple[float, np.ndarray]:
            # p*y*softplus(-z) + (1-y)*softplus(z); its derivative is (1-y)*s - p*y*(1-s) with s = sigmoid(z)
            soft_neg, soft_pos = np.logaddexp(0.0, -z), np.logaddexp(0.0, z)
            loss = float((pos * targets * soft_neg + (1 - targets) * soft_pos).sum() / n)
            s = np.exp(-soft_neg, out=z)  # sigmoid(z), in z's memory
            s *= (1 - targets) + pos * targets
            s -= pos * targets
            s /= n
            return loss, s

        return bce
    labels = y.detach().to("cpu", torch.long).numpy()
    weights = example_weights(y, class_weight)
    scale = None if weights is None else weights.numpy()[:, None]
    rows = np.arange(len(labels))

    def cross_entropy(z: np.ndarray) -> tuple[float, np.ndarray]:
        z -= z.max(1, keepdims=True)
        picked = z[rows, labels].copy()
        g = np.exp(z, out=z)  # z's memory becomes the gradient of the logits: (softmax - onehot) / n
        total = g.sum(1, keepdims=True)
        per_example = np.log(total[:, 0]) - picked
        g /= total
        g[rows, labels] -= 1.0
        if scale is not None:
            per_example *= scale[:, 0]
            g *= scale
        g /= len(labels)
        return float(per_example.mean()), g

    return cross_entropy


def _one_blas_thread():
    """numpy's BLAS on one thread while the solve runs: its products are small, and its threads would otherwise
    compete with torch's still-spinning OpenMP threads for the same cores (measured 8x slower on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn installs it; without it the solve is only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              classes: int, *, bias: bool = True, grid: Sequence[float] = C_GRID,
              patience: Optional[int] = PATIENCE, overwrite: bool = False,
              cross_validate: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
              class_weight: Optional[torch.Tensor] = None) -> ProbeResult:
    """Fit the linear head for the ``C`` values of ``grid`` in order and keep the one with the best validation
    score (`tl_hub.tasks.selection_key`: accuracy; balanced accuracy with ``class_weight``; mAP for multi-label;
    ties: lower validation loss, then the stronger regularisation).  The path stops once ``patience`` values in a
    row have not beaten the best (None: try every value).

    With ``cross_validate=(x, y)`` (the features and labels of the images to choose ``C`` on, e.g. the training
    and validation images when the validation split is too small to trust) ``C`` is chosen by stratified k-fold
    cross-validation on them instead (`cross_validated_C`), and the head is then fitted on the training features.

    Args:
        train_x / val_x: features of shape ``(N, D)`` (any float dtype).
        train_y / val_y: class ids ``(N,)``, or multi-hot rows ``(N, K)`` (multi-label: one-vs-rest, one ``C``).
        classes: number of classes (the head's output size).
        bias: whether the head has a bias.
        overwrite: ``train_x`` (float32 on the CPU) may be standardised in place instead of copied (saves memory).
        class_weight: per-class loss weights (`tl_hub.imbalance.class_weights`; multi-label: of the positives).

    Returns:
        `ProbeResult`, with the weights mapped back to the unstandardised features.
    """
    start = time.perf_counter()
    # one float32 copy, standardised in place (with ``overwrite``, a float32 ``train_x`` itself)
    xs = train_x.detach().to("cpu", torch.float32, copy=not overwrite)
    mean = xs.mean(0, dtype=torch.float64)
    xs -= mean.float()
    # one scale for all features (their RMS after centring): conditions the problem without changing which
    # directions the L2 penalty favours, as a per-feature standardisation would (it inflates near-constant,
    # noisy features; measured 3 points worse at 5 examples per class)
    std = (xs.norm().double() ** 2 / max(xs.numel(), 1)).sqrt().clamp_min(1e-12)
    xs /= std.float()
    vs = (val_x.detach().to("cpu", torch.float64) - mean) / std
    ty, vy, weight = as_targets(train_y), as_targets(val_y), None if class_weight is None else class_weight.double()
    if cross_validate is not None:
        cx = ((cross_validate[0].detach().to("cpu", torch.float64) - mean) / std).float()
        C, path = cross_validated_C(cx, as_targets(cross_validate[1]), classes, bias=bias, grid=grid,
                                    patience=patience, class_weight=weight)
        if C is not None:
            w, b, _ = fit_logistic(xs, ty, classes, C, bias=bias, class_weight=weight)
            return _result(w, b, mean, std, bias, C, head_scores(xs, ty, w, b, weight)[0], path, start,
                           chosen_by="cross-validation")
    init = None

    def on_validation(C: float):
        nonlocal init
        w, b, iters = fit_logistic(xs, ty, classes, C, bias=bias, init=init, class_weight=weight)
        init = (w, b)
        val_loss, val_score = head_scores(vs, vy, w, b, weight)
        train_loss, _ = head_scores(xs, ty, w, b, weight)
        record = {"C": C, "val_accuracy" if ty.ndim == 1 else "val_mAP": val_score, "val_loss": val_loss,
                  "train_loss": train_loss, "iterations": iters}
        return (val_score, -val_loss), (C, w, b, train_loss), record

    (C, w, b, train_loss), path = walk_grid(grid, on_validation, patience)
    return _result(w, b, mean, std, bias, C, train_loss, path, start, chosen_by="validation")


def as_targets(y: torch.Tensor) -> torch.Tensor:
    """Labels on the CPU as the solver takes them: class ids as int64, multi-hot rows as float64."""
    return y.detach().to("cpu", torch.float64) if y.ndim == 2 else y.detach().to("cpu", torch.long)


def head_scores(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                class_weight: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """``(loss, score)`` of the head ``(w, b)`` on standardised features: the (weighted) loss it was fitted with,
    and what it is chosen by: accuracy, balanced accuracy with ``class_weight``, or mAP for multi-label."""
    return logit_scores((x @ w.T.to(x.dtype)).double() + b, y, class_weight)


def logit_scores(logits: torch.Tensor, y: torch.Tensor, class_weight: Optional[torch.Tensor] = None,
                 ) -> tuple[float, float]:
    """``(loss, score)`` of ``logits`` against labels ``y``, as `head_scores` defines them."""
    from .imbalance import example_weights
    from .metrics import mean_average_precision
    from .tasks import task_loss

    loss = float(task_loss(logits, y, class_weight=class_weight))
    if y.ndim == 2:
        return loss, mean_average_precision(logits.numpy(), y.numpy())
    correct = (logits.argmax(-1) == y).double()
    weights = example_weights(y, class_weight)
    return loss, float(correct.mean() if weights is None else (correct * weights).sum() / weights.sum())


def _result(w, b, mean, std, bias: bool, C: float, train_loss: float, path: list, start: float,
            chosen_by: str) -> ProbeResult:
    weight = w / std  # logits = ((x - mean) / std) W^T + b = x (W / std)^T + (b - (W / std) mean)
    bias_out = b - weight @ mean if bias else None
    return ProbeResult(weight=weight, bias=bias_out, C=C, train_loss=train_loss, path=path,
                       seconds=time.perf_counter() - start, chosen_by=chosen_by)


def stratified_folds(y: torch.Tensor, folds: int = CV_FOLDS, seed: int = 0) -> Optional[torch.Tensor]:
    """The fold of each example: each class's examples dealt round-robin (in a seeded random order) over
    ``min(folds, smallest class)`` folds, so that every class is in every training part; None when a class has a
    single example (it could not be both trained on and held out).  Multi-hot rows are stratified by the rarest
    label each example has (examples with no label form a group of their own)."""
    labels = strata(y)
    counts = torch.bincount(labels)
    k = min(folds, int(counts[counts > 0].min()))
    if k < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for c in torch.nonzero(counts).flatten().tolist():
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        fold[rows] = torch.arange(len(rows)) % k
    return fold


def strata(y: torch.Tensor) -> torch.Tensor:
    """The group each example is stratified by: its class, or for multi-hot rows its rarest label (``K`` for an
    example with none)."""
    if y.ndim == 1:
        return y.to("cpu", torch.long)
    positive = y.to("cpu") > 0.5
    counts = positive.sum(0).double()
    rarity = torch.where(positive, counts.expand_as(positive), torch.tensor(float("inf"), dtype=torch.float64))
    return torch.where(positive.any(1), rarity.argmin(1), torch.full((len(y),), y.shape[1]))


def cross_validated_C(x: torch.Tensor, y: torch.Tensor, classes: int, *, bias: bool = True,
                      grid: Sequence[float] = C_GRID, patience: Optional[int] = PATIENCE,
                      folds: int = CV_FOLDS, class_weight: Optional[torch.Tensor] = None,
                      ) -> tuple[Optional[float], list]:
    """The ``C`` of ``grid`` with the best stratified k-fold score on ``(x, y)`` (standardised features; the score
    as in `fit_probe`, over the held-out predictions of all folds), every example held out once (ties: the lower
    held-out loss, then the stronger regularisation); the path as in `fit_probe` with ``cv_score`` and ``cv_loss``.
    ``(None, [])`` when the data cannot be split in folds."""
    fold = stratified_folds(y, folds)
    if fold is None:
        return None, []
    k = int(fold.max()) + 1
    inits: list = [None] * k

    def held_out(C: float):
        logits = torch.empty((len(y), classes), dtype=torch.float64)
        iterations = 0
        for f in range(k):
            train, held = fold != f, fold == f
            w, b, iters = fit_logistic(x[train], y[train], classes, C, bias=bias, init=inits[f],
                                       class_weight=class_weight)
            inits[f], iterations = (w, b), iterations + iters
            logits[held] = (x[held].double() @ w.T) + b
        loss, score = logit_scores(logits, y, class_weight)
        return (score, -loss), C, {"C": C, "cv_score": score, "cv_loss": loss, "folds": k, "iterations": iterations}

    return walk_grid(grid, held_out, patience)


def walk_grid(grid: Sequence[float], evaluate, patience: Optional[int]) -> tuple:
    """Evaluate the ``C`` values of ``grid`` in order (``evaluate(C) -> (key, kept, record)``, a higher key is
    better; ties keep the earlier, stronger regularisation) and return the best one's ``kept`` value and the path of
    records; the walk stops once ``patience`` values in a row have not beaten the best (None: every value)."""
    best, best_key, path, since = None, None, [], 0
    for C in grid:
        key, kept, record = evaluate(C)
        path.append(record)
        if best_key is None or key > best_key:
            best, best_key, since = kept, key, 0
        else:
            since += 1
            if patience and since >= patience:
                break
    return best, path


def assign(linear: nn.Linear, result: ProbeResult) -> None:
    """Write the probe's weights into the head's linear layer (in place, keeping dtype and device)."""
    with torch.no_grad():
        linear.weight.copy_(result.weight.to(linear.weight.dtype))
        if linear.bias is not None and result.bias is not None:
            linear.bias.copy_(result.bias.to(linear.bias.dtype))
