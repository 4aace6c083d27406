"""Export to ONNX (`tl_hub.onnx_export`) and predicting through ONNX Runtime (`tl_hub.onnx_runtime`): parity with
PyTorch on realistically deep tiny models of six architectures, a LoRA model merged, int8 with its agreement and
accuracy change, the loaded export's predict / evaluate, the CLI, and the bad inputs."""

import json
import os

import pytest
import torch
from support import arch_zoo
from support.tiny import colour_dataset

import tl_hub
from tl_hub import ConfigError, ExportError, ModelError, OutputError
from tl_hub.filenames import ONNX_FILE, PARITY_FILE

FAST = dict(batch_size=4, eval_batch_size=8, seed=0, feature_cache="memory", checkpoint_dir=None)
ARCHITECTURES = ["vit", "convnext", "resnet", "efficientnet", "swin", "dinov2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(arch, recipe)`` -> a trained model folder on the tiny, realistically deep ``arch`` (cached)."""
    root, cache = tmp_path_factory.mktemp("export"), {}

    def make(arch: str, recipe: str = "feature-extraction") -> str:
        if (arch, recipe) not in cache:
            base = arch_zoo.save_tiny(arch, str(root / f"base-{arch}"))
            settings = dict(FAST, epochs=1) if recipe != "fine-tune" else dict(FAST, epochs=2, head_epochs=1)
            model = tl_hub.get_recipe(recipe)(base, **settings)
            model.fit(colour_dataset(24), progress=False)
            cache[arch, recipe] = str(root / f"{arch}-{recipe}")
            model.save(cache[arch, recipe])
        return cache[arch, recipe]

    return make


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_load_predict_equals_pytorch(trained, arch, tmp_path):
    folder = trained(arch)
    result = tl_hub.export(folder, output_dir=str(tmp_path / "onnx"))
    assert {ONNX_FILE, PARITY_FILE, "config.json", "preprocessor_config.json", "tl_hub.json"} <= set(result.files)
    assert result.parity["fp32"]["max_abs_diff"] <= 1e-4 and result.size_bytes == result.files[ONNX_FILE]
    images = colour_dataset(7, seed=5)["image"]  # 7: a batch size other than the exported one
    torch_model, onnx_model = tl_hub.load(folder), tl_hub.load(result.output_dir)
    assert type(onnx_model.model).__name__ == "OnnxModel"
    with torch.inference_mode():
        expected = torch_model.model(**tl_hub.data.preprocess(torch_model.processor, images)).logits
        got = onnx_model.model(**tl_hub.data.preprocess(onnx_model.processor, images)).logits
    assert (got - expected).abs().max() <= 1e-4
    assert torch.allclose(onnx_model.predict_proba(images), torch_model.predict_proba(images), atol=1e-5)
    assert [p[0]["label"] for p in onnx_model.predict(images)] == [p[0]["label"] for p in torch_model.predict(images)]
    assert onnx_model.labels == torch_model.labels
    # the record says how it was exported, and the parity file holds the same figures
    record = json.loads((tmp_path / "onnx" / "tl_hub.json").read_text())
    assert record["onnx"]["fp32"] == json.loads((tmp_path / "onnx" / PARITY_FILE).read_text())["fp32"]
    assert record["recipe"] == "feature-extraction" and record["calibration"] == torch_model.info["calibration"]


def test_evaluate_and_tta_through_onnx_runtime_match_pytorch(trained, tmp_path):
    folder = trained("vit", "fine-tune")
    out = tl_hub.export(folder, output_dir=str(tmp_path / "onnx")).output_dir
    data = colour_dataset(15, seed=11)
    here, there = tl_hub.load(folder).evaluate(data), tl_hub.load(out).evaluate(data)
    assert there["accuracy"] == here["accuracy"] and there["loss"] == pytest.approx(here["loss"], abs=1e-5)
    assert there["ece"] == pytest.approx(here["ece"], abs=1e-5) and "calibration" in there
    images = data["image"][:4]
    assert torch.allclose(tl_hub.load(out).predict_proba(images, tta=3),
                          tl_hub.load(folder).predict_proba(images, tta=3), atol=1e-5)


def test_a_lora_model_exports_merged(tmp_path):
    base = arch_zoo.save_tiny("vit", str(tmp_path / "base"))
    recipe = tl_hub.LoRARecipe(base, epochs=1, **FAST)
    recipe.fit(colour_dataset(24), progress=False)
    recipe.save(str(tmp_path / "lora"))
    result = tl_hub.export(str(tmp_path / "lora"), output_dir=str(tmp_path / "onnx"))
    assert result.parity["fp32"]["max_abs_diff"] <= 1e-4
    images = colour_dataset(5, seed=2)["image"]
    assert torch.allclose(tl_hub.load(result.output_dir).predict_proba(images),
                          tl_hub.load(str(tmp_path / "lora")).predict_proba(images), atol=1e-5)
    assert not any(name.startswith("adapter") for name in result.files)


def test_int8_reports_its_agreement_and_accuracy_change(trained, tmp_path):
    folder = trained("convnext")
    data = colour_dataset(40, seed=1).train_test_split(test_size=0.5, seed=0)
    result = tl_hub.export(folder, output_dir=str(tmp_path / "int8"), quantize="int8", dataset=data)
    q = result.parity["int8"]
    assert q["split"] == "test" and q["images"] == 20 and 0.0 <= q["top1_agreement"] <= 1.0
    assert q["accuracy_change_points"] == pytest.approx(100 * (q["accuracy_int8"] - q["accuracy_fp32"]))
    assert result.parity["fp32_bytes"] > result.size_bytes  # int8 weights are smaller
    loaded = tl_hub.load(result.output_dir)
    metrics = loaded.evaluate(data, split="test")
    assert metrics["accuracy"] == pytest.approx(q["accuracy_int8"])  # the figure is the saved model's
    # where the damage falls: each class's accuracy, the same figures as the evaluation's per-class recall
    assert set(q["per_class"]) <= set(loaded.labels) and sum(c["images"] for c in q["per_class"].values()) == 20
    for label, c in q["per_class"].items():
        assert c["accuracy_int8"] == pytest.approx(metrics["per_class"][label]["recall"])


def test_int8_leaves_the_first_quarter_and_the_depthwise_convolutions_in_float():
    from onnx import helper

    from tl_hub.onnx_export import float_operators

    def conv(name, group=1):
        return helper.make_node("Conv", [f"{name}_in", f"{name}_w"], [f"{name}_out"], name=name, group=group)

    nodes = [conv("stem"), conv("expand"), helper.make_node("Relu", ["x"], ["y"], name="relu"), conv("project"),
             conv("depthwise", group=32), conv("c4"), conv("c5"), conv("grouped", group=2),
             helper.make_node("MatMul", ["a", "b"], ["c"], name="head")]
    # 8 candidates (the Relu is not one): the first 2 stay float, and the grouped ones wherever they are
    assert float_operators(helper.make_graph(nodes, "g", [], [])) == ["depthwise", "expand", "grouped", "stem"]
    assert float_operators(helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")], "g", [],
                                             [])) == []  # a quarter of one rounds to none


def test_per_class_change_says_where_int8_loses():
    from tl_hub.onnx_export import per_class_change

    refs = torch.tensor([0, 0, 1, 1])
    fp32 = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    int8 = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])  # one image of "a" now wrong
    change = per_class_change(fp32, int8, refs, ["a", "b", "c"])
    assert change == {"a": {"images": 2, "accuracy_fp32": 1.0, "accuracy_int8": 0.5},
                      "b": {"images": 2, "accuracy_fp32": 1.0, "accuracy_int8": 1.0}}  # "c" has no images
    multi = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # multi-label: each label's yes/no over every image
    change = per_class_change(torch.tensor([[3.0, -3.0], [3.0, 3.0]]), torch.tensor([[3.0, 3.0], [3.0, 3.0]]),
                              multi, ["x", "y"])
    assert change["x"]["accuracy_int8"] == 1.0 and change["y"] == {"images": 2, "accuracy_fp32": 1.0,
                                                                    "accuracy_int8": 0.5}


def test_the_export_leaves_the_environment_as_it_was(trained, tmp_path, monkeypatch):
    from tl_hub.onnx_export import TORCH_CHECKS

    monkeypatch.delenv(TORCH_CHECKS, raising=False)
    tl_hub.export(trained("vit"), output_dir=str(tmp_path / "a"))
    assert TORCH_CHECKS not in os.environ  # transformers' checks are off only while the exporter traces
    monkeypatch.setenv(TORCH_CHECKS, "0")
    tl_hub.export(trained("vit"), output_dir=str(tmp_path / "b"))
    assert os.environ[TORCH_CHECKS] == "0"


def test_the_cli_exports_and_predicts(trained, tmp_path, capsys):
    from tl_hub.cli import main

    folder, out = trained("resnet"), str(tmp_path / "onnx")
    assert main(["-q", "export", folder, "--output-dir", out]) == 0
    printed = capsys.readouterr().out
    assert "parity (fp32): largest logit difference to PyTorch" in printed and out in printed
    image = str(tmp_path / "image.png")
    colour_dataset(1, seed=4)["image"][0].save(image)
    assert main(["-q", "predict", out, image, "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["predictions"][0]["label"] == tl_hub.load(folder).predict(image)[0]["label"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_an_unknown_format_or_quantization_is_refused(trained, tmp_path, capsys):
    from tl_hub.cli import main

    folder = trained("vit")
    with pytest.raises(ConfigError, match="Unknown export format 'tflite'; tl-hub exports onnx"):
        tl_hub.export(folder, "tflite", output_dir=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="Unknown quantization 'int4'"):
        tl_hub.export(folder, output_dir=str(tmp_path / "a"), quantize="int4")
    with pytest.raises(ConfigError, match="pass the data the model was trained on"):
        tl_hub.export(folder, output_dir=str(tmp_path / "a"), quantize="int8")
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit) as exit:
        main(["export", folder, "--output-dir", str(tmp_path / "a"), "--format", "tflite"])
    assert exit.value.code == 2 and "invalid choice 'tflite'" in capsys.readouterr().err


def test_a_folder_that_is_not_a_trained_model_is_refused(tmp_path):
    base = arch_zoo.save_tiny("vit", str(tmp_path / "base"))  # a model, but not one tl-hub trained
    with pytest.raises(ModelError, match="has no tl_hub.json"):
        tl_hub.export(base, output_dir=str(tmp_path / "onnx"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError):
        tl_hub.export(str(tmp_path / "empty"), output_dir=str(tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists()


def test_an_existing_output_folder_is_kept(trained, tmp_path):
    folder, out = trained("vit"), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(OutputError, match="exists and is not empty; pass overwrite=True"):
        tl_hub.export(folder, output_dir=str(out))
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    tl_hub.export(folder, output_dir=str(out), overwrite=True)
    assert not (out / "notes.txt").exists() and (out / ONNX_FILE).exists()


def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_is_written(trained, tmp_path, monkeypatch):
    import tl_hub.onnx_export as onnx_export

    measured = onnx_export.parity

    def off_by_a_lot(module, path, sample):  # an exporter that got the graph wrong
        return {**measured(module, path, sample), "max_abs_diff": 0.5}

    monkeypatch.setattr(onnx_export, "parity", off_by_a_lot)
    with pytest.raises(ExportError, match="differ from PyTorch's by up to 5.00e-01 .* nothing was written"):
        tl_hub.export(trained("vit"), output_dir=str(tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ConfigError, match="`tolerance` should be a number of at least 0"):
        tl_hub.export(trained("vit"), output_dir=str(tmp_path / "onnx"), tolerance=-1)


def test_an_export_is_not_exported_or_saved_again(trained, tmp_path):
    out = tl_hub.export(trained("vit"), output_dir=str(tmp_path / "onnx")).output_dir
    with pytest.raises(ModelError, match="already an ONNX export"):
        tl_hub.export(out, output_dir=str(tmp_path / "again"))
    with pytest.raises(ModelError, match="is an ONNX export"):
        tl_hub.TrainedModel.load(out).save(str(tmp_path / "saved"))


def test_the_exporter_error_names_the_operator():
    from tl_hub.onnx_export import operator_of

    error = RuntimeError("Unsupported: aten.upsample_bicubic2d.vec is not supported in opset 18")
    assert operator_of(error) == "aten.upsample_bicubic2d.vec"
    assert operator_of(ValueError("no name here")) is None


# ---------------------------------------------------------------------------------------------------------------------
# The Space and the Hub


def test_the_space_serves_an_exported_model_and_says_so(trained, tmp_path):
    from tl_hub.space import SpaceApp, build_app

    folder = trained("vit")
    out = tl_hub.export(folder, output_dir=str(tmp_path / "onnx")).output_dir
    demo = build_app(out)
    app = demo.tl_hub_app
    assert app.runtime == "ONNX Runtime (fp32)" and "**Runtime**: ONNX Runtime (fp32)" in app.describe(out)
    image = colour_dataset(1, seed=6)["image"][0]
    served, expected = app.predict(image), SpaceApp(tl_hub.load(folder), top_k=app.top_k).predict(image)
    assert list(served) == list(expected)
    assert list(served.values()) == pytest.approx(list(expected.values()), abs=1e-5)
    assert SpaceApp(tl_hub.load(folder)).runtime == "PyTorch"


@pytest.mark.slow
def test_a_push_with_onnx_uploads_the_export_and_the_space_serves_it(trained, tmp_path):
    from support.hub_server import LocalHub
    from test_hub_push import TOKEN, client_env, run_python, tl_hub_cli

    folder = trained("vit")
    with LocalHub(str(tmp_path / "hub-store"), token=TOKEN) as hub:
        proc = tl_hub_cli(["push", folder, "me/colours", "--onnx"], client_env(hub, tmp_path / "pusher"), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = set(hub.commits("me/colours")[-1].files)
        assert {"onnx/model.onnx", "onnx/parity.json", "onnx/config.json", "tl_hub_head.safetensors"} <= files
        image = str(tmp_path / "image.png")
        colour_dataset(1, seed=8)["image"][0].save(image)
        code = f'''
import json, tl_hub
from tl_hub.space import SpaceApp
from huggingface_hub import hf_hub_download
app = SpaceApp(tl_hub.load("me/colours", runtime="auto"))
card = open(hf_hub_download("me/colours", "README.md")).read()
print("RESULT:" + json.dumps([app.runtime, app.predict({image!r}), "onnx/model.onnx" in card]))
'''
        proc = run_python(code, client_env(hub, tmp_path / "space"), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runtime, served, card = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT:")][-1][7:])
    assert runtime == "ONNX Runtime (fp32)" and card  # no base model needed: the export is the whole model
    expected = tl_hub.load(folder).predict(image, top_k=len(served))
    assert list(served) == [p["label"] for p in expected]
    assert list(served.values()) == pytest.approx([p["score"] for p in expected], abs=1e-5)


def test_runtime_onnx_without_an_export_is_a_clear_error(trained):
    with pytest.raises(ModelError, match="has no ONNX export; write one with `tl-hub export`"):
        tl_hub.load(trained("vit"), runtime="onnx")
    with pytest.raises(ConfigError, match="Unknown runtime 'tensorrt'"):
        tl_hub.load(trained("vit"), runtime="tensorrt")
