"""WiSE-FT: θ(α) = (1 − α)·θ_start + α·θ_ft, α chosen on validation (or set), the saved model equal to θ(α)."""

import pytest
import torch
from test_calibration import noisy_colours

import tl_hub
from tl_hub import FineTuneRecipe, TrainAllRecipe
from tl_hub.errors import ConfigError
from tl_hub.evaluation import outputs_metrics
from tl_hub.tasks import selection_key
from tl_hub.wise_ft import ALPHA_GRID, choose, interpolate, parse_wise_ft

FAST = dict(epochs=4, batch_size=16, lr=3e-3, keep_epoch="last", calibrate=False, seed=3)


@pytest.mark.parametrize("bad", [1.5, -0.1, "yes", "", None, True])
def test_bad_wise_ft_settings_are_refused(tiny_model_dir, bad):
    with pytest.raises(ConfigError, match="wise_ft"):
        FineTuneRecipe(tiny_model_dir("vit"), wise_ft=bad)


def test_settings_and_interpolation():
    from tl_hub.config import FineTuneConfig

    assert FineTuneConfig().wise_ft == "off"  # the default, chosen from benchmarks/trust.py
    assert parse_wise_ft("AUTO") == "auto" and parse_wise_ft("off") == "off" and parse_wise_ft("0.25") == 0.25
    start = {"w": torch.zeros(3), "n": torch.tensor(1)}
    end = {"w": torch.tensor([2.0, 4.0, 8.0]), "n": torch.tensor(7)}
    mixed = interpolate(start, end, 0.25)
    assert mixed["w"].tolist() == [0.5, 1.0, 2.0] and int(mixed["n"]) == 7  # integer buffers: the fine-tuned value
    assert choose([(0.0, (0.9, -0.5)), (0.5, (0.9, -0.4)), (1.0, (0.8, -0.1))]) == 0.5
    assert choose([(0.5, (0.9, -0.4)), (1.0, (0.9, -0.4))]) == 1.0  # a tie goes to the larger alpha


@pytest.fixture(scope="module")
def runs(tiny_model_dir):
    """The same fine-tune three times: without WiSE-FT (keeping θ_start at the head period's end), with α = 0.5,
    and with α chosen on validation."""
    model_dir = tiny_model_dir("vit")
    train, val = noisy_colours(120, 10, fraction=0.15), noisy_colours(60, 11, fraction=0.15)
    kept = {}

    def keep_start(period, model, optimizer):
        if period.head_only:
            kept["start"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain = FineTuneRecipe(model_dir, wise_ft="off", **FAST)
    plain.fit(train, val, progress=False, on_period_end=keep_start)
    half = FineTuneRecipe(model_dir, wise_ft=0.5, **FAST)
    half.fit(train, val, progress=False)
    auto = FineTuneRecipe(model_dir, wise_ft="auto", **FAST)
    auto.fit(train, val, progress=False)
    return {"start": kept["start"], "plain": plain, "half": half, "auto": auto, "val": val}


def assert_state_is(model, expected):
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.allclose(state[key].float(), value.float(), atol=1e-6), key


def test_a_fixed_alpha_gives_exactly_the_interpolated_weights(runs, tmp_path):
    start, ft = runs["start"], runs["plain"].classifier.model.state_dict()
    assert any(not torch.equal(start[k], ft[k]) for k in start)  # fine-tuning moved the weights
    expected = interpolate(start, ft, 0.5)
    assert_state_is(runs["half"].classifier.model, expected)
    record = runs["half"].result.extra["wise_ft"]
    assert record == {"setting": 0.5, "applied": True, "alpha": 0.5, "grid": [], "chosen_by": "setting"}
    # the saved model is θ(0.5), as an ordinary model
    runs["half"].save(str(tmp_path / "half"))
    assert_state_is(tl_hub.load(str(tmp_path / "half")).model, expected)
    assert tl_hub.load(str(tmp_path / "half")).info["wise_ft"]["alpha"] == 0.5


def test_auto_chooses_alpha_on_validation(runs):
    record = runs["auto"].result.extra["wise_ft"]
    assert record["applied"] and record["chosen_by"] == "validation"
    assert [g["alpha"] for g in record["grid"]] == list(ALPHA_GRID)
    best = max(record["grid"], key=lambda g: (g["score"], -g["loss"], g["alpha"]))
    assert record["alpha"] == best["alpha"]
    start, ft = runs["start"], runs["plain"].classifier.model.state_dict()
    clf = runs["plain"].classifier
    for g in record["grid"]:  # each recorded score is θ(α)'s on the validation split
        clf.model.load_state_dict(interpolate(start, ft, g["alpha"]), strict=False)
        logits, refs, _, _ = clf.outputs(runs["val"])
        assert selection_key(outputs_metrics(logits, refs))[0] == pytest.approx(g["score"])
    clf.model.load_state_dict(ft)
    assert_state_is(runs["auto"].classifier.model, interpolate(start, ft, record["alpha"]))
    assert runs["auto"].result.metrics["accuracy"] == pytest.approx(best["score"])


def test_runs_without_a_start_say_why(tiny_model_dir):
    recipe = TrainAllRecipe(tiny_model_dir("vit"), epochs=2, batch_size=16, wise_ft="auto")
    recipe.fit(noisy_colours(60, 12, fraction=0.0), progress=False)
    record = recipe.result.extra["wise_ft"]
    assert record["applied"] is False and "no start" in record["reason"]
