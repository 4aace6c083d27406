"""Everything tl-hub promises for one model type, checked on a tiny realistically deep checkpoint (`arch_zoo`).

`check(model_type, folder)` raises AssertionError (or the library's error) at the first broken promise, and returns
what it measured.  The test over every mapped type (`tests/test_architectures.py`) and the table of
docs/guides/any-image-classifier.md (``python tests/support/arch_check.py --json
benchmarks/results/architectures.json``) share it.

The promises:

1. the split: every parameter is in exactly one group (or among the unused ones), the head is exactly the layers
   that produce the logits, every pretrained tensor (final norms included) is bit-identical after loading, and the
   groups run in order from the input to the output;
2. feature extraction and fine-tuning (``unfreeze=2``, ``layer_decay``) train, with augmentation on;
3. save -> ``tl_hub.load`` gives identical probabilities; so does a LoRA adapter where PEFT supports the layers;
4. top-2 fine-tuning on the cached frozen prefix trains as running the whole encoder does (or falls back to it);
5. `tl_hub.rank` scores it on the input of its head;
6. the feature-extraction model exports to ONNX (`tl_hub.export`) within the parity tolerance, and ``tl_hub.load`` of
   the export predicts the probabilities PyTorch does (or the row says why it cannot export).
"""

from __future__ import annotations

import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)  # `python tests/support/arch_check.py` imports its siblings as `support.*`

from support import arch_zoo  # noqa: E402
from support.tiny import colour_dataset  # noqa: E402
from tl_hub.onnx_export import ExportError  # noqa: E402
from tl_hub.onnx_runtime import OnnxModel  # noqa: E402

LABELS = ["red", "green", "blue"]
FAST = dict(batch_size=4, eval_batch_size=8, seed=0, feature_cache="memory", checkpoint_dir=None)

# model types tl-hub refuses, with the reason (they are not image classifiers with a replaceable head)
REFUSED = {
    "shieldgemma2": "a vision-language safety model: it needs a text policy prompt with the image and always answers "
                    "Yes/No, so it cannot get new labels",
}


def check_split(folder: str, model_type: str) -> dict:
    from tl_hub import load_backbone
    from tl_hub.param_groups import lora_targets
    from tl_hub.structure import trace

    backbone = load_backbone(folder, LABELS)
    model, parts = backbone.model, backbone.parts
    names = [n for n, _ in model.named_parameters()]
    head = parts.head_params(model)
    placed = head + parts.encoder_params() + list(parts.unused)
    assert sorted(placed) == sorted(names), "every parameter in exactly one group"
    for path in parts.head:
        assert model.get_submodule(path).weight.shape[0] == len(LABELS), f"head layer {path} makes the logits"
    reference, _ = arch_zoo.build_tiny(model_type)
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        if not any(key.startswith(h + ".") for h in parts.head):
            assert key in expected and torch.equal(value, expected[key]), f"pretrained tensor {key} changed"
    from tl_hub.structure import example_inputs

    tr = trace(model, example_inputs(model, backbone.processor))
    assert tr.num_logits == len(LABELS)
    assert set(parts.unused) == set(names) - tr.used, "unused = exactly the parameters that get no gradient"
    firsts = [min(tr.span(m)[0] for m in g.modules) for g in parts.groups]
    assert firsts == sorted(firsts), f"groups in the order they run: {[g.name for g in parts.groups]}"
    return {"blocks": len(parts.blocks), "head": list(parts.head), "unused": len(parts.unused),
            "lora_targets": len(lora_targets(model, parts))}


def check_training(folder: str, tmp: str, lora: bool) -> dict:
    import tl_hub

    data, images = colour_dataset(24), colour_dataset(6, seed=3)["image"]
    out = {}
    recipes = {
        "feature-extraction": tl_hub.FeatureExtractionRecipe(folder, epochs=1, **FAST),
        "fine-tune": tl_hub.FineTuneRecipe(folder, head_epochs=1, epochs=2, unfreeze=2, layer_decay=0.8,
                                           augment=True, head_solver="adamw", **FAST),
    }
    if lora:
        recipes["lora"] = tl_hub.LoRARecipe(folder, epochs=1, **FAST)
    for name, recipe in recipes.items():
        result = recipe.fit(data, progress=False)
        assert not set(recipe.result.trained["state_keys"]) & set(recipe.result.run.backbone.parts.unused), "an unused parameter trained"
        assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history), name
        saved = os.path.join(tmp, name)
        recipe.save(saved)
        mine = recipe.classifier.predict_proba(images)
        theirs = tl_hub.load(saved).predict_proba(images)
        assert torch.allclose(mine, theirs, atol=1e-5), f"{name}: save -> load changes the probabilities"
        out[name] = round(result.metrics["accuracy"], 3)
    return out


def check_prefix(folder: str) -> str:
    """Top-2 fine-tuning on the cached frozen prefix (`tl_hub.prefix`) trains as running the whole encoder does (to
    1e-5, relative to losses above 1); returns the cut, or "-" where the model falls back to the whole encoder (tl-hub checks the cut itself)."""
    import tl_hub

    data, val = colour_dataset(24), colour_dataset(9, seed=3)
    runs = [tl_hub.FineTuneRecipe(folder, head_epochs=0, epochs=2, unfreeze=2, augment=False, prefix_cache=cache,
                                  lr=1e-2, **FAST).fit(data, val, progress=False) for cache in (True, False)]
    cut = runs[0].extra["periods"][-1].get("prefix_cache")
    for cached, whole in zip(runs[0].history, runs[1].history, strict=True):
        for key in ("train_loss", "loss"):
            assert abs(cached[key] - whole[key]) <= 1e-5 * max(1.0, abs(whole[key])), \
                f"cached prefix at {cut}: {key} {cached} vs {whole}"  # float32 sums in another order
    return cut or "-"


def check_rank(folder: str) -> int:
    """`tl_hub.rank` scores the model on the input of its head (every score finite; LEEP and NCE from its own
    head where that is one module); returns the feature dimension."""
    import math

    import tl_hub

    ranking = tl_hub.rank([folder], colour_dataset(24), recommend=False, feature_cache="memory")
    assert not ranking.failed, ranking.failed
    scores, info = ranking.scores[folder], ranking.info[folder]
    for name in ("logme", "hscore", "knn", "probe"):
        assert scores[name] is not None and math.isfinite(scores[name]), f"{name}: {scores[name]}"
    if "," not in info["capture"]:
        assert info["source_head"] and math.isfinite(scores["leep"]), f"source head {info}, leep {scores['leep']}"
    return info["feature_dim"]


def check_export(saved: str, tmp: str) -> dict:
    """Export the trained model folder ``saved`` to ONNX; the export's parity figures (largest logit difference
    and largest logit on the sample batch), after checking that ``tl_hub.load`` of it predicts PyTorch's
    probabilities within the same tolerance.  `ExportError` when it cannot export."""
    import tl_hub

    result = tl_hub.export(saved, output_dir=os.path.join(tmp, "onnx"))
    images = colour_dataset(6, seed=3)["image"]
    exported = tl_hub.load(result.output_dir)
    assert isinstance(exported.model, OnnxModel), "tl_hub.load of an export runs ONNX Runtime"
    mine, theirs = tl_hub.load(saved).predict_proba(images), exported.predict_proba(images)
    fp32 = result.parity["fp32"]
    assert torch.allclose(mine, theirs, atol=fp32["tolerance"], rtol=0), "the export predicts other probabilities"
    return {"max_abs_diff": fp32["max_abs_diff"], "max_abs_logit": fp32["max_abs_logit"]}


def check(model_type: str, tmp: str) -> dict:
    """All promises for ``model_type``, in ``tmp``; returns what was measured."""
    start = time.perf_counter()
    folder = arch_zoo.save_tiny(model_type, os.path.join(tmp, "base"))
    split = check_split(folder, model_type)
    result = {"type": model_type, **split, **check_training(folder, tmp, lora=split["lora_targets"] > 0)}
    result["prefix_cut"] = check_prefix(folder)
    result["rank_feature_dim"] = check_rank(folder)
    try:
        result["onnx"] = check_export(os.path.join(tmp, "feature-extraction"), tmp)
    except ExportError as error:  # the table says why; the test fails on it
        result["onnx"] = f"cannot export: {error}"
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def without_dropout(folder: str) -> str:
    """Set every dropout / drop-path / drop-connect rate of the saved config to 0 (N processes then match one)."""
    import json

    path = os.path.join(folder, "config.json")
    config = json.load(open(path))

    def zero(d):
        for k, v in d.items():
            if isinstance(v, dict):
                zero(v)
            elif "drop" in k and isinstance(v, float):
                d[k] = 0.0
            elif "drop" in k and isinstance(v, list) and all(isinstance(x, float) for x in v):
                d[k] = [0.0] * len(v)

    zero(config)
    json.dump(config, open(path, "w"))
    return folder


def one_vs_two_processes(types, tmp: str, prefix: bool = False) -> dict:
    """Fine-tune each type in one process and in two (one launch each, gloo on CPU); return per type the world
    sizes, the epochs per period, the prefix cut and the largest difference of any per-epoch metric.  With
    ``prefix`` the top 2 blocks train on the cached frozen prefix (`tl_hub.prefix`)."""
    import json

    import datasets

    from support.launch import accelerate_launch, launch_env, run

    models = [f"{t}={without_dropout(arch_zoo.save_tiny(t, os.path.join(tmp, t)))}" for t in types]
    data = datasets.DatasetDict({"train": colour_dataset(24, seed=1), "validation": colour_dataset(16, seed=2)})
    data.save_to_disk(os.path.join(tmp, "data"))
    script = os.path.join(HERE, "scripts", "dist_arch.py")
    env = {"PYTHONPATH": os.pathsep.join([TESTS, *sys.path]), "TL_HUB_TEST_PREFIX": "1" if prefix else "0"}
    args = [os.path.join(tmp, "data")]
    run([sys.executable, script, *args, os.path.join(tmp, "one"), *models],
        {**launch_env(**env), "ACCELERATE_USE_CPU": "false"}, timeout=1800)
    run(accelerate_launch(script, *args, os.path.join(tmp, "two"), *models), launch_env(**env), timeout=1800)
    one = json.load(open(os.path.join(tmp, "one.rank0")))
    ranks = [json.load(open(os.path.join(tmp, f"two.rank{r}"))) for r in (0, 1)]
    result = {}
    for t in types:
        worst = max(abs(h2[k] - h1[k]) for rank in ranks for h1, h2 in zip(one[t]["history"], rank[t]["history"],
                                                                            strict=True)
                    for k in ("train_loss", "loss", "accuracy", "f1"))
        result[t] = {"world_sizes": [one[t]["world_size"]] + [r[t]["world_size"] for r in ranks],
                     "epochs": one[t]["epochs"], "unused": one[t]["unused"], "max_difference": worst,
                     "prefix_cuts": [one[t]["prefix_cut"]] + [r[t]["prefix_cut"] for r in ranks]}
    return result


if __name__ == "__main__":
    import argparse
    import json
    import platform
    import tempfile
    from datetime import datetime, timezone

    parser = argparse.ArgumentParser(description="Check every mapped model type; print the table.")
    parser.add_argument("--json", help="also write the rows, with the date and the machine, to this file")
    args = parser.parse_args()
    started = time.time()
    rows = []
    for model_type in arch_zoo.TYPES:
        if model_type in arch_zoo.SKIP:
            rows.append({"type": model_type, "error": f"skipped: {arch_zoo.SKIP[model_type]}"})
        elif model_type in REFUSED:
            rows.append({"type": model_type, "error": f"refused: {REFUSED[model_type]}"})
        else:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    rows.append(check(model_type, tmp))
                except Exception as e:  # the table reports it; the test fails on it
                    rows.append({"type": model_type, "error": f"FAILS: {type(e).__name__}: {str(e)[:120]}"})
        print(rows[-1], flush=True)
    passing = [r["type"] for r in rows if "error" not in r]
    with tempfile.TemporaryDirectory() as tmp:
        for model_type, ddp in one_vs_two_processes(passing, tmp).items():
            ok = ddp["world_sizes"] == [1, 2, 2] and ddp["max_difference"] <= 1e-4
            row = next(r for r in rows if r["type"] == model_type)
            if ok:
                row["ddp"] = ddp
            else:
                row.clear()
                row.update({"type": model_type, "error": f"FAILS under 2 processes: {ddp}"})
    import transformers

    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "minutes": round((time.time() - started) / 60, 1),
              "host": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__},
              "transformers": transformers.__version__, "rows": rows}
    sys.path.insert(0, os.path.join(os.path.dirname(TESTS), "benchmarks"))
    from tables import architectures  # the docs' table (benchmarks/tables.py)

    print(architectures(record))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, default=str)
        os.replace(tmp, args.json)
