"""The converged linear head (tl_hub.probe), keeping the best epoch, and the defaults that scale with the data."""

import json
import warnings

import numpy as np
import pytest
import torch
from support.tiny import colour_dataset, write_image_folder
from torch import nn

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe, ScratchRecipe
from tl_hub.config import FeatureExtractionConfig, FineTuneConfig, ScratchConfig, TrainingConfig
from tl_hub.probe import C_GRID, PATIENCE, cross_validated_C, fit_probe, linear_inputs, linear_layer, stratified_folds


def _digits_split(per_class: int, seed: int = 0):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    train = np.concatenate([order[y[order] == c][:per_class] for c in range(10)])
    rest = np.setdiff1d(order, train)
    rng.shuffle(rest)
    return (x[train], y[train]), (x[rest[:300]], y[rest[:300]]), (x[rest[300:]], y[rest[300:]])


def _sklearn_tuned(train, val, test) -> float:
    from sklearn.linear_model import LogisticRegression

    best = None
    for C in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=C, max_iter=5000).fit(*train)
        score = clf.score(*val)
        if best is None or score > best[0]:
            best = (score, clf.score(*test))
    return best[1]


def _glyph_features(per_class: int, seed: int):
    """The shipped glyph ResNet's frozen features (the input of its classifier) of handwritten digits."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tl_hub.demo import base_model_path, target_data

    train, val, test = target_data(per_class, 300, seed=seed)
    model = AutoModelForImageClassification.from_pretrained(base_model_path()).eval()
    processor = AutoImageProcessor.from_pretrained(base_model_path())
    out = []
    for ds in (train, val, test):
        pixels = processor([im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
        seen = []
        handle = model.classifier.register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten(1)))
        with torch.no_grad():
            model(pixel_values=pixels)
        handle.remove()
        out.append((seen[0].numpy(), np.asarray(ds["label"])))
    return out


@pytest.mark.parametrize("source,per_class", [("pixels", 5), ("pixels", 30), ("glyph-resnet", 5),
                                              ("glyph-resnet", 30)])
def test_probe_matches_sklearn_with_C_tuned_on_validation(source, per_class):
    train, val, test = _digits_split(per_class) if source == "pixels" else _glyph_features(per_class, seed=1)
    result = fit_probe(torch.tensor(train[0]), torch.tensor(train[1]), torch.tensor(val[0]), torch.tensor(val[1]),
                       10)
    logits = torch.tensor(test[0], dtype=torch.float64) @ result.weight.T + result.bias
    ours = float((logits.argmax(-1).numpy() == test[1]).mean())
    reference = _sklearn_tuned(train, val, test)
    assert ours >= reference - 0.01, (ours, reference, result.C)
    assert result.C in C_GRID
    # the path follows the grid in order and stops only after PATIENCE values in a row fail to beat the best
    tried = [p["C"] for p in result.path]
    assert tried == list(C_GRID[:len(tried)])
    best = tried.index(result.C)
    assert len(tried) == len(C_GRID) or len(tried) - 1 - best == PATIENCE
    keys = [(p["val_accuracy"], -p["val_loss"]) for p in result.path]
    assert all(k <= keys[best] for k in keys[best + 1:])


def test_probe_path_stops_early_without_changing_the_choice():
    train, val, _ = _digits_split(10)
    args = (torch.tensor(train[0]), torch.tensor(train[1]), torch.tensor(val[0]), torch.tensor(val[1]), 10)
    full, early = fit_probe(*args, patience=None), fit_probe(*args)
    assert len(full.path) == len(C_GRID)
    assert len(early.path) < len(full.path)  # digits at 10 per class peak mid-path
    assert early.C == full.C and torch.equal(early.weight, full.weight)


def test_probe_is_deterministic_and_converged():
    train, val, _ = _digits_split(10)
    args = (torch.tensor(train[0]), torch.tensor(train[1]), torch.tensor(val[0]), torch.tensor(val[1]), 10)
    a, b = fit_probe(*args), fit_probe(*args)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    # at the chosen C the gradient of the objective is ~0 (converged), checked in the original feature space
    x = torch.tensor(train[0], dtype=torch.float64)
    w = a.weight.clone().requires_grad_(True)
    bias = a.bias.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(x @ w.T + bias, torch.tensor(train[1]))
    loss.backward()
    assert bias.grad.abs().max() < 1e-4


def test_linear_head_detection():
    feats = torch.randn(4, 8, 1, 1)
    resnet_like = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    assert linear_layer(resnet_like) is resnet_like[1]
    x = linear_inputs(resnet_like, feats)
    assert x.shape == (4, 8) and torch.equal(x, feats.flatten(1))
    assert linear_layer(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))) is None  # an MLP: optimizer
    assert linear_layer(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3))) is None  # a trainable norm in the head
    assert linear_inputs(nn.Sequential(nn.Linear(8, 3), nn.Softmax(-1)), torch.randn(4, 8)) is None  # not logits


@pytest.mark.slow
def test_three_colours_feature_extraction_cli_reaches_90_percent(tiny_model_dir, tmp_path):
    """3 colour classes, 30 images each, a tiny random ResNet, `--epochs 3`: the head converges anyway."""
    from test_cli import tl_hub

    data = write_image_folder(tmp_path / "images", n=90)
    out = tmp_path / "out"
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("resnet"), "--dataset", data,
                  "--output-dir", out, "--epochs", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))["validation"]
    assert metrics["accuracy"] >= 0.9, metrics
    info = json.load(open(out / "tl_hub.json"))
    assert info["periods"][0]["solver"] == "lbfgs" and info["periods"][0]["epochs"] == 1


def test_adamw_head_solver_is_still_available(tiny_model_dir):
    recipe = FeatureExtractionRecipe(tiny_model_dir("resnet"), epochs=2, head_solver="adamw", lr=0.05,
                                     feature_cache="memory")
    result = recipe.fit(colour_dataset(60), progress=False)
    assert [h["period"] for h in result.history] == ["head", "head"]
    assert "solver" not in result.extra["periods"][0]


def test_non_linear_head_trains_with_the_optimizer(tiny_model_dir):
    """A head that is not one linear layer keeps its epochs of AdamW (the solve does not apply)."""

    class MLPHead(FeatureExtractionRecipe):
        def load_backbone(self, labels):
            backbone = super().load_backbone(labels)
            model = backbone.model
            model.classifier = nn.Sequential(nn.Linear(model.classifier.in_features, 16), nn.ReLU(),
                                             nn.Linear(16, len(labels)))
            return backbone

    recipe = MLPHead(tiny_model_dir("vit"), epochs=3, feature_cache="memory", lr=0.01)
    result = recipe.fit(colour_dataset(60), progress=False)
    assert len(result.history) == 3 and "solver" not in result.extra["periods"][0]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_kept_epoch_is_the_saved_model(tiny_model_dir, tmp_path, keep):
    """The saved model's validation metrics equal those of the epoch it keeps: the best one, or the last."""
    import tl_hub

    train, val = colour_dataset(60, seed=0), colour_dataset(30, seed=1)
    recipe = ScratchRecipe(tiny_model_dir("resnet"), epochs=6, lr=0.2, batch_size=8, seed=3, keep_epoch=keep)
    result = recipe.fit(train, val, progress=False)
    history = result.history
    best = max(history, key=lambda h: (h["accuracy"], -h["loss"]))
    kept = best if keep == "best" else history[-1]
    assert result.extra["kept_epoch"] == kept["epoch"]
    assert result.metrics["accuracy"] == kept["accuracy"]
    recipe.save(tmp_path / "out")
    again = tl_hub.load(str(tmp_path / "out")).evaluate(val)
    assert again["accuracy"] == pytest.approx(kept["accuracy"], abs=1e-9)
    assert again["loss"] == pytest.approx(kept["loss"], rel=1e-4, abs=1e-5)
    info = json.load(open(tmp_path / "out" / "tl_hub.json"))
    assert info["kept_epoch"] == {"epoch": kept["epoch"], "rule": keep, "smoothed": False}  # 30 validation images
    from tl_hub.hub import model_card

    card = str(model_card({**info, "metrics": json.load(open(tmp_path / "out" / "metrics.json"))}, "me/colours"))
    rule = "the best on validation" if keep == "best" else "the last"
    assert f"Kept epoch: {kept['epoch']} of 6 ({rule})" in card
    if keep == "best":
        assert [h["epoch"] for h in history if h.get("best")] == [best["epoch"]]


def _run_best_epoch(records, smooth):
    """Feed ``(period, accuracy, loss)`` records to a `BestEpoch` over a one-weight model whose weight is set to the
    epoch number before each record; returns the kept epoch and the weight restored."""
    from tl_hub.checkpoint import TrainingState
    from tl_hub.loop import BestEpoch, Period

    model = nn.Linear(1, 1, bias=False)
    periods = [Period("head", 1, [{"params": list(model.parameters())}]),
               Period("fine-tune", len(records) - 1, [{"params": list(model.parameters())}])]
    best, state = BestEpoch(model, periods, smooth=smooth), TrainingState(history=[])
    for epoch, (period, accuracy, loss) in enumerate(records, 1):
        model.weight.data.fill_(epoch)
        record = {"epoch": epoch, "period": period, "accuracy": accuracy, "loss": loss}
        state.history.append(record)
        best.update(record, state)
    best.restore(state.history)
    return best.epoch, float(model.weight)


def test_small_validation_judges_an_epoch_with_the_one_before():
    """One lucky epoch (0.9 between 0.5s) wins on its own figures; judged with the epoch before it (a small
    validation split), two steady epochs at 0.8 win.  The first epoch of a period is judged alone."""
    records = [("head", 0.6, 1.0), ("fine-tune", 0.5, 1.2), ("fine-tune", 0.9, 1.1), ("fine-tune", 0.5, 1.3),
               ("fine-tune", 0.8, 1.0), ("fine-tune", 0.8, 0.9)]
    assert _run_best_epoch(records, smooth=False) == (3, 3.0)
    assert _run_best_epoch(records, smooth=True) == (6, 6.0)
    # the head epoch is not averaged with the fine-tune epoch after it (another period), and wins alone
    assert _run_best_epoch([("head", 0.9, 0.5), ("fine-tune", 0.4, 2.0), ("fine-tune", 0.85, 0.6)],
                           smooth=True) == (1, 1.0)


@pytest.mark.parametrize("validation, smoothed", [(8, True), (30, False)])
def test_small_validation_smoothing_is_recorded(tiny_model_dir, tmp_path, validation, smoothed):
    """Under 30 validation images the kept epoch is judged on two-epoch means, and the saved model and its card
    say so; at 30 or more it is not."""
    train, val = colour_dataset(40, seed=0), colour_dataset(validation, seed=1)
    recipe = ScratchRecipe(tiny_model_dir("resnet"), epochs=3, lr=0.05, batch_size=8, seed=0)
    recipe.fit(train, val, progress=False)
    recipe.save(tmp_path / "out")
    info = json.load(open(tmp_path / "out" / "tl_hub.json"))
    assert info["kept_epoch"]["smoothed"] is smoothed
    from tl_hub.hub import model_card

    card = str(model_card({**info, "metrics": json.load(open(tmp_path / "out" / "metrics.json"))}, "me/colours"))
    assert ("judged on the mean of it and the epoch before" in card) is smoothed


def test_best_epoch_differs_from_last_when_training_degrades(tiny_model_dir):
    """A learning rate that wrecks the model late: the best epoch's weights are restored, not the last."""
    train, val = colour_dataset(60, seed=0), colour_dataset(30, seed=1)
    recipe = FineTuneRecipe(tiny_model_dir("resnet"), epochs=4, head_epochs=1, lr=0.5, backbone_lr_ratio=1.0,
                            warmup_ratio=0.0, batch_size=8, augment=False, seed=0)
    result = recipe.fit(train, val, progress=False)
    accs = [h["accuracy"] for h in result.history]
    assert accs[-1] < max(accs)  # the setting does degrade training
    assert result.extra["kept_epoch"] == 1 + accs.index(max(accs))
    assert recipe.evaluate(val)["accuracy"] == pytest.approx(max(accs))


def test_defaults_resolve_to_documented_values():
    """docs/guides/defaults.md: epochs enough for min_steps=500 optimizer steps (scratch: 1000) within [3, 30]; with
    automatic epochs small data makes each epoch several passes so that those steps are there."""
    cfg = TrainingConfig()
    assert (cfg.epochs, cfg.min_steps, cfg.min_epochs, cfg.max_epochs) == (None, 500, 3, 30)
    assert (cfg.batch_size, cfg.lr, cfg.warmup_ratio, cfg.scheduler, cfg.keep_epoch, cfg.head_solver) == (
        32, 1e-3, 0.1, "cosine", "best", "lbfgs")
    assert (cfg.augment, cfg.hflip, cfg.crop_scale) == (True, False, 0.6)

    def plan(config, n):
        return config.resolved(n).epochs, config.passes_per_epoch(n)

    assert plan(cfg, 10) == (30, 17)            # 1 step per pass: 30 epochs of 17 passes = 510 steps
    assert plan(cfg, 40) == (30, 9)             # 2 steps per pass: 30 x 9 x 2 = 540 steps
    assert plan(cfg, 10_000) == (3, 1)          # 313 steps per pass: min_epochs, 939 steps
    assert plan(ScratchConfig(), 40) == (30, 17)  # scratch: min_steps=1000, 30 x 17 x 2 = 1020 steps
    assert plan(TrainingConfig(epochs=7), 10_000) == (7, 1)
    assert plan(TrainingConfig(epochs=30), 40) == (30, 1)      # epochs given: one pass each, as asked
    assert plan(TrainingConfig(min_steps=0), 40) == (3, 1)        # no step minimum: min_epochs passes
    assert plan(TrainingConfig(batch_size=8, gradient_accumulation_steps=2), 160) == (30, 2)
    ft = FineTuneConfig()
    assert (ft.head_epochs, ft.backbone_lr_ratio, ft.unfreeze, ft.bn_policy) == (None, 0.1, "all", "frozen")
    small, large = ft.resolved(10), ft.resolved(10_000)
    assert (small.head_epochs, small.epochs, ft.passes_per_epoch(10)) == (30, 60, 17)
    assert (large.head_epochs, large.epochs, ft.passes_per_epoch(10_000)) == (3, 6, 1)
    assert FineTuneConfig(head_epochs=0).resolved(10_000).epochs == 3
    assert (FineTuneConfig(epochs=4).resolved(40).head_epochs, FineTuneConfig(epochs=4).passes_per_epoch(40)) == (1, 1)
    assert FineTuneConfig(epochs=1).resolved(40).head_epochs == 0
    assert FeatureExtractionConfig().resolved(10).epochs == 30


def test_fine_tune_defaults_solve_the_head_then_train(tiny_model_dir):
    recipe = FineTuneRecipe(tiny_model_dir("vit"), min_steps=12, min_epochs=1, max_epochs=2, batch_size=16)
    result = recipe.fit(colour_dataset(60), progress=False)
    periods = result.extra["periods"]
    assert [p["name"] for p in periods] == ["head", "fine-tune"]
    assert periods[0]["epochs"] == 1 and periods[0]["solver"] == "lbfgs"
    assert periods[1]["epochs"] == 2  # 48 training images at batch 16: 3 steps per pass, 2 epochs of 2 passes
    assert recipe.result.run.passes == 2 and recipe.info()["passes_per_epoch"] == 2
    assert result.history[0]["C"] in C_GRID and result.history[0]["lr"] is None


def test_stratified_folds_put_every_class_in_every_training_part():
    y = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    fold = stratified_folds(y, folds=5)
    assert int(fold.max()) + 1 == 3  # the smallest class has 3 examples: 3 folds
    for f in range(3):
        assert set(y[fold != f].tolist()) == {0, 1, 2} and set(y[fold == f].tolist()) == {0, 1, 2}
    assert torch.equal(fold, stratified_folds(y, folds=5))  # seeded
    assert stratified_folds(torch.tensor([0, 0, 1]), folds=5) is None  # a class of one cannot be held out


def test_small_validation_chooses_C_by_cross_validation():
    train, val, _ = _digits_split(5)
    x, y = torch.tensor(train[0]), torch.tensor(train[1])
    vx, vy = torch.tensor(val[0][:10]), torch.tensor(val[1][:10])
    pooled = (torch.cat([x, vx]), torch.cat([y, vy]))
    result = fit_probe(x, y, vx, vy, 10, cross_validate=pooled)
    assert result.chosen_by == "cross-validation"
    best = max(result.path, key=lambda p: (p["cv_score"], -p["cv_loss"]))
    assert best["C"] == result.C and all(p["folds"] == 5 for p in result.path)
    # the head itself is fitted on the training images only, with that C
    plain = fit_probe(x, y, vx, vy, 10, grid=[result.C])
    assert torch.allclose(result.weight, plain.weight) and plain.chosen_by == "validation"
    # a class with a single example in the pool: no folds, so C is chosen on the validation split as before
    lonely = fit_probe(x, y, vx, vy, 10, cross_validate=(pooled[0][:12], torch.tensor([0] * 11 + [1])))
    assert lonely.chosen_by == "validation" and "val_accuracy" in lonely.path[0]


def test_cross_validated_C_walks_the_grid_with_patience():
    train, val, _ = _digits_split(10)
    x = torch.tensor(np.concatenate([train[0], val[0][:20]]), dtype=torch.float32)
    x = (x - x.mean(0)) / x.std()
    y = torch.tensor(np.concatenate([train[1], val[1][:20]]))
    full_C, full = cross_validated_C(x, y, 10, patience=None)
    early_C, early = cross_validated_C(x, y, 10)
    assert len(full) == len(C_GRID) and len(early) <= len(full) and early_C == full_C
    assert [p["C"] for p in early] == list(C_GRID[:len(early)])


def test_fit_with_a_tiny_validation_split_cross_validates_the_head(tiny_model_dir):
    small = FeatureExtractionRecipe(tiny_model_dir("vit"), seed=0).fit(colour_dataset(30), progress=False)
    assert small.history[0]["C_chosen_by"] == "cross-validation"  # 6 validation images
    large = FeatureExtractionRecipe(tiny_model_dir("vit"), seed=0).fit(colour_dataset(30), colour_dataset(30, seed=1),
                                                                       progress=False)
    assert large.history[0]["C_chosen_by"] == "validation"


def test_compute_budget_caps_the_schedule_of_expensive_images():
    """A Lite0-sized image (about 2.3 GFLOP to train on at 224 px, 0.77 to evaluate) on small data: the 2 TFLOP
    budget, not min_steps, decides the epochs and passes; cheap images (the glyph models, a few MFLOP) keep the
    min_steps schedule."""
    from tl_hub.cost import Cost

    def lite0(validation):
        return Cost(2.3e9, 0.77e9, validation)

    def plan(config, n, cost):
        return config.resolved(n, cost).epochs, config.passes_per_epoch(n, cost)

    cfg = TrainingConfig()
    assert cfg.compute_budget == 2.0 and ScratchConfig().compute_budget == 2.0
    glyph = Cost(9.4e6, 3.1e6, 10)
    assert plan(cfg, 40, glyph) == plan(cfg, 40, None) == (30, 9)  # 540 steps cost 0.2 TFLOP: no cap
    assert plan(cfg, 40, lite0(10)) == (20, 1)   # 20 epochs x (40 trained on + 10 evaluated) = 1.99 TFLOP
    assert plan(cfg, 40, lite0(0)) == (21, 1)    # no validation: a little more training
    assert plan(cfg, 10, lite0(0)) == (30, 2)    # 30 epochs fit with 2 passes each (1.38 TFLOP), not 17
    assert plan(cfg, 200, lite0(50)) == (4, 1)
    assert plan(cfg, 10_000, lite0(2000)) == (3, 1)  # min_epochs hold whatever the budget
    assert plan(TrainingConfig(epochs=10), 200, lite0(50)) == (10, 1)  # epochs given: as asked
    assert plan(TrainingConfig(compute_budget=0), 200, lite0(50)) == (30, 3)  # 0: no cap, min_steps decides
    assert plan(ScratchConfig(), 40, lite0(10)) == (20, 1)  # scratch: the same compute as the transfer recipes
    ft = FineTuneConfig().resolved(200, lite0(50))
    assert (ft.head_epochs, ft.epochs) == (30, 34)  # a gradient-trained head runs on cached features: not capped
    assert FeatureExtractionConfig().needs_cost() is False and FineTuneConfig().needs_cost()
    note = cfg.budget_note(200, lite0(50))
    assert "4 passes" in note and "rather than the 90" in note and "compute_budget is 2 TFLOP" in note
    assert cfg.budget_note(40, glyph) is None and TrainingConfig(epochs=3).budget_note(200, lite0(50)) is None
    with pytest.raises(Exception, match="compute_budget"):
        TrainingConfig(compute_budget=-1)


def test_forward_flops_count_the_model_at_its_processor_size(tiny_model_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from tl_hub.cost import forward_flops, measure_cost

    folder = tiny_model_dir("resnet")
    model = AutoModelForImageClassification.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    small = forward_flops(model, processor)
    processor.size = {"height": processor.size["height"] * 2, "width": processor.size["width"] * 2} \
        if "height" in processor.size else {"shortest_edge": processor.size["shortest_edge"] * 2}
    if getattr(processor, "crop_size", None):
        processor.crop_size = {k: v * 2 for k, v in processor.crop_size.items()}
    large = forward_flops(model, processor)
    assert small > 0 and 3.5 < large / small < 4.5  # a convolutional network: 4x the pixels, about 4x the work
    cost = measure_cost(model, processor, validation_images=7)
    assert (cost.train_flops, cost.eval_flops, cost.epoch(10, passes=2)) == (3 * large, large, 67 * large)
    model.train()
    forward_flops(model, processor)
    assert model.training  # counted in eval mode, the caller's mode put back
