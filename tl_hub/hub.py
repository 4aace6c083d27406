"""The Hugging Face Hub: download model folders, upload them in one commit, and write their model cards.

This module only talks to the Hub; what a model folder holds is `tl_hub.model_folder`'s business.  The token comes
from the ``token`` argument, ``HF_TOKEN`` or the stored login (huggingface_hub's usual order); tl-hub never prints,
logs or writes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Optional

from .config import ModelSource
from .errors import ModelError, TlHubError, first_line
from .filenames import CARD_FILE
from .imagenet import BUILTIN_HOME, is_builtin

logger = logging.getLogger(__name__)


def download(source: ModelSource, token=None) -> str:
    """The local folder of ``source``: the folder itself, or a snapshot of the Hub repo at ``source.revision``."""
    name = source.location
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"'{name}' is not a folder written by tl-hub (Recipe.save / tl-hub train), nor a "
                         "Hub repo id like 'user/model'.")
    try:
        return snapshot_download(name, revision=source.revision, token=token, cache_dir=source.cache_dir)
    except HFValidationError:
        raise ModelError(f"'{name}' is not a folder written by tl-hub (Recipe.save / tl-hub train), nor a "
                         "valid Hub repo id like 'user/model'.") from None
    except RepositoryNotFoundError:
        raise ModelError(f"'{name}' is neither a local folder nor a model repository on the Hub (or it is "
                         "private: log in or set HF_TOKEN).") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelError(f"Could not download '{name}': {first_line(e)}") from None


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str) -> Iterator[None]:
    """Turn a failed Hub call into one `TlHubError` that names the repository and what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ("check that you are logged in (`hf auth login` or HF_TOKEN) with write access"
                if status in (401, 403) else "run the same push again; nothing was half-uploaded")
        raise TlHubError(f"Pushing {what} to '{repo_id}' failed (HTTP {status}); your local files are unchanged; "
                         f"{hint}.") from None
    except TlHubError:
        raise
    except Exception as e:  # offline mode, connection refused, DNS ...
        raise TlHubError(f"Pushing {what} to '{repo_id}' failed ({type(e).__name__}: {first_line(e)}); your local "
                         "files are unchanged; check the network (and HF_HUB_OFFLINE / HF_ENDPOINT), then run the "
                         "same push again.") from None


def upload_model(folder: str, repo_id: str, record: dict, *, what: str, private: Optional[bool] = None, token=None,
                 commit_message: Optional[str] = None, overwrite_card: bool = False,
                 dataset_name: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` with a model card made from ``record``, in one commit;
    return the commit URL.  An existing README.md in the repository is kept unless ``overwrite_card``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(f"'{what}'", repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if not overwrite_card and api.file_exists(repo_id, CARD_FILE):
            logger.warning("%s already has a README.md; keeping it (pass overwrite_card=True / --overwrite-card "
                           "to replace it).", repo_id)
            if os.path.exists(os.path.join(folder, CARD_FILE)):  # the saved folder's own card must not replace it
                os.remove(os.path.join(folder, CARD_FILE))
        else:
            model_card(record, repo_id, dataset_name).save(os.path.join(folder, CARD_FILE))
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder,
            commit_message=commit_message or f"Upload {record.get('recipe', 'model')} trained with tl-hub",
        )
    return str(getattr(commit, "commit_url", commit))


def upload_space(folder: str, space_id: str, *, commit_message: str, private: Optional[bool] = None,
                 token=None) -> str:
    """Create the Gradio Space ``space_id`` if needed and upload ``folder`` to it in one commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors("the Space", space_id):
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                                   commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

An image classifier for {{ n_labels }} classes ({{ labels_preview }}), trained with
[tl-hub](https://pypi.org/project/tl-hub/)
{%- if pretrained %} by transfer learning from {% else %} from random initialisation (no pretrained weights), with
the architecture of {% endif %}
{%- if base_kind == "local" %}a local model folder, {% endif %}
{%- if base_link %}[{{ base_name }}]({{ base_link }}){% else %}`{{ base_name }}`{% endif %}
{%- if base_revision and pretrained %} at revision `{{ base_revision }}`{% endif %}.

## Training

- Recipe: **{{ recipe }}** — {{ recipe_text }}
- Data: {{ data }}
- Settings: `{{ settings }}`
{% if multi_label %}- Multi-label: each image gets every label whose score reaches that label's threshold (chosen on
  validation to maximise its F1; saved with the model)
- Validation mAP {{ mAP }}, macro-F1 {{ f1 }}, micro-F1 {{ f1_micro }}
{%- if test_mAP %}; test mAP {{ test_mAP }}{% endif %}
{% else %}- Validation accuracy {{ accuracy }}, macro-F1 {{ f1 }}
{%- if balanced_accuracy %}, balanced accuracy {{ balanced_accuracy }}{% endif %}
{%- if test_accuracy %}; test accuracy {{ test_accuracy }}{% endif %}
{% endif %}{% if imbalance %}- Class imbalance {{ imbalance }}
{% endif %}{% if validation_warning %}- **Small validation split.** {{ validation_warning }}
{% endif %}{% if kept_epoch %}- Kept epoch: {{ kept_epoch }}
{% endif %}
![learning curve](learning_curve.png)
{% if per_class %}
### Per class (validation)

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{% for name, m in per_class.items() -%}
| {{ name }} | {{ "%.3f"|format(m.precision) }} | {{ "%.3f"|format(m.recall) }} | {{ "%.3f"|format(m.f1) }} \
| {{ m.support }} |
{% endfor %}
![confusion matrix](confusion_matrix.png)
{% endif %}{% if per_label %}
### Per label (validation)

| label | precision | recall | F1 | average precision | threshold | positives |
|---|---|---|---|---|---|---|
{% for name, m in per_label.items() -%}
| {{ name }} | {{ "%.3f"|format(m.precision) }} | {{ "%.3f"|format(m.recall) }} | {{ "%.3f"|format(m.f1) }} \
| {{ "%.3f"|format(m.average_precision) if m.average_precision is not none else "-" }} \
| {{ "%.3f"|format(m.threshold) }} | {{ m.support }} |
{% endfor %}
![per label](per_label.png)
{% endif %}{% if calibration %}
### Calibration

{{ calibration.text }}

| split | ECE without | ECE with | NLL without | NLL with |
|---|---|---|---|---|
{% for row in calibration.rows -%}
| {{ row.split }} | {{ "%.4f"|format(row.ece_before) }} | {{ "%.4f"|format(row.ece_after) }} \
| {{ "%.4f"|format(row.nll_before) }} | {{ "%.4f"|format(row.nll_after) }} |
{% endfor %}
{% if calibration.figure %}![reliability diagram](reliability.png)
{% endif %}{% endif %}{% if wise_ft %}- {{ wise_ft }}
{% endif %}{% if onnx %}- ONNX: {{ onnx }}
{% endif %}{% if errors_figure %}
The validation images the model got wrong with the most confidence:

![most confident mistakes](errors.png)
{% endif %}
## How to use

```python
import tl_hub
classifier = tl_hub.load("{{ repo_id }}")
classifier.predict("image.jpg"{% if not multi_label %}, top_k=3{% endif %})
```
{% if peft %}
The repository is a standard PEFT adapter that carries the new head, so PEFT loads it on the base model given
the new head size:

```python
from peft import PeftModel
from transformers import AutoModelForImageClassification
{% if base_is_builtin %}import tl_hub
{% endif %}labels = {{ labels }}
base = AutoModelForImageClassification.from_pretrained(
    {{ base_ref }}, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
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

def _figure(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.4f}"


def _calibration_card(info: dict, test: dict) -> Optional[dict]:
    """The card's calibration section: the temperature, and ECE and NLL without and with it, per split."""
    record = info.get("calibration") or {}
    if not record.get("folded_into_head"):
        return None
    t = record["temperature"]
    t_text = (f"one temperature per label ({min(t):.2f} to {max(t):.2f})" if isinstance(t, list)
              else f"a temperature of {t:.3f}")
    rows = [{"split": "validation (fitted on)", **record["validation"]}]
    if test.get("calibration"):
        rows.append({"split": "test", **{k: test["calibration"][k]
                                         for k in ("ece_before", "ece_after", "nll_before", "nll_after")}})
    text = (f"The scores are calibrated: {t_text}, fitted on {record.get('fitted_on_images')} validation images, "
            "divides the logits (it is folded into the head's weights, so every way of loading the model applies "
            f"it). ECE uses {record.get('ece_bins', 15)} bins; lower is better for both figures.")
    return {"text": text, "rows": rows, "figure": "reliability.png" in info.get("figures", [])}


def _wise_ft_text(info: dict) -> Optional[str]:
    """The card's line on WiSE-FT, when it ran."""
    wise = info.get("wise_ft") or {}
    if not wise.get("applied"):
        return None
    how = "chosen on validation" if wise.get("chosen_by") == "validation" else "as set"
    return (f"Weights: WiSE-FT, {1 - wise['alpha']:.2f} x the start (pretrained encoder, head of period 1) + "
            f"{wise['alpha']:.2f} x the fine-tuned weights (alpha {how})")


def _onnx_text(info: dict) -> Optional[str]:
    """The card's line on the ONNX export a push included."""
    onnx = info.get("onnx") or {}
    if "folder" not in onnx:
        return None
    return (f"`{onnx['folder']}/model.onnx` ({onnx['bytes'] / 1e6:.1f} MB, fp32) is the whole model exported with "
            f"tl-hub export; its logits differ from PyTorch's by at most {onnx['fp32']['max_abs_diff']:.1e} on "
            f"{onnx['fp32']['images']} images. `tl_hub.load(repo, runtime=\"onnx\")` runs it with ONNX Runtime.")


def _imbalance_text(info: dict) -> Optional[str]:
    """``"10.0:1 (largest class over smallest); classes weighted in the loss"``, or None for balanced data."""
    weighting = info.get("class_weighting") or {}
    ratio = weighting.get("imbalance")
    if not ratio or ratio < 1.5:
        return None
    what = "label" if info.get("multi_label") else "class"
    return (f"{ratio:.1f}:1 (largest {what} over smallest); "
            + ("classes weighted in the loss (balanced)" if weighting.get("applied") else "no class weighting"))


def _kept_epoch_text(info: dict) -> Optional[str]:
    kept = info.get("kept_epoch") or {}
    if not kept.get("epoch"):
        return None
    total = sum(p.get("epochs", 0) for p in info.get("periods", []))
    rule = "the best on validation" if kept.get("rule") == "best" else "the last"
    if kept.get("smoothed"):
        rule += ", judged on the mean of it and the epoch before: the validation split is small"
    return f"{kept['epoch']} of {total} ({rule})"


def base_of(info: dict) -> tuple[str, str, Optional[str]]:
    """Where a trained model's base came from, as ``(kind, name to show, link)``: ``builtin`` (a tl-hub name),
    ``hub`` (a Hub id, linked) or ``local`` (a folder: only its name is shown, never the path on the machine that
    trained it).  Records without ``base_model_source`` count as Hub models when they pinned a commit."""
    base = info.get("base_model") or ""
    kind = info.get("base_model_source") or ("builtin" if is_builtin(base) else
                                             "hub" if info.get("base_model_revision") else "local")
    if kind == "builtin":
        return kind, base, BUILTIN_HOME
    if kind == "hub":
        return kind, base, f"https://huggingface.co/{base}"
    return "local", os.path.basename(os.path.normpath(base)) if base else "unknown", None


def base_source(source_id: str, location: str) -> str:
    """``builtin``, ``local`` or ``hub``: the kind of base a run trains from (recorded as ``base_model_source``)."""
    if is_builtin(source_id):
        return "builtin"
    return "local" if os.path.isdir(location) else "hub"


def model_card(info: dict, repo_id: str, dataset_name: Optional[str] = None):
    """A `huggingface_hub.ModelCard` with base model, dataset, metrics (model-index eval results) and usage."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = info.get("metrics", {})
    val = metrics.get("validation", {})
    test = metrics.get("test") or {}
    dataset_name = dataset_name or info.get("dataset") or "custom"
    results = []
    for split, values in (("validation", val), ("test", test)):
        for name in ("mAP", "f1", "f1_micro") if info.get("multi_label") else ("accuracy", "f1", "balanced_accuracy"):
            if name in values:
                results.append(EvalResult(task_type="image-classification", dataset_type=dataset_name,
                                          dataset_name=dataset_name, dataset_split=split, metric_type=name,
                                          metric_value=round(float(values[name]), 4)))
    base = info.get("base_model", "")
    base_kind, base_name, base_link = base_of(info)
    builtin = base_kind == "builtin"
    card_data = ModelCardData(
        base_model=base if base_kind == "hub" and info.get("pretrained", True) else None, library_name="transformers",
        pipeline_tag="image-classification", tags=["tl-hub", "image-classification", "transfer-learning"],
        eval_results=results or None, model_name=repo_id.split("/")[-1],
    )
    export = info.get("export", {})
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, repo_id=repo_id, n_labels=len(info.get("labels", [])),
        labels_preview=", ".join(info.get("labels", [])[:8]) + (" ..." if len(info.get("labels", [])) > 8 else ""),
        title=repo_id.split("/")[-1], pretrained=info.get("pretrained", True), base_kind=base_kind,
        base_name=base_name, base_link=base_link, base_revision=info.get("base_model_revision"),
        recipe=info.get("recipe"),
        base_is_builtin=builtin, base_ref=f"tl_hub.ModelSource({base!r}).location" if builtin else repr(base),
        recipe_text=info.get("recipe_text", ""), data=info.get("data", ""),
        settings={k: v for k, v in info.get("settings", {}).items() if v is not None},
        accuracy=f"{val.get('accuracy', float('nan')):.4f}", f1=f"{val.get('f1', float('nan')):.4f}",
        test_accuracy=f"{test['accuracy']:.4f}" if "accuracy" in test else None,
        multi_label=bool(info.get("multi_label")), per_label=val.get("per_label"),
        **{key: _figure(val.get(key)) for key in ("mAP", "f1_micro", "balanced_accuracy")},
        test_mAP=_figure(test.get("mAP")), imbalance=_imbalance_text(info),
        full_model=export.get("format") == "transformers", peft=export.get("format") == "peft",
        labels=info.get("labels", []), kept_epoch=_kept_epoch_text(info), per_class=val.get("per_class"),
        errors_figure="errors.png" in info.get("figures", []),
        calibration=_calibration_card(info, test), wise_ft=_wise_ft_text(info), onnx=_onnx_text(info),
        validation_warning=info.get("validation_warning"),
        export_text=f"{export.get('tensors', 0)} tensors, {export.get('parameters', 0):,} parameters",
    )
