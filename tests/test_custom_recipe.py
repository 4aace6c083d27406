"""The extension point: a recipe and an exporter registered outside the package (tests/support/custom_recipe.py) train,
save, push to the (local) Hub and load back through the public API alone."""

import json
import os
import sys

import pytest
import torch
from support.tiny import colour_dataset
from test_hub_push import client_env, hub, run_python  # noqa: F401  (hub is a fixture)

import tl_hub

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_custom_lp_ft_mlp_recipe_trains_saves_pushes_and_loads(hub, tiny_model_dir, tmp_path):  # noqa: F811
    from support import custom_recipe

    recipe = tl_hub.get_recipe("lp-ft-mlp")(tiny_model_dir("vit"), head_epochs=4, epochs=8, unfreeze=1, lr=1e-2,
                                            batch_size=16, augment=False, seed=0, feature_cache="memory")
    result = recipe.fit(colour_dataset(30), progress=False)
    assert isinstance(recipe.result.run.backbone.model.get_submodule("classifier"), custom_recipe.MLPHead)
    assert [p["name"] for p in result.extra["periods"]] == ["head", "fine-tune"]
    assert "solver" not in result.extra["periods"][0]  # an MLP is trained by gradient steps, not solved
    assert recipe.result.trained["kind"] == "mlp-head" and recipe.result.trained["groups"] == ["block.1", "norm"]
    assert result.metrics["accuracy"] > 0.9  # three colours: the MLP head learns them

    out = tmp_path / "out"
    recipe.save(str(out))
    assert custom_recipe.HEAD_FILE in os.listdir(out) and "model.safetensors" not in os.listdir(out)
    images = colour_dataset(6, seed=9)["image"]
    expected = recipe.classifier.predict_proba(images)
    assert torch.allclose(tl_hub.load(str(out)).predict_proba(images), expected, atol=1e-6)

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i, image in enumerate(images):
        image.save(images_dir / f"{i}.png")
    env = {**client_env(hub, tmp_path / "pusher"), "PYTHONPATH": os.pathsep.join([HERE, *sys.path])}
    pushed = run_python(f"import support.custom_recipe, tl_hub; tl_hub.push_to_hub({str(out)!r}, 'me/mlp')", env, tmp_path)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert custom_recipe.HEAD_FILE in hub.commits("me/mlp")[-1].files
    loaded = run_python(f'''
import json, os, support.custom_recipe, tl_hub
from PIL import Image
clf = tl_hub.load("me/mlp", base_model={tiny_model_dir("vit")!r})
assert type(clf.model.get_submodule("classifier")).__name__ == "MLPHead"
images = [Image.open(os.path.join({str(images_dir)!r}, f)) for f in sorted(os.listdir({str(images_dir)!r}))]
print("RESULT:" + json.dumps(clf.predict_proba(images).tolist()))
''', {**client_env(hub, tmp_path / "loader"), "PYTHONPATH": env["PYTHONPATH"]}, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    line = [l for l in loaded.stdout.splitlines() if l.startswith("RESULT:")][-1]
    assert torch.allclose(torch.tensor(json.loads(line[len("RESULT:"):])), expected, atol=1e-6)
