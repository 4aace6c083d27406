"""Ranking candidate models before training: `tl_hub.rank` and `tl-hub rank`."""

import json
import os
import subprocess
import sys

import pytest
import torch
from support.tiny import colour_dataset, save_tiny_model, write_image_folder

from tl_hub import ConfigError, Ranking, rank
from tl_hub.demo import base_model_path
from tl_hub.demo_data import digits_dataset
from tl_hub.ranking import ensemble, normalised_ranks

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_normalised_ranks_and_ensemble():
    assert normalised_ranks({"a": 3.0, "b": 1.0, "c": 2.0}) == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert normalised_ranks({"a": 1.0, "b": 1.0, "c": 0.0, "d": None}) == {"a": 0.75, "b": 0.75, "c": 0.0,
                                                                           "d": None}
    scores = {"a": {"x": 2.0, "y": 0.0}, "b": {"x": 1.0, "y": 5.0}, "c": {"x": 0.0, "y": None}}
    assert ensemble(scores, ("x", "y")) == {"a": 0.5, "b": 0.75, "c": 0.0}  # b: (0.5 + 1) / 2


def test_pretrained_glyph_model_outranks_its_random_copy_on_digits(tmp_path):
    random_copy = str(tmp_path / "random")
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(base_model_path())).save_pretrained(
        random_copy)
    AutoImageProcessor.from_pretrained(base_model_path()).save_pretrained(random_copy)
    train, _ = digits_dataset(per_class=8, seed=2)
    ranking = rank([random_copy, base_model_path()], train, feature_cache_dir=str(tmp_path / "cache"))
    assert ranking.best == base_model_path()
    for score in ("logme", "hscore", "knn", "probe", "ensemble"):
        assert ranking.order(score)[0] == base_model_path(), score
    # both keep their source head (52 letters): LEEP and NCE apply
    assert ranking.info[base_model_path()]["source_head"] and ranking.scores[random_copy]["leep"] is not None
    assert ranking.data["train"] + ranking.data["held_out"] == 80 and ranking.data["held_out"] == 20
    assert ranking.advice is not None and ranking.advice.model == base_model_path()
    assert ranking.make_recipe().name == ranking.advice.recipe
    assert set(ranking.seconds[base_model_path()]) >= {"encode", "logme", "hscore", "knn", "probe", "advice"}


def test_reranking_reads_the_feature_cache(tmp_path):
    train, _ = digits_dataset(per_class=4, seed=3)
    cache = str(tmp_path / "cache")
    rank([base_model_path()], train, feature_cache_dir=cache, recommend=False)
    files = sorted(os.listdir(cache))
    assert files and all(f.endswith(".npy") for f in files)
    mtimes = {f: os.path.getmtime(os.path.join(cache, f)) for f in files}
    again = rank([base_model_path()], train, feature_cache_dir=cache, recommend=False)
    assert sorted(os.listdir(cache)) == files
    assert {f: os.path.getmtime(os.path.join(cache, f)) for f in files} == mtimes  # read, not rewritten
    assert again.scores[base_model_path()]["knn"] is not None


def test_a_checkpoint_without_its_head_gets_no_source_scores(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    bare = str(tmp_path / "bare")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(bare)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(bare)
    with_head = save_tiny_model("vit", str(tmp_path / "with_head"))
    ranking = rank([bare, with_head], colour_dataset(60), feature_cache_dir=str(tmp_path / "c"), recommend=False)
    assert ranking.scores[bare]["leep"] is None and ranking.scores[bare]["nce"] is None
    assert not ranking.info[bare]["source_head"]
    assert ranking.scores[with_head]["leep"] is not None and ranking.info[with_head]["source_head"]
    assert ranking.scores[bare]["logme"] is not None


def test_a_failing_candidate_is_reported_and_the_others_ranked(tmp_path):
    missing = str(tmp_path / "no-such-model")
    not_images = str(tmp_path / "text-model")
    os.makedirs(not_images)
    with open(os.path.join(not_images, "config.json"), "w") as f:
        json.dump({"model_type": "bert"}, f)
    ranking = rank([missing, base_model_path(), not_images], colour_dataset(30), recommend=False,
                   feature_cache_dir=str(tmp_path / "c"))
    assert ranking.order() == [base_model_path()]
    assert set(ranking.failed) == {missing, not_images}
    assert "bert" in ranking.failed[not_images]
    assert "failed" in ranking.table() and "no-such-model" in ranking.table()
    with pytest.raises(Exception, match="no-such-model|Could not load"):
        rank([missing, base_model_path()], colour_dataset(30), on_error="raise")
    with pytest.raises(ConfigError, match="No candidate could be ranked"):
        rank([missing], colour_dataset(30))


@pytest.mark.parametrize("kwargs,match", [
    ({"models": []}, "at least one candidate"),
    ({"max_examples": 2}, "max_examples"),
    ({"max_per_class": 1}, "max_per_class"),
    ({"on_error": "ignore"}, "on_error"),
    ({"score": "accuracy"}, "Unknown score"),
], ids=["no models", "max_examples", "max_per_class", "on_error", "score"])
def test_bad_options_say_what_to_do(kwargs, match):
    models = kwargs.pop("models", [base_model_path()])
    with pytest.raises(ConfigError, match=match):
        rank(models, colour_dataset(30), **kwargs)


def test_sampling_limits(tmp_path):
    ds = colour_dataset(90)  # 30 per class
    ranking = rank([base_model_path()], ds, max_per_class=10, recommend=False, feature_cache_dir=str(tmp_path))
    assert ranking.data["train"] + ranking.data["held_out"] == 30
    ranking = rank([base_model_path()], ds, max_examples=45, recommend=False, feature_cache_dir=str(tmp_path))
    assert ranking.data["train"] + ranking.data["held_out"] == 45


def test_save_writes_json_and_png(tmp_path):
    ranking = rank([base_model_path()], colour_dataset(30), recommend=False, feature_cache_dir=str(tmp_path / "c"),
                   output_dir=str(tmp_path / "out"))
    saved = json.load(open(tmp_path / "out" / "ranking.json"))
    assert saved["order"] == [base_model_path()] and saved["default_score"] == "knn"
    with open(tmp_path / "out" / "ranking.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert isinstance(ranking, Ranking)


def test_advise_with_several_models_ranks_them_first(tmp_path):
    from tl_hub import advise  # several models: ranked first

    train, _ = digits_dataset(per_class=5, seed=1)
    vit = os.path.join(ROOT, "benchmarks", "assets", "glyph-vit")
    advice = advise([vit, base_model_path()], train, feature_cache_dir=str(tmp_path))
    assert advice.ranking["order"][0] == advice.model
    assert set(advice.ranking["order"]) == {vit, base_model_path()}
    assert advice.recipe == "feature-extraction"  # small + similar for the top one


@pytest.mark.slow
def test_cli_rank_end_to_end_on_two_tiny_models(tmp_path):
    a = save_tiny_model("vit", str(tmp_path / "vit"))
    b = save_tiny_model("convnext", str(tmp_path / "convnext"))
    folder = write_image_folder(tmp_path / "data", n=45)
    env = {**os.environ, "TL_HUB_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "tl_hub.cli", "rank", "--model", a, "--model", b,
                          "--model", str(tmp_path / "missing"), "--dataset", folder,
                          "--output-dir", str(tmp_path / "rank")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ensemble" in out.stdout and "default score: knn" in out.stdout and "recommendation:" in out.stdout and "failed" in out.stdout
    assert sum("missing" in line for line in (out.stdout + out.stderr).splitlines()) == 1  # listed once
    saved = json.load(open(tmp_path / "rank" / "ranking.json"))
    assert set(saved["order"]) == {a, b}
    assert os.path.getsize(tmp_path / "rank" / "ranking.png") > 1000
    bad = subprocess.run([sys.executable, "-m", "tl_hub.cli", "rank", "--model", a, "--dataset", folder,
                          "--max-per-class", "1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "`--max-per-class`" in bad.stderr


def _ranking(scores, recipe="feature-extraction", case="small+similar"):
    from types import SimpleNamespace

    advice = SimpleNamespace(recipe=recipe, case=case, reason="why", to_dict=lambda: {})
    return Ranking(scores=scores, default_score="logme", seconds={m: {"encode": 1.0} for m in scores},
                   info={m: {"feature_dim": 8} for m in scores}, advice=advice)


def test_negative_scores_draw_the_better_candidate_as_the_longer_bar(tmp_path, monkeypatch):
    """LogME, LEEP and NCE are often negative: under "higher is better", the better bar must be the longer one."""
    import tl_hub.plots
    from tl_hub.ranking import bar_base, plot_ranking

    assert bar_base([0.8, 0.5]) == 0.0 and bar_base([-0.9, -1.5]) < -1.5
    figures = []
    monkeypatch.setattr(tl_hub.plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    ranking = _ranking({"good": {"logme": -0.9, "knn": 0.8}, "bad": {"logme": -1.5, "knn": 0.5}})
    plot_ranking(ranking, str(tmp_path / "r.png"))
    for ax in figures[0].axes:
        if not ax.patches:
            continue
        bars = {t.get_text(): p for t, p in zip(ax.get_yticklabels(), ax.patches)}
        assert bars["good"].get_width() > bars["bad"].get_width() > 0, ax.get_title()
        assert bars["good"].get_x() + bars["good"].get_width() == pytest.approx(
            {"logme": -0.9, "knn": 0.8}[ax.get_title().split(" ")[0]])  # the bar ends at the score


def test_a_scratch_recommendation_does_not_say_start_from():
    ranking = _ranking({"/zoo/glyph-vit": {"logme": 0.1}}, recipe="scratch", case="small+different")
    text = ranking.table().splitlines()[-1]
    assert text.startswith("recommendation: train from scratch (case small+different: why)")
    assert "start from" not in text and "glyph-vit" in text
    assert _ranking({"/zoo/a": {"logme": 0.1}}).recommendation().startswith("start from /zoo/a with feature-extraction")
