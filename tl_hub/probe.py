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
import torch.nn.functional as F
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
                 tol: float = GRADIENT_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Multinomial logistic regression, mean cross-entropy + ``||W||^2 / (2 C N)``, by full-batch L-BFGS.

    ``x`` (float32 or float64, standardised) of shape ``(N, D)``, ``y`` of shape ``(N,)``.  Returns
    ``(W, b, iterations)``.
    The solver is scipy's L-BFGS-B (as scikit-learn's ``LogisticRegression`` uses) with the exact gradient; it stops
    when the largest gradient entry is below ``tol``.
    """
    from scipy.optimize import minimize

    n, d = x.shape
    xn, labels = x.detach().to("cpu").numpy(), y.detach().to("cpu", torch.long).numpy()
    rows = np.arange(n)
    penalty = 1.0 / (2.0 * C * n)
    size = classes * d

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:size].reshape(classes, d)
        # the products in the features' precision (float32 features are not copied to float64), sums in float64
        z = (xn @ w.T.astype(xn.dtype)).astype(np.float64) + (theta[size:] if bias else 0.0)
        z -= z.max(1, keepdims=True)
        loss = -z[rows, labels].mean() + penalty * (w * w).sum()
        g = np.exp(z, out=z)  # z's memory becomes the gradient of the logits: (softmax - onehot) / n
        total = g.sum(1, keepdims=True)
        loss = float(loss + np.log(total[:, 0]).mean())
        g /= total
        g[rows, labels] -= 1.0
        g /= n
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


def _one_blas_thread():
    """numpy's BLAS on one thread while the solve runs: its products are small, and its threads would otherwise
    compete with torch's still-spinning OpenMP threads for the same cores (measured 8x slower on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn installs it; without it the solve is only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _loss_and_accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    logits = (x @ w.T.to(x.dtype)).double() + b
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).double().mean())


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              classes: int, *, bias: bool = True, grid: Sequence[float] = C_GRID,
              patience: Optional[int] = PATIENCE, overwrite: bool = False,
              cross_validate: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> ProbeResult:
    """Fit the linear head for the ``C`` values of ``grid`` in order and keep the one with the best validation
    accuracy (ties: lower validation loss, then the stronger regularisation).  The path stops once ``patience``
    values in a row have not beaten the best (None: try every value).

    With ``cross_validate=(x, y)`` (the features and labels of the images to choose ``C`` on, e.g. the training
    and validation images when the validation split is too small to trust) ``C`` is chosen by stratified k-fold
    cross-validation on them instead (`cross_validated_C`: every image is held out once, so the choice rests on all
    of them rather than on a few validation images), and the head is then fitted on the training features with it.

    Args:
        train_x / val_x: features of shape ``(N, D)`` (any float dtype).
        train_y / val_y: integer labels.
        classes: number of classes (the head's output size).
        bias: whether the head has a bias.
        overwrite: ``train_x`` (float32 on the CPU) may be standardised in place instead of copied (saves memory).

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
    ty, vy = train_y.to("cpu", torch.long), val_y.to("cpu", torch.long)
    if cross_validate is not None:
        cx = ((cross_validate[0].detach().to("cpu", torch.float64) - mean) / std).float()
        C, path = cross_validated_C(cx, cross_validate[1].to("cpu", torch.long), classes, bias=bias, grid=grid,
                                    patience=patience)
        if C is not None:
            w, b, _ = fit_logistic(xs, ty, classes, C, bias=bias)
            return _result(w, b, mean, std, bias, C, _loss_and_accuracy(xs, ty, w, b)[0], path, start,
                           chosen_by="cross-validation")
    init = None

    def on_validation(C: float):
        nonlocal init
        w, b, iters = fit_logistic(xs, ty, classes, C, bias=bias, init=init)
        init = (w, b)
        val_loss, val_acc = _loss_and_accuracy(vs, vy, w, b)
        train_loss, _ = _loss_and_accuracy(xs, ty, w, b)
        record = {"C": C, "val_accuracy": val_acc, "val_loss": val_loss, "train_loss": train_loss, "iterations": iters}
        return (val_acc, -val_loss), (C, w, b, train_loss), record

    (C, w, b, train_loss), path = walk_grid(grid, on_validation, patience)
    return _result(w, b, mean, std, bias, C, train_loss, path, start, chosen_by="validation")


def _result(w, b, mean, std, bias: bool, C: float, train_loss: float, path: list, start: float,
            chosen_by: str) -> ProbeResult:
    weight = w / std  # logits = ((x - mean) / std) W^T + b = x (W / std)^T + (b - (W / std) mean)
    bias_out = b - weight @ mean if bias else None
    return ProbeResult(weight=weight, bias=bias_out, C=C, train_loss=train_loss, path=path,
                       seconds=time.perf_counter() - start, chosen_by=chosen_by)


def stratified_folds(y: torch.Tensor, folds: int = CV_FOLDS, seed: int = 0) -> Optional[torch.Tensor]:
    """The fold of each example: each class's examples dealt round-robin (in a seeded random order) over
    ``min(folds, smallest class)`` folds, so that every class is in every training part; None when a class has a
    single example (it could not be both trained on and held out)."""
    labels = y.to("cpu", torch.long)
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


def cross_validated_C(x: torch.Tensor, y: torch.Tensor, classes: int, *, bias: bool = True,
                      grid: Sequence[float] = C_GRID, patience: Optional[int] = PATIENCE,
                      folds: int = CV_FOLDS) -> tuple[Optional[float], list]:
    """The ``C`` of ``grid`` with the best stratified k-fold accuracy on ``(x, y)`` (standardised features), every
    example held out once (ties: the lower held-out loss, then the stronger regularisation); the path as in
    `fit_probe` with ``cv_accuracy`` and ``cv_loss``.  ``(None, [])`` when the data cannot be split in folds."""
    fold = stratified_folds(y, folds)
    if fold is None:
        return None, []
    k = int(fold.max()) + 1
    inits: list = [None] * k

    def held_out(C: float):
        correct = loss = 0.0
        iterations = 0
        for f in range(k):
            train, held = fold != f, fold == f
            w, b, iters = fit_logistic(x[train], y[train], classes, C, bias=bias, init=inits[f])
            inits[f], iterations = (w, b), iterations + iters
            fold_loss, fold_acc = _loss_and_accuracy(x[held].double(), y[held], w, b)
            n = int(held.sum())
            correct, loss = correct + fold_acc * n, loss + fold_loss * n
        key = (correct / len(y), -loss / len(y))
        return key, C, {"C": C, "cv_accuracy": key[0], "cv_loss": -key[1], "folds": k, "iterations": iterations}

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
