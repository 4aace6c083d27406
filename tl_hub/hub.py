"""Share trained heads on the Hugging Face Hub, and load them back anywhere.

A model folder written by ``Recipe.save`` holds the full model.  `export_for_hub` turns it into what is worth
sharing: when training changed only part of the model (a new head, plus the encoder groups that fine-tuning
unfroze), just those tensors (``tl_hub_head.safetensors``) with a config that pins the base model and its commit;
when everything was trained, the standard transformers model, so ``pipeline("image-classification",
model=repo)`` works.  `push_to_hub` uploads the export in ONE commit (``create_repo(exist_ok=True)`` -> temp
folder -> ``upload_folder``).  `load` reassembles a classifier from a repo or a folder.

The token comes from the ``token`` argument, ``HF_TOKEN`` or the stored login (huggingface_hub's usual order);
tl-hub never prints, logs or writes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Optional

from .errors import ModelError, TlHubError, first_line
from .outputs import read_json, write_json

logger = logging.getLogger(__name__)

HEAD_FILE = "tl_hub_head.safetensors"
INFO_FILE = "tl_hub.json"
SHARED_FILES = ("preprocessor_config.json", "metrics.json", "history.json", "learning_curve.png")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _info(model_dir: str) -> dict:
    path = os.path.join(model_dir, INFO_FILE)
    if not os.path.exists(path):
        raise ModelError(f"'{model_dir}' has no {INFO_FILE}; pass a folder written by `tl-hub train` / Recipe.save.")
    return read_json(path)


def export_for_hub(model_dir: str, export_dir: str) -> dict:
    """Write the shareable form of ``model_dir`` into ``export_dir``; return the updated ``tl_hub.json``.

    - ``kind == "full"`` (every parameter trained): ``model.safetensors`` + ``config.json``, as transformers saves.
    - otherwise: ``tl_hub_head.safetensors`` with exactly the tensors training changed, and ``config.json`` for
      the labels; the base model is fetched at its pinned revision when loading.
    """
    from safetensors.torch import save_file

    info = _info(model_dir)
    trained = info.get("trained") or {"kind": "full", "state_keys": []}
    os.makedirs(export_dir, exist_ok=True)
    for name in SHARED_FILES + ("config.json",):
        if os.path.exists(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), os.path.join(export_dir, name))
    if trained["kind"] == "lora":
        for name in ADAPTER_FILES:
            shutil.copy2(os.path.join(model_dir, name), os.path.join(export_dir, name))
        info["export"] = {"format": "peft"}
    elif trained["kind"] == "full" or not info.get("pretrained", True):
        shutil.copy2(os.path.join(model_dir, "model.safetensors"), os.path.join(export_dir, "model.safetensors"))
        info["export"] = {"format": "transformers"}
    else:
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)
        state = model.state_dict()
        missing = [k for k in trained["state_keys"] if k not in state]
        if missing:
            raise ModelError(f"The model in '{model_dir}' lacks trained tensors {missing[:3]}; was it modified?")
        tensors = {k: state[k].detach().contiguous() for k in trained["state_keys"]}
        save_file(tensors, os.path.join(export_dir, HEAD_FILE), metadata={"format": "pt", "tl_hub": "head"})
        info["export"] = {"format": "tl-hub-head", "tensors": len(tensors),
                          "parameters": int(sum(t.numel() for t in tensors.values()))}
    write_json(os.path.join(export_dir, INFO_FILE), info)
    return info


def _resolve(repo_or_dir: str, revision: Optional[str], token=None, cache_dir: Optional[str] = None) -> str:
    if os.path.isdir(repo_or_dir):
        return repo_or_dir
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
    )

    if os.path.exists(repo_or_dir) or repo_or_dir.startswith((".", "/", "~")) or repo_or_dir.count("/") > 1:
        raise ModelError(f"'{repo_or_dir}' is not a folder written by tl-hub (Recipe.save / tl-hub train), nor a "
                         "Hub repo id like 'user/model'.")
    try:
        return snapshot_download(repo_or_dir, revision=revision, token=token, cache_dir=cache_dir)
    except HFValidationError:
        raise ModelError(f"'{repo_or_dir}' is not a folder written by tl-hub (Recipe.save / tl-hub train), nor a "
                         "valid Hub repo id like 'user/model'.") from None
    except RepositoryNotFoundError:
        raise ModelError(f"'{repo_or_dir}' is neither a local folder nor a model repository on the Hub (or it is "
                         "private: log in or set HF_TOKEN).") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelError(f"Could not download '{repo_or_dir}': {first_line(e)}") from None


def load(repo_or_dir: str, *, revision: Optional[str] = None, token=None, cache_dir: Optional[str] = None):
    """A ready `Classifier` from a trained model folder or a Hub repo (full model or head only).

    For a head-only export the base model is loaded at its pinned revision, the trained tensors are put in place,
    and their shapes and the labels are checked.
    """
    from .inference import Classifier

    folder = _resolve(repo_or_dir, revision, token, cache_dir)
    is_head = os.path.exists(os.path.join(folder, HEAD_FILE))
    is_adapter = os.path.exists(os.path.join(folder, "adapter_config.json"))
    if not (is_head or is_adapter):
        return Classifier.from_dir(folder)
    from safetensors.torch import load_file

    from .backbone import load_backbone, load_image_processor

    info = _info(folder)
    labels = info["labels"]
    backbone = load_backbone(info["base_model"], labels, revision=info.get("base_model_revision"),
                             cache_dir=cache_dir)
    processor = load_image_processor(folder) if os.path.exists(os.path.join(folder, "preprocessor_config.json")) \
        else backbone.processor
    if is_adapter:
        from peft import PeftModel

        # the base gets a new head of the right size first; the adapter carries the trained head (modules_to_save)
        model = PeftModel.from_pretrained(backbone.model, folder)
        return Classifier(model, processor, labels, info=info)
    model = backbone.model
    tensors = load_file(os.path.join(folder, HEAD_FILE))
    state = model.state_dict()
    for key, value in tensors.items():
        if key not in state:
            raise ModelError(f"The head in '{repo_or_dir}' has tensor '{key}', which base model "
                             f"'{info['base_model']}' does not have; is the base the right one?")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(f"Tensor '{key}' of the head in '{repo_or_dir}' has shape {tuple(value.shape)}, the base "
                             f"model expects {tuple(state[key].shape)}.")
    model.load_state_dict(tensors, strict=False)
    if [model.config.id2label[i] for i in range(len(labels))] != labels:
        raise ModelError(f"The labels of '{repo_or_dir}' do not match its head.")
    return Classifier(model, processor, labels, info=info)


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

An image classifier for {{ n_labels }} classes ({{ labels_preview }}), trained with
[tl-hub](https://pypi.org/project/tl-hub/) by transfer learning from
[{{ base_model }}](https://huggingface.co/{{ base_model }}){% if base_revision %} at revision `{{ base_revision }}`{% endif %}.

## Training

- Recipe: **{{ recipe }}** — {{ recipe_text }}
- Data: {{ data }}
- Settings: `{{ settings }}`
- Validation accuracy {{ accuracy }}, macro-F1 {{ f1 }}{% if test_accuracy %}; test accuracy {{ test_accuracy }}{% endif %}
{% if kept_epoch %}- Kept epoch: {{ kept_epoch }}
{% endif %}
![learning curve](learning_curve.png)

## How to use

```python
import tl_hub
classifier = tl_hub.load("{{ repo_id }}")
classifier.predict("image.jpg", top_k=3)
```
{% if peft %}
The repository is a standard PEFT adapter that carries the new head, so PEFT loads it on the base model given
the new head size:

```python
from peft import PeftModel
from transformers import AutoModelForImageClassification
labels = {{ labels }}
base = AutoModelForImageClassification.from_pretrained(
    "{{ base_model }}", id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    ignore_mismatched_sizes=True)
model = PeftModel.from_pretrained(base, "{{ repo_id }}")
```
{% elif full_model %}
The repository is a standard transformers model, so this works too:

```python
from transformers import pipeline
pipe = pipeline("image-classification", model="{{ repo_id }}")
```
{% else %}
The repository holds only what training changed ({{ export_text }}); `tl_hub.load` downloads the base model at
its pinned revision and puts these tensors in place.
{% endif %}
## Limitations

Trained on {{ data }}; expect lower accuracy on images unlike these. Check the metrics on your own data before
relying on it.
"""

RECIPE_TEXT = {
    "feature-extraction": "the pretrained encoder was frozen and a new head was trained on its features.",
    "fine-tune": "a new head was trained on the frozen encoder, then encoder groups were unfrozen with smaller "
                 "learning rates.",
    "scratch": "the architecture was trained from random initialisation.",
    "lora": "low-rank (LoRA) updates of the encoder's linear layers and a new head were trained; the pretrained "
            "weights stayed frozen.",
}


def _kept_epoch_text(info: dict) -> Optional[str]:
    kept = info.get("kept_epoch") or {}
    if not kept.get("epoch"):
        return None
    total = sum(p.get("epochs", 0) for p in info.get("periods", []))
    rule = "the best on validation" if kept.get("rule") == "best" else "the last"
    return f"{kept['epoch']} of {total} ({rule})"


def model_card(info: dict, repo_id: str, dataset_name: Optional[str] = None):
    """A `huggingface_hub.ModelCard` with base model, dataset, metrics (model-index eval results) and usage."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = info.get("metrics", {})
    val = metrics.get("validation", {})
    test = metrics.get("test") or {}
    dataset_name = dataset_name or info.get("dataset") or "custom"
    results = []
    for split, values in (("validation", val), ("test", test)):
        for name in ("accuracy", "f1"):
            if name in values:
                results.append(EvalResult(task_type="image-classification", dataset_type=dataset_name,
                                          dataset_name=dataset_name, dataset_split=split, metric_type=name,
                                          metric_value=round(float(values[name]), 4)))
    base = info.get("base_model", "")
    card_data = ModelCardData(
        base_model=base if base and not os.path.exists(base) else None, library_name="transformers",
        pipeline_tag="image-classification", tags=["tl-hub", "image-classification", "transfer-learning"],
        eval_results=results or None, model_name=repo_id.split("/")[-1],
    )
    export = info.get("export", {})
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, repo_id=repo_id, n_labels=len(info.get("labels", [])),
        labels_preview=", ".join(info.get("labels", [])[:8]) + (" ..." if len(info.get("labels", [])) > 8 else ""),
        base_model=base, base_revision=info.get("base_model_revision"), recipe=info.get("recipe"),
        recipe_text=RECIPE_TEXT.get(info.get("recipe"), ""), data=info.get("data", ""),
        settings={k: v for k, v in info.get("settings", {}).items() if v is not None},
        accuracy=f"{val.get('accuracy', float('nan')):.4f}", f1=f"{val.get('f1', float('nan')):.4f}",
        test_accuracy=f"{test['accuracy']:.4f}" if "accuracy" in test else None,
        full_model=export.get("format") == "transformers", peft=export.get("format") == "peft",
        labels=info.get("labels", []), kept_epoch=_kept_epoch_text(info),
        export_text=f"{export.get('tensors', 0)} tensors, {export.get('parameters', 0):,} parameters",
    )


def push_to_hub(model_dir: str, repo_id: str, *, private: Optional[bool] = None, token=None,
                commit_message: Optional[str] = None, overwrite_card: bool = False,
                dataset_name: Optional[str] = None) -> str:
    """Upload the shareable form of ``model_dir`` to ``repo_id`` in one commit; return the commit URL.

    An existing README.md in the repository is kept unless ``overwrite_card=True``.

    Raises:
        TlHubError: the upload failed (the message names the repo and what to do; ``model_dir`` is untouched).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="tl_hub_push_") as tmp:
        info = export_for_hub(model_dir, tmp)  # check the folder before contacting the Hub
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            metrics_path = os.path.join(model_dir, "metrics.json")
            info["metrics"] = read_json(metrics_path) if os.path.exists(metrics_path) else {}
            keep_card = not overwrite_card and api.file_exists(repo_id, "README.md")
            if keep_card:
                logger.warning("%s already has a README.md; keeping it (pass overwrite_card=True / --overwrite-card "
                               "to replace it).", repo_id)
            else:
                model_card(info, repo_id, dataset_name).save(os.path.join(tmp, "README.md"))
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=tmp,
                commit_message=commit_message or f"Upload {info.get('recipe', 'model')} trained with tl-hub",
            )
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            hint = ("check that you are logged in (`hf auth login` or HF_TOKEN) with write access"
                    if status in (401, 403) else "run the same push again; nothing was half-uploaded")
            raise TlHubError(f"Pushing '{model_dir}' to '{repo_id}' failed (HTTP {status}); your local folder is "
                             f"unchanged; {hint}.") from None
        except Exception as e:  # offline mode, connection refused, DNS ...
            raise TlHubError(f"Pushing '{model_dir}' to '{repo_id}' failed ({type(e).__name__}: {first_line(e)}); "
                             "your local folder is unchanged; check the network (and HF_HUB_OFFLINE / "
                             "HF_ENDPOINT), then run the same push again.") from None
    return str(getattr(commit, "commit_url", commit))


def push_space(space_id: str, model_repo: str, *, private: Optional[bool] = None, token=None) -> str:
    """Create or update a Gradio Space that serves ``model_repo`` with tl-hub's app, in one commit."""
    import re

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .space import SPACE_DIR

    if not os.path.exists(os.path.join(SPACE_DIR, "app.py")):
        raise TlHubError(f"The Space files are missing ({SPACE_DIR}); install tl-hub from its source tree.")
    api = HfApi(token=token)
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tl_hub_space_") as tmp:
            shutil.copytree(SPACE_DIR, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            app = open(os.path.join(tmp, "app.py"), encoding="utf-8").read()
            app = re.sub(r"^DEFAULT_MODEL_ID = .*$", f"DEFAULT_MODEL_ID = {model_repo!r}", app, count=1,
                         flags=re.MULTILINE)
            with open(os.path.join(tmp, "app.py"), "w", encoding="utf-8") as f:
                f.write(app)
            commit = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=tmp,
                                       commit_message=f"tl-hub Space for {model_repo}")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise TlHubError(f"Pushing the Space '{space_id}' failed (HTTP {status}); run the same command again "
                         "(check your token's write access for 401/403).") from None
    return str(getattr(commit, "commit_url", commit))
