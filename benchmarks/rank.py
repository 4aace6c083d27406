"""Does `tl_hub.rank` pick the base that fine-tunes best?  Its scores against real fine-tuning, on a model zoo.

The zoo (``recipes/build_zoo.py``): six small bases that differ in what they were pretrained on (rendered letters,
rendered digits 0-4, colour textures, noise with random labels, nothing, and letters again as a ViT).  The
targets: four tasks of ``benchmarks/transfer.py`` (its ``task_data``): handwritten digits with 5 and 30 images per
class, printed digits with 10, the hue of textures with 10.

The real tier (``--tier real``): EfficientNet-Lite0 pretrained on ImageNet-1k, the same architecture randomly
initialised, Yahoo's open-NSFW ResNet (a real network pretrained on another task, 2 classes; converted from ONNX, see
``recipes/convert_opennsfw.py``) and the two glyph bases, on three real targets of ``benchmarks/transfer.py``:
Fashion-MNIST with 5 and 10 images per class and handwritten digits with 10, at each model's own resolution (224 px
for the real bases), 3 validation and 30 test images per class.  Results in ``rank_real_truth.json``,
``rank_real.json`` and ``rank_real.png``.

Two stages, so the slow one runs once:

- ``truth``: every candidate x target x seed, the DEFAULT fine-tune (``FineTuneRecipe(candidate, seed=seed)``
  fitted on train and validation, then test accuracy).  Written to ``rank_truth.json`` after every fit, through a
  temporary file renamed into place, so an interrupted run resumes (entries present for the same candidate, target
  and seed are skipped).  The loop is seed-major (all candidates x targets for seed 0, then seed 1, ...), so a
  partial run is still usable.  About 25 minutes on 2 idle CPU cores (72 fits of 20-25 s each).
- ``rank``: per target (seed 0 data), ``tl_hub.rank(candidates, train, validation_dataset=validation, seed=0,
  feature_cache_dir=<fresh temp folder>)``, and against the truth (mean test accuracy over the seeds present):
  - weighted Kendall tau, ``scipy.stats.weightedtau(score, truth)``: Kendall's tau where a swap costs the sum of
    hyperbolic weights 1 / (rank + 1) of the two elements, ranks taken from the top (highest value = rank 0) of
    each variable in turn and averaged, so disorder among the best candidates costs most, and disorder among the
    worst little.  Every score is taken as higher-is-better.  1: the same order; 0: unrelated; -1: reversed;
  - top-1 regret: the best truth accuracy minus the truth accuracy of the score's top candidate, in points (x100);
    a tie for the top counts the worst of the tied candidates;
  a score that is None for some candidates (e.g. ``leep``/``nce`` without a source head) is evaluated on the
  candidates that have it (best accuracy and tau among those), and the tables say on how many.
  Cost: per candidate, one plain inference pass (load the model and its image processor from disk, read and
  preprocess the same train + validation images with that processor, forward under ``torch.inference_mode``,
  batch 64; one warm-up, then the median of 3) against rank's ``encode`` seconds (the median of 3 rankings with
  fresh cache folders): ratio = sum of encode / sum of plain passes over candidates and targets.  The scores' own
  seconds are reported apart.

    python benchmarks/rank.py truth                   # the ground truth: about 25 minutes, resumable
    python benchmarks/rank.py rank                    # the ranking against it: a few minutes
    python benchmarks/rank.py truth --tier real --seeds 0,1   # the real tier's truth (224 px fine-tunes)
    python benchmarks/rank.py rank --tier real
    python benchmarks/rank.py truth --quick           # both stages with --quick: tiny zoo, 2 candidates, 1 target,
    python benchmarks/rank.py rank --quick            #   few images, 1 seed; results in a temp folder

``--zoo`` (default ``~/.cache/tl_hub/zoo``) is built if missing.  Results: ``benchmarks/results/rank_truth.json``,
``rank.json`` and ``rank.png``.  The last line ``rank`` prints is one JSON object with every figure and the targets:
the default score's mean weighted tau >= 0.6, its top-1 within 2 points on >= 3 of 4 targets, cost ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import build_zoo  # noqa: E402  (recipes/build_zoo.py)
from run import host  # noqa: E402  (the same host description as the main benchmark)
from transfer import task_data  # noqa: E402

CANDIDATES = list(build_zoo.GLYPH)
TARGETS = [("handwritten", 5), ("handwritten", 30), ("printed", 10), ("hue", 10)]
# the real tier: real bases at 224 px (and the glyph bases, which see the images at their own 32 px) on the real
# targets of benchmarks/transfer.py (3 validation and 30 test images per class)
REAL_CANDIDATES = [*build_zoo.REAL, "glyph-resnet", "glyph-vit"]
REAL_TARGETS = [("fashion", 5), ("fashion", 10), ("handwritten", 10)]
SEEDS = (0, 1, 2)
QUICK_CANDIDATES = ["glyph-resnet", "digits04-resnet"]
QUICK_TARGETS = [("handwritten", 5)]
QUICK_SIZES = {"validation": 50, "test": 200}  # images kept with --quick
DEFAULT_ZOO = os.path.join("~", ".cache", "tl_hub", "zoo")
RESULTS = os.path.join(HERE, "results")
QUICK_RESULTS = os.path.join(tempfile.gettempdir(), "tl_hub_rank_quick")
REPEATS, BATCH = 3, 64
MAX_REGRET_POINTS = 2.0  # top-1 within this many points counts as a good pick
TARGET_MEAN_TAU, TARGET_RATIO = 0.6, 1.3


def target_key(target: str, per_class: int) -> str:
    return f"{target}/{per_class}"


def load_target(target: str, per_class: int, seed: int, quick: bool = False, real: bool = False):
    """``(train, validation, test)`` of ``benchmarks/transfer.py`` (its real tier's splits with ``real``); with
    ``quick``, validation and test shrunk."""
    train, validation, test = task_data(target, per_class, seed, real=real)
    if quick:
        validation = validation.shuffle(seed=seed).select(range(min(QUICK_SIZES["validation"], len(validation))))
        test = test.shuffle(seed=seed).select(range(min(QUICK_SIZES["test"], len(test))))
    return train, validation, test


def header(argv) -> dict:
    import torch
    import transformers

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "host": host(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "command": shlex.join(["python", "benchmarks/rank.py", *argv])}


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON through a temporary file and ``os.replace``: readers never see a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


# -- stage 1: the ground truth ---------------------------------------------------------------------------------------
def fine_tune(folder: str, data, seed: int) -> dict:
    """The DEFAULT fine-tune of ``folder``: validation and test accuracy, and seconds (fit + test evaluation)."""
    from tl_hub import FineTuneRecipe

    train, validation, test = data
    start = time.perf_counter()
    recipe = FineTuneRecipe(folder, seed=seed)
    result = recipe.fit(train, validation, progress=False)
    test_accuracy = recipe.evaluate(test)["accuracy"]
    return {"test_accuracy": float(test_accuracy), "validation_accuracy": float(result.metrics["accuracy"]),
            "seconds": time.perf_counter() - start}


def open_truth(path: str, head: dict, quick: bool) -> dict:
    """The truth file to extend: the one at ``path`` (its header moved to ``earlier_runs``), or a new one."""
    if not os.path.exists(path):
        return {**head, "quick": quick, "entries": [], "earlier_runs": []}
    with open(path) as f:
        truth = json.load(f)
    if truth.get("quick") != quick:
        raise SystemExit(f"{path} holds a {'quick' if truth.get('quick') else 'full'} run; move it away to start "
                         f"a {'quick' if quick else 'full'} one.")
    earlier = truth.get("earlier_runs", []) + [{k: truth[k] for k in head if k in truth}]
    for old, new in ((truth.get("torch"), head["torch"]), (truth.get("transformers"), head["transformers"])):
        if old != new:
            print(f"warning: resuming a truth run made with {old}, now {new}; entries will mix versions")
    return {**truth, **head, "earlier_runs": earlier}


def run_truth(zoo: str, path: str, candidates, targets, seeds, quick: bool, head: dict, real: bool = False) -> dict:
    """Fine-tune every candidate on every target for every seed (seed-major), writing ``path`` after every fit."""
    built = build_zoo.build_zoo(zoo, quick=quick, names=candidates)
    truth = open_truth(path, head, quick)
    truth["failed"] = []  # failures of earlier runs are retried
    truth.update(zoo=zoo, candidates=list(candidates), targets=[target_key(*t) for t in targets], seeds=list(seeds),
                 zoo_build_seconds={n: b["seconds"] for n, b in built.items() if b["built"]})
    done = {(e["candidate"], e["target"], e["seed"]) for e in truth["entries"]}
    todo = len(candidates) * len(targets) * len(seeds) - len(done & {
        (c, target_key(*t), s) for c in candidates for t in targets for s in seeds})
    print(f"truth: {len(done)} entries already in {path}; {todo} fits to run", flush=True)
    write_json(path, truth)
    count = 0
    with tempfile.TemporaryDirectory(prefix="tl_hub_rank_truth_") as cache:
        os.environ["TL_HUB_CACHE"] = cache  # the default feature cache, fresh for this run
        for seed in seeds:
            for target, per_class in targets:
                key, data = target_key(target, per_class), None
                for name in candidates:
                    if (name, key, seed) in done:
                        continue
                    if data is None:
                        data = load_target(target, per_class, seed, quick, real)
                    try:
                        out = fine_tune(os.path.join(zoo, name), data, seed)
                    except Exception as e:  # recorded apart from the entries, so a rerun retries it
                        truth.setdefault("failed", []).append({"candidate": name, "target": key, "seed": seed,
                                                               "error": f"{type(e).__name__}: {e}"})
                        write_json(path, truth)
                        print(f"seed {seed} {key} {name}: FAILED {type(e).__name__}: {e}", flush=True)
                        continue
                    truth["entries"].append({"candidate": name, "target": key, "seed": seed, **out,
                                             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                                 timespec="seconds")})
                    write_json(path, truth)
                    count += 1
                    print(f"[{count}/{todo}] seed {seed} {key} {name}: test {out['test_accuracy']:.3f}, "
                          f"validation {out['validation_accuracy']:.3f}, {out['seconds']:.0f} s", flush=True)
    return truth


def truth_means(entries, candidates, targets) -> tuple[dict, dict]:
    """``({target: {candidate: mean test accuracy}}, {target: seeds averaged})``.  Per target, the seeds averaged
    are those every candidate with entries has (so a run interrupted mid-seed compares like with like); when no
    seed is complete, all seeds present."""
    means, seeds = {}, {}
    for key in targets:
        rows = [e for e in entries if e["target"] == key and e["candidate"] in candidates]
        present = {c for c in candidates if any(e["candidate"] == c for e in rows)}
        by_seed = {s: {e["candidate"] for e in rows if e["seed"] == s} for s in {e["seed"] for e in rows}}
        complete = sorted(s for s, names in by_seed.items() if names == present) or sorted(by_seed)
        means[key] = {c: statistics.mean(e["test_accuracy"] for e in rows if e["candidate"] == c and e["seed"] in
                                         complete) for c in candidates if c in present}
        seeds[key] = complete
    return means, seeds


# -- metrics (pure functions) ----------------------------------------------------------------------------------------
def clean(value) -> Optional[float]:
    """A score as a float, or None when missing or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def paired(scores: dict, truth: dict) -> list[str]:
    """The candidates that have both a (finite) score and a truth accuracy, in ``truth``'s order."""
    return [c for c in truth if clean(scores.get(c)) is not None]


def weighted_tau(scores: dict, truth: dict) -> Optional[float]:
    """``scipy.stats.weightedtau`` of score against truth accuracy (hyperbolic weights: the top ranks count most)
    over the candidates that have both; None with fewer than 2 such candidates or a constant score or truth."""
    from scipy.stats import weightedtau

    names = paired(scores, truth)
    if len(names) < 2:
        return None
    tau = float(weightedtau([clean(scores[c]) for c in names], [truth[c] for c in names])[0])
    return tau if math.isfinite(tau) else None


def top1_regret(scores: dict, truth: dict) -> Optional[dict]:
    """The score's top candidate and its regret: ``{"top", "best", "regret_points"}`` where ``regret_points`` =
    100 x (best truth accuracy - truth accuracy of ``top``), among the candidates that have both; a tie for the
    top score counts its worst candidate.  None when fewer than 2 candidates have both (no choice to make)."""
    names = paired(scores, truth)
    if len(names) < 2:
        return None
    high = max(clean(scores[c]) for c in names)
    top = min((c for c in names if clean(scores[c]) == high), key=lambda c: truth[c])
    best = max(names, key=lambda c: truth[c])
    return {"top": top, "best": best, "regret_points": 100 * (truth[best] - truth[top])}


def evaluate_score(scores: dict, truth: dict) -> dict:
    """Weighted tau and top-1 regret of one score on one target, with the candidates it was evaluated on."""
    names = paired(scores, truth)
    return {"tau": weighted_tau(scores, truth), **(top1_regret(scores, truth) or {"regret_points": None}),
            "candidates": len(names), "missing": [c for c in truth if c not in names]}


def summarise(evaluations: dict, max_regret: float = MAX_REGRET_POINTS) -> dict:
    """Per score, over targets: ``{"mean_tau", "within": targets with regret <= max_regret points,
    "mean_regret_points", "targets": targets evaluated}`` from ``{target: {score: evaluate_score(...)}}``."""
    names = list(dict.fromkeys(s for per_score in evaluations.values() for s in per_score))
    out = {}
    for s in names:
        rows = [per_score[s] for per_score in evaluations.values() if s in per_score]
        taus = [r["tau"] for r in rows if r["tau"] is not None]
        regrets = [r["regret_points"] for r in rows if r["regret_points"] is not None]
        out[s] = {"mean_tau": statistics.mean(taus) if taus else None,
                  "within": sum(r <= max_regret + 1e-9 for r in regrets),
                  "mean_regret_points": statistics.mean(regrets) if regrets else None,
                  "targets": len(regrets)}
    return out


def check_targets(summary: dict, default_score: str, cost_ratio: Optional[float], n_targets: int) -> list[dict]:
    """The benchmark's targets: the default score's mean tau >= 0.6 and top-1 within 2 points on >= 3 of 4 targets
    (>= 3/4 of them, rounded up, for other counts); encode seconds <= 1.3 x plain inference passes."""
    s = summary.get(default_score, {})
    needed = math.ceil(0.75 * n_targets)
    mean_tau = s.get("mean_tau")
    return [
        {"target": f"{default_score} mean weighted tau >= {TARGET_MEAN_TAU}", "value": mean_tau,
         "ok": mean_tau is not None and mean_tau >= TARGET_MEAN_TAU},
        {"target": f"{default_score} top-1 within {MAX_REGRET_POINTS:g} points on >= {needed} of {n_targets} targets",
         "value": s.get("within", 0), "ok": s.get("within", 0) >= needed},
        {"target": f"encode / plain inference passes <= {TARGET_RATIO}", "value": cost_ratio,
         "ok": cost_ratio is not None and cost_ratio <= TARGET_RATIO},
    ]


# -- stage 2: the ranking and its cost -------------------------------------------------------------------------------
def plain_pass(folder: str, datasets_) -> float:
    """Seconds of one plain inference pass: load model and processor from disk, read and preprocess the images of
    ``datasets_`` with the model's processor, forward (batch 64) under ``torch.inference_mode``."""
    import torch
    from transformers import AutoModelForImageClassification

    from tl_hub.backbone import load_image_processor

    start = time.perf_counter()
    processor = load_image_processor(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        for ds in datasets_:
            for i in range(0, len(ds), BATCH):
                images = [im.convert("RGB") for im in ds[i:i + BATCH]["image"]]
                model(pixel_values=processor(images, return_tensors="pt")["pixel_values"])
    return time.perf_counter() - start


def _lookup(mapping, folder: str):
    """``mapping[folder]``, also when the ranking keyed the folder by another spelling of the same path."""
    mapping = mapping or {}
    if folder in mapping:
        return mapping[folder]
    return next((v for k, v in mapping.items() if os.path.abspath(str(k)) == os.path.abspath(folder)), None)


def ranking_table(ranking, folders: dict) -> dict:
    """``ranking``'s scores, seconds and failures keyed by candidate name (``folders``: name -> folder path)."""
    return {"scores": {n: {s: clean(v) for s, v in (_lookup(ranking.scores, f) or {}).items()}
                       for n, f in folders.items()},
            "seconds": {n: dict(_lookup(ranking.seconds, f) or {}) for n, f in folders.items()},
            "failed": {n: str(_lookup(ranking.failed, f)) for n, f in folders.items()
                       if _lookup(ranking.failed, f) is not None},
            "default_score": ranking.default_score}


def measure_target(folders: dict, train, validation) -> dict:
    """Rank ``folders`` REPEATS times (fresh cache folders each) and time the plain passes in the same rounds
    (after one warm-up pass each); medians of the seconds, the scores of the first ranking."""
    import tl_hub

    for folder in folders.values():
        plain_pass(folder, (train, validation))  # warm-up
    runs, plain, walls = [], {n: [] for n in folders}, []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(prefix="tl_hub_rank_cache_") as cache:
            start = time.perf_counter()
            ranking = tl_hub.rank(list(folders.values()), train, validation_dataset=validation, seed=0,
                                  feature_cache_dir=cache)
            walls.append(time.perf_counter() - start)
        runs.append(ranking_table(ranking, folders))
        for n, folder in folders.items():
            plain[n].append(plain_pass(folder, (train, validation)))
    first = runs[0]
    seconds = {n: {k: statistics.median(r["seconds"][n][k] for r in runs if k in r["seconds"][n])
                   for k in first["seconds"][n]} for n in folders}
    return {**first, "seconds": seconds, "scores_repeatable": all(r["scores"] == first["scores"] for r in runs),
            "plain_pass_seconds": {n: statistics.median(v) for n, v in plain.items()},
            "rank_wall_seconds": statistics.median(walls), "images": len(train) + len(validation)}


def cost(measured: dict) -> dict:
    """Encode seconds against plain inference passes, summed over candidates (not failed) and targets; the scores'
    own seconds apart."""
    encode = plain = 0.0
    score_seconds: dict = {}
    for m in measured.values():
        for n, sec in m["seconds"].items():
            if n in m["failed"] or "encode" not in sec:
                continue
            encode += sec["encode"]
            plain += m["plain_pass_seconds"][n]
            for s, v in sec.items():
                if s != "encode":
                    score_seconds[s] = score_seconds.get(s, 0.0) + v
    return {"encode_seconds": encode, "plain_pass_seconds": plain, "ratio": encode / plain if plain else None,
            "score_seconds": score_seconds}


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_target(key: str, truth: dict, m: dict, evaluation: dict, seeds) -> None:
    names = list(evaluation)
    print(f"\n{key}: truth = mean test accuracy of the default fine-tune over seeds {seeds}; score values; "
          f"encode and plain-pass seconds")
    print("| candidate | truth | " + " | ".join(names) + " | encode s | plain s |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for n in m["scores"]:
        row = [_fmt(m["scores"][n].get(s), ".4g") for s in names]
        print(f"| {n} | {_fmt(truth.get(n))} | " + " | ".join(row) +
              f" | {_fmt(m['seconds'][n].get('encode'), '.2f')} | {_fmt(m['plain_pass_seconds'][n], '.2f')} |")
    print("| weighted tau | | " + " | ".join(_fmt(evaluation[s]["tau"]) for s in names) + " | | |")
    print("| top-1 regret (points) | | " + " | ".join(_fmt(evaluation[s]["regret_points"], ".1f") for s in names)
          + " | | |")
    for s, e in evaluation.items():
        if e["missing"]:
            print(f"  {s}: evaluated on {e['candidates']} of {len(truth)} candidates (none for {', '.join(e['missing'])})")
    for n, msg in m["failed"].items():
        print(f"  failed: {n}: {msg}")


def print_summary(summary: dict, default_score: str, n_targets: int, c: dict) -> None:
    print(f"\nsummary over {n_targets} target(s) (default score: {default_score})")
    print(f"| score | mean weighted tau | targets with regret <= {MAX_REGRET_POINTS:g} pt | mean regret (pt) |")
    print("|---|---|---|---|")
    for s, v in summary.items():
        print(f"| {s}{' (default)' if s == default_score else ''} | {_fmt(v['mean_tau'])} | "
              f"{v['within']} of {v['targets']} | {_fmt(v['mean_regret_points'], '.1f')} |")
    print(f"\ncost: encode {c['encode_seconds']:.1f} s vs plain inference passes {c['plain_pass_seconds']:.1f} s "
          f"(ratio {_fmt(c['ratio'], '.2f')}, target <= {TARGET_RATIO}); the scores' own seconds: "
          + ", ".join(f"{s} {v:.2f}" for s, v in c["score_seconds"].items()))


def plot(path: str, truth: dict, measured: dict, summary: dict, default_score: str) -> None:
    """One panel per target (truth accuracy and the default score, min-max normalised, per candidate) and one panel
    of the mean weighted tau per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = len(measured) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, (key, m) in zip(axes.flat, measured.items()):
        names = list(m["scores"])
        values = [m["scores"][n].get(default_score) for n in names]
        present = [v for v in values if v is not None]
        lo, hi = (min(present), max(present)) if present else (0.0, 1.0)
        norm = [0.0 if v is None else (v - lo) / (hi - lo) if hi > lo else 1.0 for v in values]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [truth[key].get(n, 0.0) for n in names], 0.4, label="fine-tune test accuracy (truth)")
        ax.bar(x + 0.2, norm, 0.4, label=f"{default_score} (min-max normalised)")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(key)
    axes.flat[0].legend(fontsize=8, loc="upper right")
    ax = axes.flat[len(measured)]
    names = [s for s in summary if summary[s]["mean_tau"] is not None]
    bars = ax.bar(names, [summary[s]["mean_tau"] for s in names],
                  color=["tab:orange" if s == default_score else "tab:blue" for s in names])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(TARGET_MEAN_TAU, color="gray", linestyle="--", linewidth=1, label=f"target {TARGET_MEAN_TAU}")
    ax.set_ylim(-1, 1)
    ax.set_title("mean weighted Kendall tau per score")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend(fontsize=8)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_prefix(real: bool) -> str:
    """The results files' name: ``rank*`` for the glyph tier, ``rank_real*`` for the real one."""
    return "rank_real" if real else "rank"


def run_rank(zoo: str, truth_path: str, out_dir: str, candidates, targets, quick: bool, head: dict,
             real: bool = False) -> dict:
    import tl_hub

    if not hasattr(tl_hub, "rank"):
        raise SystemExit("tl_hub.rank is not available in this checkout yet (tl_hub/rank.py); the truth stage does "
                         "not need it: run `python benchmarks/rank.py truth` meanwhile.")
    if not os.path.exists(truth_path):
        raise SystemExit(f"No ground truth at {truth_path}; run `python benchmarks/rank.py truth` first.")
    with open(truth_path) as f:
        entries = json.load(f)["entries"]
    keys = [target_key(*t) for t in targets]
    truth, seeds = truth_means(entries, candidates, keys)
    folders = {n: os.path.join(zoo, n) for n in candidates}
    measured, evaluations = {}, {}
    for (target, per_class), key in zip(targets, keys):
        train, validation, _ = load_target(target, per_class, 0, quick, real)
        m = measured[key] = measure_target(folders, train, validation)
        names = list(dict.fromkeys(s for sc in m["scores"].values() for s in sc))
        evaluations[key] = {s: evaluate_score({n: m["scores"][n].get(s) for n in folders}, truth[key]) for s in names}
        print_target(key, truth[key], m, evaluations[key], seeds[key])
    default_score = next(iter(measured.values()))["default_score"]
    summary, c = summarise(evaluations), cost(measured)
    checks = check_targets(summary, default_score, c["ratio"], len(targets))
    print_summary(summary, default_score, len(targets), c)
    for check in checks:
        print(f"{'ok    ' if check['ok'] else 'MISSED'} {check['target']} (value {check['value']})")
    result = {**head, "zoo": zoo, "truth_file": truth_path, "truth_seeds": seeds, "candidates": list(candidates),
              "default_score": default_score, "truth": truth, "evaluation": evaluations, "measured": measured,
              "summary": summary, "cost": c, "targets": checks, "targets_met": all(ch["ok"] for ch in checks)}
    prefix = results_prefix(real)
    write_json(os.path.join(out_dir, f"{prefix}.json"), result)
    plot(os.path.join(out_dir, f"{prefix}.png"), truth, measured, summary, default_score)
    print(f"wrote {os.path.join(out_dir, prefix + '.json')} and {prefix}.png")
    print(json.dumps(result))
    return result


def quiet() -> None:
    import logging

    for name in ("transformers", "tl_hub", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("truth", "rank"))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="Comma-separated seeds of the truth.")
    parser.add_argument("--tier", choices=("glyph", "real"), default="glyph",
                        help="glyph: the six small bases on the glyph targets (default); real: ImageNet Lite0, its "
                             "random-init copy, the open-NSFW ResNet and the glyph bases on the real targets at 224 px "
                             "(results in rank_real*.json)")
    parser.add_argument("--zoo", help=f"The zoo folder, built if missing (default {DEFAULT_ZOO}).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Zoo with --quick plans, {len(QUICK_CANDIDATES)} candidates, 1 target with few images, "
                             f"1 seed; everything in {QUICK_RESULTS}.")
    args = parser.parse_args(argv)
    if args.quick and args.zoo:
        parser.error("--zoo is not used with --quick (its zoo is built with --quick plans in a temp folder).")
    quiet()
    out_dir = QUICK_RESULTS if args.quick else RESULTS
    os.makedirs(out_dir, exist_ok=True)
    zoo = os.path.join(QUICK_RESULTS, "zoo") if args.quick else os.path.abspath(os.path.expanduser(args.zoo or DEFAULT_ZOO))
    real = args.tier == "real" and not args.quick
    candidates, targets = ((QUICK_CANDIDATES, QUICK_TARGETS) if args.quick else
                           (REAL_CANDIDATES, REAL_TARGETS) if real else (CANDIDATES, TARGETS))
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    truth_path = os.path.join(out_dir, f"{results_prefix(real)}_truth.json")
    head = header(argv)
    start = time.perf_counter()
    if args.stage == "truth" or args.quick:  # --quick ranks against its own quick truth (seconds when present)
        run_truth(zoo, truth_path, candidates, targets, seeds, args.quick, head, real)
        print(f"truth: {truth_path} ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.stage == "rank":
        run_rank(zoo, truth_path, out_dir, candidates, targets, args.quick, head, real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
