"""Calibration: the temperature fit, ECE and the reliability bins, the temperature folded into the head and applied
by every consumer of the saved model (load, the Space), and what evaluate and the model folder report."""

import json

import numpy as np
import pytest
import torch
from support.tiny import COLOURS, colour_dataset

import tl_hub
from tl_hub import FeatureExtractionRecipe
from tl_hub.calibration import (
    TEMPERATURE_RANGE,
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def noisy_colours(n, seed, fraction=0.3):
    """Colour images with ``fraction`` of the labels redrawn at random: a head trained hard on them is overconfident."""
    ds = colour_dataset(n, seed=seed)
    rng = np.random.default_rng(seed)
    labels = np.array(ds["label"])
    flip = rng.random(len(labels)) < fraction
    labels[flip] = rng.integers(0, len(COLOURS), int(flip.sum()))
    return ds.remove_columns("label").add_column("label", labels.tolist()).cast_column("label", ds.features["label"])


def overconfident_recipe(model_dir, **settings):
    # a head trained by many large gradient steps on noisy labels: far more confident than it is right
    return FeatureExtractionRecipe(model_dir, head_solver="adamw", epochs=30, lr=2.0, batch_size=16, augment=False,
                                   weight_decay=0.0, **settings)


def test_ece_and_bins_by_hand():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.65, 0.35]])
    refs = np.array([0, 1, 1, 0])  # right, wrong, right, right
    bins = reliability_bins(probs, refs, bins=5)
    assert [b["count"] for b in bins] == [0, 0, 0, 2, 2]  # 0.65 and 0.7 in [0.6, 0.8); 0.85 and 0.9 in [0.8, 1]
    assert bins[3]["confidence"] == pytest.approx(0.675) and bins[3]["accuracy"] == pytest.approx(1.0)
    assert bins[4]["confidence"] == pytest.approx(0.875) and bins[4]["accuracy"] == pytest.approx(0.5)
    assert expected_calibration_error(probs, refs, bins=5) == pytest.approx(0.5 * 0.325 + 0.5 * 0.375)
    # multi-label: every (image, label) probability against the label's presence
    multi = reliability_bins(np.array([[0.95, 0.05]]), np.array([[1, 0]]), bins=10)
    assert sum(b["count"] for b in multi) == 2
    assert expected_calibration_error(np.array([[0.95, 0.05]]), np.array([[1, 0]]), bins=10) == pytest.approx(0.05)


def test_the_fitted_temperature_recovers_a_known_one():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=gen) * 2
    refs = torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)  # labels drawn from softmax(z)
    t = fit_temperature(z * 3, refs)  # logits three times too sharp
    assert t.ndim == 0 and float(t) == pytest.approx(3.0, rel=0.08)
    before, after = calibration_figures(z * 3, refs), calibration_figures(z * 3 / t, refs)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert float(fit_temperature(z / 2, refs)) == pytest.approx(0.5, rel=0.08)  # underconfident: T < 1


def test_an_already_calibrated_model_keeps_a_temperature_of_one():
    # 40 images drawn from softmax(z): any fitted T is noise, not a significant gain, so T stays exactly 1
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(40, 5, generator=gen) * 2
    refs = torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)
    assert float(fit_temperature(z, refs)) == 1.0
    assert float(fit_temperature(z, refs, significance=0.0)) != 1.0  # the search alone would move it
    # the same few images three times too sharp: a significant gain, kept
    assert float(fit_temperature(z * 3, refs)) > 1.5


def test_multi_label_gets_a_temperature_per_label():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 3, generator=gen)
    refs = torch.bernoulli(z.sigmoid(), generator=gen)
    refs[:, 2] = 0  # a label with no positive keeps T = 1
    t = fit_temperature(z * torch.tensor([4.0, 0.5, 3.0]), refs)
    assert t.shape == (3,)
    assert float(t[0]) == pytest.approx(4.0, rel=0.1) and float(t[1]) == pytest.approx(0.5, rel=0.1)
    assert float(t[2]) == 1.0


def test_a_perfect_validation_split_does_not_make_the_model_certain():
    # every validation image right: the NLL alone would push T to its lower bound; the prior keeps it near 1
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0]] * 5)
    refs = torch.tensor([0, 1] * 5)
    t = float(fit_temperature(z, refs))
    assert TEMPERATURE_RANGE[0] * 2 < t <= 1.0 and t > 0.5


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, tmp_path_factory):
    model_dir = tiny_model_dir("vit")
    train, val = noisy_colours(150, 0), noisy_colours(90, 1)
    raw = overconfident_recipe(model_dir, calibrate=False)
    raw.fit(train, val, progress=False)
    recipe = overconfident_recipe(model_dir)
    recipe.fit(train, val, progress=False)
    out = tmp_path_factory.mktemp("calibrated") / "model"
    recipe.save(str(out))
    return raw, recipe, str(out)


def test_the_temperature_is_fitted_on_validation_and_folded_into_the_head(calibrated):
    raw, recipe, _ = calibrated
    record = recipe.result.extra["calibration"]
    t = record["temperature"]
    assert record["folded_into_head"] and t > 1.2  # the overconfident head is softened
    assert raw.result.extra["calibration"] is None
    v = record["validation"]
    assert v["nll_after"] < v["nll_before"] and v["ece_after"] <= v["ece_before"]
    # the same run without calibration has the same head times T: the logits are divided by T, nothing else changes
    head = recipe.classifier.model.classifier
    raw_head = raw.classifier.model.classifier
    assert torch.allclose(head.weight * t, raw_head.weight, rtol=1e-4, atol=1e-5)
    assert torch.allclose(head.bias * t, raw_head.bias, rtol=1e-4, atol=1e-5)
    images = colour_dataset(12, seed=5)["image"]
    assert torch.equal(recipe.classifier.predict_proba(images).argmax(-1), raw.classifier.predict_proba(images).argmax(-1))
    assert recipe.result.metrics["calibration"]["ece_after"] == pytest.approx(v["ece_after"])


def test_the_saved_model_and_the_space_apply_the_temperature(calibrated):
    from tl_hub.space import SpaceApp

    raw, recipe, out = calibrated
    t = recipe.result.extra["calibration"]["temperature"]
    info = json.loads(open(f"{out}/tl_hub.json").read())
    assert info["calibration"]["temperature"] == pytest.approx(t)
    images = colour_dataset(6, seed=7)["image"]
    loaded = tl_hub.load(out)
    logits = torch.log(raw.classifier.predict_proba(images))  # log-softmax of the uncalibrated logits
    expected = (logits / t).softmax(-1)
    assert torch.allclose(loaded.predict_proba(images), expected, atol=1e-5)
    app = SpaceApp(loaded, top_k=len(COLOURS), max_pixels=1_000_000)
    scores = app.predict(images[0])
    assert scores == pytest.approx({COLOURS[i]: float(p) for i, p in enumerate(expected[0])}, abs=1e-5)


def test_evaluate_reports_calibration_before_and_after(calibrated, tmp_path):
    _, recipe, out = calibrated
    test = noisy_colours(90, 2)
    metrics = tl_hub.load(out).evaluate(test, output_dir=str(tmp_path / "eval"))
    cal = metrics["calibration"]
    assert cal["temperature"] == pytest.approx(recipe.result.extra["calibration"]["temperature"])
    assert cal["ece_after"] == pytest.approx(metrics["ece"]) and cal["nll_after"] == pytest.approx(metrics["loss"])
    assert cal["nll_before"] > cal["nll_after"]
    assert len(metrics["reliability"]) == 15 and len(cal["reliability_before"]) == 15
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000
    card = open(f"{out}/README.md").read()
    assert "Calibration" in card and "ECE" in card


def test_the_cli_evaluate_prints_the_calibration(calibrated, tmp_path, capsys):
    from tl_hub.cli import main

    _, _, out = calibrated
    folder = tmp_path / "test"
    for i, (image, label) in enumerate(zip(*noisy_colours(30, 3)[:].values())):
        (folder / COLOURS[label]).mkdir(parents=True, exist_ok=True)
        image.save(folder / COLOURS[label] / f"{i}.png")
    assert main(["evaluate", out, "--dataset", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "temperature" in printed


def test_a_pushed_model_applies_the_temperature_in_a_fresh_cache(calibrated, tiny_model_dir, tmp_path):
    from support.hub_server import LocalHub
    from test_hub_push import TOKEN, client_env, predictions_in_fresh_cache, tl_hub_cli

    raw, recipe, out = calibrated
    t = recipe.result.extra["calibration"]["temperature"]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    images = colour_dataset(5, seed=8)["image"]
    for i, im in enumerate(images):
        im.save(images_dir / f"{i}.png")
    with LocalHub(str(tmp_path / "store"), token=TOKEN) as hub:
        assert tl_hub_cli(["push", out, "me/calibrated"], client_env(hub, tmp_path / "pusher"), tmp_path).returncode == 0
        # the head travels with its temperature: a fresh machine gets softmax(raw logits / T)
        remote, _ = predictions_in_fresh_cache(hub, "me/calibrated", images_dir, tmp_path,
                                               base=tiny_model_dir("vit"))
    from PIL import Image
    reloaded = [Image.open(images_dir / f) for f in sorted(p.name for p in images_dir.iterdir())]
    expected = (torch.log(raw.classifier.predict_proba(reloaded)) / t).softmax(-1)
    assert torch.allclose(remote, expected, atol=1e-5)


def test_the_pipeline_gets_the_temperature_through_the_saved_head(tiny_model_dir, tmp_path):
    from transformers import pipeline

    from tl_hub import ScratchRecipe

    # a fully trained model is saved as a standard transformers model
    recipe = ScratchRecipe(tiny_model_dir("vit"), epochs=3, lr=5e-2, batch_size=16, augment=False)
    recipe.fit(noisy_colours(90, 4), noisy_colours(60, 5), progress=False)
    assert recipe.result.extra["calibration"]["folded_into_head"]
    recipe.save(str(tmp_path / "full"))
    pipe = pipeline("image-classification", model=str(tmp_path / "full"), top_k=len(COLOURS))
    image = colour_dataset(3, seed=6)["image"][0]
    scores = {r["label"]: r["score"] for r in pipe(image)}
    ours = tl_hub.load(str(tmp_path / "full")).predict_proba(image)[0]
    assert scores == pytest.approx({COLOURS[i]: float(p) for i, p in enumerate(ours)}, abs=1e-5)


def test_multi_label_temperatures_are_folded_row_by_row(tiny_model_dir, tmp_path):
    from support.tiny import CHANNELS, multilabel_dataset

    model_dir = tiny_model_dir("vit")
    train, val = multilabel_dataset(90, seed=0), multilabel_dataset(60, seed=1)
    settings = dict(head_solver="adamw", epochs=20, lr=0.5, batch_size=16, augment=False, weight_decay=0.0)
    raw = FeatureExtractionRecipe(model_dir, calibrate=False, **settings)
    raw.fit(train, val, progress=False)
    recipe = FeatureExtractionRecipe(model_dir, **settings)
    recipe.fit(train, val, progress=False)
    t = torch.tensor(recipe.result.extra["calibration"]["temperature"])
    assert t.shape == (len(CHANNELS),) and recipe.result.extra["calibration"]["folded_into_head"]
    recipe.save(str(tmp_path / "ml"))
    images = multilabel_dataset(6, seed=2)["image"]
    raw_logits = torch.logit(raw.classifier.predict_proba(images).double(), eps=1e-12)
    expected = (raw_logits / t.double()).sigmoid().float()
    assert torch.allclose(tl_hub.load(str(tmp_path / "ml")).predict_proba(images), expected, atol=1e-4)
    # the thresholds were chosen on the calibrated probabilities, and saved with them
    assert set(tl_hub.load(str(tmp_path / "ml")).info["thresholds"]) == set(CHANNELS)
