"""Imbalanced classes: the ratio, the class weights `class_weighting` gives, the weighted loss and solve, balanced
sampling, and what the run records."""

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from support.tiny import COLOURS, colour_images

from tl_hub import FeatureExtractionRecipe, FineTuneRecipe
from tl_hub.errors import ConfigError
from tl_hub.imbalance import (
    AUTO_RATIO,
    balanced_order,
    class_weights,
    example_weights,
    imbalance_ratio,
    label_counts,
    resolve_weighting,
)
from tl_hub.probe import fit_logistic, head_scores
from tl_hub.tasks import task_loss


def imbalanced_dataset(sizes, seed=0):
    """Colour images with ``sizes[c]`` images of class ``c``."""
    images, labels = [], []
    for c, n in enumerate(sizes):
        imgs, _ = colour_images(n * len(COLOURS), seed=seed + c)
        images += imgs[c::len(COLOURS)][:n]
        labels += [c] * n
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=COLOURS)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_counts_ratio_and_the_balanced_weights():
    y = torch.tensor([0] * 30 + [1] * 6 + [2] * 3)
    counts = label_counts(y, 4)
    assert counts.tolist() == [30, 6, 3, 0] and imbalance_ratio(counts) == 10.0
    w = class_weights("balanced", y, 4)
    # N / (K n_c) over the classes present: every class weighs the same in total
    assert w.tolist() == pytest.approx([39 / (3 * 30), 39 / (3 * 6), 39 / (3 * 3), 0.0])
    assert (w[:3] * counts[:3]).tolist() == pytest.approx([13.0] * 3)
    assert class_weights("none", y, 4) is None
    assert class_weights("auto", y, 4) is not None  # 10:1 >= AUTO_RATIO
    assert class_weights("auto", torch.tensor([0, 0, 1, 1, 2, 2]), 3) is None  # balanced: exactly unweighted
    assert resolve_weighting("auto", torch.tensor([float(AUTO_RATIO) - 0.1, 1.0]), False) == "none"
    assert resolve_weighting("auto", torch.tensor([float(AUTO_RATIO), 1.0]), False) == "balanced"
    multi = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=torch.float32)
    assert resolve_weighting("auto", label_counts(multi, 2), True) == "none"  # thresholds do it
    assert class_weights("balanced", multi, 2).tolist() == pytest.approx([1 / 3, 3.0])  # negatives / positives


def test_weighted_accuracy_of_the_solve_is_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y = torch.tensor([0] * 40 + [1] * 8 + [2] * 4)
    x = torch.tensor(rng.normal(size=(52, 5)) + np.eye(5)[y.numpy()] * 1.2)
    w, b, _ = fit_logistic(x, y, 3, C=1.0)
    weights = class_weights("balanced", y, 3)
    _, score = head_scores(x, y, w, b, weights.double())
    predicted = ((x @ w.T) + b).argmax(-1)
    assert score == pytest.approx(balanced_accuracy_score(y.numpy(), predicted.numpy()))
    assert example_weights(y, weights).mean() == pytest.approx(1.0)


def test_the_weighted_solve_matches_scikit_learn_class_weight_balanced():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    y = np.array([0] * 40 + [1] * 10 + [2] * 5)
    x = rng.normal(size=(55, 4)) + np.eye(4)[y] * 1.5
    w, b, _ = fit_logistic(torch.tensor(x), torch.tensor(y), 3, C=0.3, tol=1e-10,
                           class_weight=class_weights("balanced", torch.tensor(y), 3).double())
    # ours: sum_i s_i CE_i / N with s normalised to mean 1; scikit-learn: sum_i w_i CE_i with C -> rescale C
    weights = class_weights("balanced", torch.tensor(y), 3).numpy()
    scale = weights[y].mean()
    ref = LogisticRegression(C=0.3 / scale, class_weight=dict(enumerate(weights)), tol=1e-12, max_iter=10000).fit(x, y)
    logits, ref_logits = (torch.tensor(x) @ w.T + b).numpy(), ref.decision_function(x)
    assert logits - logits.mean(1, keepdims=True) == pytest.approx(ref_logits - ref_logits.mean(1, keepdims=True),
                                                                   abs=1e-3)


def test_weighted_cross_entropy_is_pytorchs():
    logits, y = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 2, 2])
    w = torch.tensor([0.5, 2.0, 1.0])
    assert task_loss(logits, y, class_weight=w) == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, y, weight=w)))


def test_balanced_order_draws_every_class_equally_often_and_is_seeded():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    order = balanced_order(y, seed=3, epoch=0, count=30_000)
    share = torch.bincount(y[order], minlength=3).double() / len(order)
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    assert torch.equal(order, balanced_order(y, seed=3, epoch=0, count=30_000))
    assert not torch.equal(order, balanced_order(y, seed=3, epoch=1, count=30_000))


@pytest.mark.parametrize("setting", [{"class_weighting": "auto"}, {"class_weighting": "none"},
                                     {"sampler": "balanced"}], ids=["auto", "none", "balanced-sampler"])
def test_an_imbalanced_run_records_and_reports(tiny_model_dir, tmp_path, setting, caplog):
    train, val = imbalanced_dataset([40, 8, 4], seed=0), imbalanced_dataset([10, 2, 1], seed=5)
    recipe = FeatureExtractionRecipe(tiny_model_dir("vit"), seed=0, **setting)
    with caplog.at_level(logging.INFO, logger="tl_hub"):
        result = recipe.fit(train, val, progress=False)
    assert "imbalance 10.0:1" in result.data_summary
    assert {"accuracy", "balanced_accuracy", "f1"} <= set(result.metrics)
    recipe.save(str(tmp_path / "out"))
    info = json.load(open(tmp_path / "out" / "tl_hub.json"))
    weighting = info["class_weighting"]
    assert weighting["imbalance"] == 10.0
    assert weighting["applied"] is (setting.get("class_weighting") == "auto")  # the sampler replaces auto weights
    card = open(tmp_path / "out" / "README.md").read()
    assert "Class imbalance 10.0:1" in card and "balanced accuracy" in card


def test_class_weights_move_the_solve_toward_the_rare_classes():
    """On overlapping classes of 60 / 12 / 6 examples, the weighted solve predicts the rare classes more often and
    has the higher balanced accuracy on a balanced test set."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(2)

    def draw(sizes):
        y = np.repeat(np.arange(3), sizes)
        return torch.tensor(rng.normal(size=(len(y), 4)) + np.eye(4)[y] * 1.0), torch.tensor(y)

    x, y = draw([60, 12, 6])
    tx, ty = draw([300, 300, 300])
    scores = {}
    for name, weights in (("balanced", class_weights("balanced", y, 3).double()), ("none", None)):
        w, b, _ = fit_logistic(x, y, 3, C=1.0, class_weight=weights)
        predicted = ((tx @ w.T) + b).argmax(-1)
        scores[name] = (int((predicted > 0).sum()), balanced_accuracy_score(ty.numpy(), predicted.numpy()))
    assert scores["balanced"][0] > scores["none"][0]
    assert scores["balanced"][1] > scores["none"][1]


def test_balanced_sampling_trains_a_fine_tune_on_balanced_batches(tiny_model_dir):
    from tl_hub.data import ImageClassificationDataset

    train = imbalanced_dataset([30, 6, 3], seed=0)
    dataset = ImageClassificationDataset(train, "image", "label", seed=0)
    dataset.balance(torch.tensor(train["label"]))
    drawn = [dataset.row(i) for i in range(len(dataset))]
    assert len(set(train.select(drawn)["label"])) == 3
    recipe = FineTuneRecipe(tiny_model_dir("vit"), epochs=2, head_epochs=1, sampler="balanced", batch_size=8)
    recipe.fit(train, imbalanced_dataset([6, 2, 2], seed=5), progress=False)
    assert [h["period"] for h in recipe.result.history] == ["head", "fine-tune"]


def test_bad_settings_and_streams(tiny_model_dir):
    with pytest.raises(ConfigError, match="class_weighting.*auto, none, balanced"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), class_weighting="inverse")
    with pytest.raises(ConfigError, match="sampler.*shuffle, balanced"):
        FeatureExtractionRecipe(tiny_model_dir("vit"), sampler="oversample")
    stream = imbalanced_dataset([8, 4, 4]).to_iterable_dataset()
    for setting, match in (({"class_weighting": "balanced"}, "class_weighting='balanced' needs the class counts"),
                           ({"sampler": "balanced"}, "sampler='balanced' needs the training labels")):
        with pytest.raises(ConfigError, match=match):
            FeatureExtractionRecipe(tiny_model_dir("vit"), train_examples=16, **setting).fit(
                stream, imbalanced_dataset([3, 3, 3]).to_iterable_dataset(), progress=False)
