"""The ``tl-hub`` command end to end, as a user runs it, and its answers to bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from support.tiny import COLOURS, write_image_folder

TRAIN_FAST = ["--epochs", "2", "--batch-size", "16", "--no-augment", "--no-progress", "--lr", "0.02"]


def tl_hub(*args, cwd=None):
    exe = shutil.which("tl-hub") or os.path.join(os.path.dirname(sys.executable), "tl-hub")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


def test_help():
    top = tl_hub("--help")
    assert top.returncode == 0 and "train" in top.stdout and "predict" in top.stdout
    train = tl_hub("train", "--help-all")
    assert train.returncode == 0
    for flag in ("--recipe", "--model", "--dataset", "--output-dir", "--head-epochs", "--backbone-lr-ratio",
                 "--layer-decay", "--unfreeze", "--bn-policy", "--overwrite"):
        assert flag in train.stdout


@pytest.mark.slow
def test_train_evaluate_predict_on_image_folder(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "images", n=60)
    out = tmp_path / "out"
    proc = tl_hub("train", "--recipe", "fine-tune", "--model", tiny_model_dir("vit"), "--dataset", data,
                  "--output-dir", out, "--head-epochs", "1", "--epochs", "3", *TRAIN_FAST[2:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation accuracy" in proc.stdout and str(out) in proc.stdout
    assert "(only 12 validation images: too few to trust)" in proc.stdout  # 60 images, 20% held out
    assert "Period 'head'" in proc.stderr and "Period 'fine-tune'" in proc.stderr  # frozen/trainable counts logged
    assert "trainable" in proc.stderr and "frozen" in proc.stderr
    info = json.load(open(out / "tl_hub.json"))
    assert info["recipe"] == "fine-tune" and info["labels"] == sorted(COLOURS)

    ev = tl_hub("evaluate", out, "--dataset", data)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert metrics["accuracy"] > 0.6 and set(metrics) >= {"accuracy", "f1", "loss", "per_class", "confusion_matrix"}
    assert list(metrics["per_class"]) == sorted(COLOURS)  # by label name, in label order
    matrix = metrics["confusion_matrix"]
    assert sum(map(sum, matrix)) == sum(m["support"] for m in metrics["per_class"].values())
    assert sum(matrix[i][i] for i in range(3)) / sum(map(sum, matrix)) == pytest.approx(metrics["accuracy"])
    table = ev.stdout.splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert all(any(line.startswith(c) for line in table) for c in COLOURS)
    report = tmp_path / "report"
    ev = tl_hub("evaluate", out, "--dataset", data, "--output-dir", report)
    assert ev.returncode == 0, ev.stderr
    assert json.load(open(report / "metrics.json"))["confusion_matrix"] == matrix
    assert open(report / "confusion_matrix.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(report / "errors.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"  # (a notice when there is none)

    images = [os.path.join(data, c, sorted(os.listdir(os.path.join(data, c)))[0]) for c in sorted(COLOURS)]
    pr = tl_hub("predict", out, *images, "--top-k", "2", "--json")
    assert pr.returncode == 0, pr.stderr
    rows = [json.loads(l) for l in pr.stdout.strip().splitlines()]
    assert [r["image"] for r in rows] == images
    assert all(len(r["predictions"]) == 2 and r["predictions"][0]["score"] >= r["predictions"][1]["score"]
               for r in rows)


@pytest.mark.slow
def test_recipe_script_runs_with_python(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "images", n=30)
    script = os.path.join(os.path.dirname(__file__), "..", "recipes", "feature_extraction.py")
    proc = subprocess.run([sys.executable, script, "--model", tiny_model_dir("resnet"), "--dataset", data,
                           "--output-dir", tmp_path / "out", *TRAIN_FAST], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(tmp_path / "out" / "tl_hub.json"))["recipe"] == "feature-extraction"
    bad = subprocess.run([sys.executable, script, "--model", tiny_model_dir("resnet"), "--dataset", data,
                          "--output-dir", tmp_path / "out2", "--head-epochs", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--head-epochs" in bad.stderr  # not a flag of this recipe


def test_unknown_model(tmp_path, image_folder):
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", "no-such-org/no-such-model",
                  "--dataset", image_folder, "--output-dir", tmp_path / "out", *TRAIN_FAST)
    assert_one_line_error(proc, "no-such-org/no-such-model", "Check the name")
    assert not (tmp_path / "out").exists()


def test_folder_without_images(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "notes.txt").write_text("no images here")
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset", empty,
                  "--output-dir", tmp_path / "out", *TRAIN_FAST)
    assert_one_line_error(proc, "contains no images", "<class name>")
    assert not (tmp_path / "out").exists()


def test_missing_label_column(tiny_model_dir, tmp_path, image_folder):
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset",
                  image_folder, "--output-dir", tmp_path / "out", "--label-column", "species", *TRAIN_FAST)
    assert_one_line_error(proc, "'species' does not exist", "--label-column")


def test_one_class(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "one", n=10, classes=["only"])
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset", data,
                  "--output-dir", tmp_path / "out", *TRAIN_FAST)
    assert_one_line_error(proc, "at least two")


@pytest.mark.slow
def test_corrupt_images_are_skipped_with_a_count(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "images", n=30)
    with open(os.path.join(data, "red", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nthis is not an image")
    good = os.path.join(data, "green", sorted(os.listdir(os.path.join(data, "green")))[0])
    with open(good, "rb") as f:
        head = f.read(60)
    with open(os.path.join(data, "green", "truncated.png"), "wb") as f:
        f.write(head)
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset", data,
                  "--output-dir", tmp_path / "out", *TRAIN_FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Skipped 2 of 32 training images" in proc.stderr
    assert json.load(open(tmp_path / "out" / "tl_hub.json"))["skipped_images"] == 2


@pytest.mark.slow
def test_existing_output_dir_is_refused_and_kept(tiny_model_dir, tmp_path, image_folder):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.txt").write_text("earlier work")
    args = ["train", "--recipe", "feature-extraction", "--model", tiny_model_dir("vit"), "--dataset", image_folder,
            "--output-dir", out, *TRAIN_FAST]
    proc = tl_hub(*args)
    assert_one_line_error(proc, "exists and is not empty", "--overwrite")
    assert os.listdir(out) == ["results.txt"] and (out / "results.txt").read_text() == "earlier work"
    proc = tl_hub(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.safetensors" in os.listdir(out) and "results.txt" not in os.listdir(out)


def test_bad_setting_value(tiny_model_dir, tmp_path, image_folder):
    proc = tl_hub("train", "--recipe", "fine-tune", "--model", tiny_model_dir("vit"), "--dataset", image_folder,
                  "--output-dir", tmp_path / "out", "--epochs", "2", "--head-epochs", "2")
    assert_one_line_error(proc, "`--head-epochs`", "FeatureExtractionRecipe")


@pytest.mark.slow
def test_predict_errors(tmp_path):
    proc = tl_hub("predict", tmp_path / "nothing", "x.png")
    assert_one_line_error(proc, "x.png")
    (tmp_path / "x.png").write_bytes(b"not an image")
    proc = tl_hub("predict", tmp_path / "nothing", tmp_path / "x.png")
    assert_one_line_error(proc, "not a folder written by tl-hub")


@pytest.mark.slow
def test_logs_default_verbose_and_quiet(tiny_model_dir, tmp_path):
    """Default: one line per period, epoch and checkpoint, no library chatter; -v: everything; -q: errors only."""
    data = write_image_folder(tmp_path / "images", n=30)
    runs = {}
    for name, flags in (("default", []), ("verbose", ["-v"]), ("quiet", ["-q"])):
        proc = tl_hub(*flags, "train", "--recipe", "fine-tune", "--model", tiny_model_dir("vit"), "--dataset", data,
                      "--output-dir", tmp_path / name, "--head-epochs", "1", *TRAIN_FAST)
        assert proc.returncode == 0, proc.stderr
        runs[name] = proc
    default = runs["default"].stderr
    assert "epoch 1 [head]" in default and "epoch 2 [fine-tune]" in default and "Period 'fine-tune'" in default
    assert default.count("Saved checkpoint") == 2 and "Saved the model" in default
    for chatter in ("[RANK 0]", "Loading weights", "Computed training features", "Data: 3 classes", "torchvision"):
        assert chatter not in default, chatter
    verbose = runs["verbose"].stderr
    assert "[RANK 0]" in verbose and "Data: 3 classes" in verbose and "epoch 2 [fine-tune]" in verbose
    quiet = runs["quiet"]
    assert "epoch" not in quiet.stderr and "Saved checkpoint" not in quiet.stderr
    assert "validation accuracy" in quiet.stdout  # results are printed, not logged


def _exit_and_stderr(capsys, *argv):
    from tl_hub.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv, expected", [
    (["train", "--recipe", "fine-tunning"], "invalid choice 'fine-tunning'; did you mean fine-tune?"),
    (["trian"], "invalid choice 'trian'; did you mean train?"),
    (["train", "--recipe", "fine-tune", "--model", "m", "--dataset", "d", "--output-dir", "o", "--lr-rate", "3"],
     "unrecognized arguments: --lr-rate 3; did you mean --lr? (see `tl-hub train --help`)"),
    (["train", "--recipe", "fine-tune", "--model", "m", "--dataset", "d", "--output-dir", "o", "--scheduler", "cosin"],
     "`--scheduler` should be one of cosine, linear, constant; got 'cosin' (did you mean cosine?)."),
    (["train", "--recipe", "fine-tune", "--model", "m", "--dataset", "d", "--output-dir", "o", "--batch-size", "0"],
     "`--batch-size` should be positive"),
], ids=["recipe-typo", "command-typo", "unknown-flag", "setting-choice", "setting-value"])
def test_cli_mistakes_are_one_line_naming_the_flag(capsys, argv, expected):
    code, lines = _exit_and_stderr(capsys, *argv)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]


def test_train_help_is_short_true_and_shows_defaults():
    short, full = tl_hub("train", "--help").stdout, tl_hub("train", "--help-all").stdout  # the built-in recipes only
    assert len(short.splitlines()) <= 90 < len(full.splitlines())
    assert "--help-all" in short and "--head-epochs" not in short and "--head-epochs" in full
    assert "Global training batch size" in short and "(default: 32)" in short
    assert "resolve_epochs" not in full and "horizontal flip on training" not in full
    assert "flips only with hflip" in short
    head_epochs = " ".join(full.split("\n  --head-epochs HEAD_EPOCHS")[1].split("\n  --")[0].split())
    assert "(default: fine-tune: automatic; train-all: 0)" in head_epochs.replace("- ", "-")  # per recipe


@pytest.mark.slow
def test_a_one_solve_run_writes_no_checkpoint_folder_and_q_works_after_the_command(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "images", n=30)
    proc = tl_hub("train", "--recipe", "feature-extraction", "--model", tiny_model_dir("resnet"), "--dataset", data,
                  "--output-dir", tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out-checkpoints")  # one solve: nothing to resume
    assert proc.stderr.strip() == "" and proc.stdout.startswith("validation accuracy")  # -q: results only


@pytest.mark.slow
def test_a_python_run_shows_its_epochs_and_no_download_bars_for_a_local_folder(tiny_model_dir, tmp_path):
    data = write_image_folder(tmp_path / "images", n=30)
    code = (f"from tl_hub import FineTuneRecipe\n"
            f"FineTuneRecipe({tiny_model_dir('resnet')!r}, epochs=2, head_epochs=1, batch_size=16).fit({data!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tune: Period 'head'" in proc.stderr and "fine-tune: epoch 2 [fine-tune]" in proc.stderr
    assert "Downloading data" not in proc.stderr and "Generating train split" not in proc.stderr
