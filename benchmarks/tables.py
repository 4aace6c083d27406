"""The benchmark tables and figures of the documentation, rendered from the result files in `benchmarks/results/`.

    python benchmarks/tables.py            # rewrite every generated block in docs/ and README.md, and the figures
    python benchmarks/tables.py --check    # exit 1, naming them, if a block or a figure differs from the results

A generated block sits between two markers in a Markdown file, and nothing inside them is typed by hand:

    <!-- table: transfer_real -->
    ...
    <!-- /table -->

The block is ``TABLES[name]`` applied to the parsed result files it names: pure functions of the JSON, so the same
files always give the same text.  The figures under `docs/assets/` are drawn from the results (and checked through
the digest of their inputs stored in the PNG), or copied from the PNGs the benchmark scripts write.

`architectures` is also the table ``python tests/support/arch_check.py`` prints.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
ASSETS = os.path.join(ROOT, "docs", "assets")
MARKED = re.compile(r"(<!-- table: ([a-z0-9_]+) -->\n)(.*?)(<!-- /table -->)", re.DOTALL)
MINUS = "\u2212"

# how the result files name the methods, and how the tables do
METHODS = {"feature-extraction": "feature extraction", "fine-tune": "fine-tune", "scratch": "scratch",
           "hand fine-tune": "hand fine-tune", "hand scratch": "hand scratch", "probe": "scikit-learn probe",
           "train-all-from-pretrained": "train all from pretrained"}


# ---------------------------------------------------------------------------------------------------------------------
# Formatting


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def signed(value: float, digits: int = 1) -> str:
    """``+1.5`` / ``−0.5`` (a typographic minus), ``0.0`` without a sign."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text.replace("-", MINUS)


def spread(values: list[float]) -> str:
    """``mean (min–max)`` of accuracies."""
    return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def bold_if(text: str, best: bool) -> str:
    return f"**{text}**" if best else text


def best_keys(values: dict, digits: int = 3) -> set:
    """The keys whose value, rounded as printed, is the largest."""
    top = max(round(v, digits) for v in values.values())
    return {k for k, v in values.items() if round(v, digits) == top}


def utc(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp).astimezone(datetime.timezone.utc)


def when(stamp: str) -> str:
    return utc(stamp).strftime("%Y-%m-%d %H:%M UTC")


def machine(host) -> str:
    """The machine a result file records, in words."""
    if not isinstance(host, dict):
        return str(host)
    threads = f"{host['torch_threads']} torch thread{'s' if host['torch_threads'] != 1 else ''}"
    return f"{host['cpu']}, {host['cores']} cores, {threads}, torch {host['torch']}"


def natural(text: str) -> list:
    """Sort key: the numbers in ``text`` compare as numbers (fashion/5 before fashion/10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def time_span(first: str, last: str) -> str:
    """``2026-12-06 00:46–00:52 UTC`` from two ``YYYY-MM-DD HH:MM UTC`` stamps (the day once when it is the same)."""
    (day1, time1, _), (day2, time2, _) = first.split(" "), last.split(" ")
    return f"{day1} {time1}–{time2} UTC" if day1 == day2 else f"{first} – {last}"


def caption(*parts: str) -> str:
    return "_" + "; ".join(p for p in parts if p) + "._"


def source(name: str) -> str:
    return f"`benchmarks/results/{name}.json`"


# ---------------------------------------------------------------------------------------------------------------------
# Transfer benchmark (benchmarks/transfer.py)


def transfer_accuracy(result: dict, with_seconds: bool) -> str:
    """Test accuracy per task and method: mean over the seeds (min–max), the best of each row in bold."""
    methods = list(next(iter(result["tasks"].values()))["runs"])
    rows = []
    for task, r in result["tasks"].items():
        best = best_keys(r["mean"])
        cells = [spread(r["runs"][m]) + (f", {r['seconds'][m]:.0f} s" if with_seconds else "") for m in methods]
        rows.append([task] + [bold_if(c, m in best) for c, m in zip(cells, methods)])
    seeds = ", ".join(map(str, result["seeds"]))
    return "\n\n".join([table(["task"] + [METHODS[m] for m in methods], rows),
                        caption(f"seeds {seeds}", source_of(result))])


def transfer_seconds(result: dict) -> str:
    """Median seconds per run, per task and method."""
    methods = list(next(iter(result["tasks"].values()))["seconds"])
    rows = [[task] + [f"{r['seconds'][m]:.1f}" for m in methods] for task, r in result["tasks"].items()]
    return table(["task"] + [METHODS[m] for m in methods], rows)


def transfer_oracle(result: dict) -> str:
    """The best of the oracle's fine-tune settings (chosen on validation, scored on test) against the default."""
    rows = []
    for task, o in result["oracle"].items():
        s = o["oracle_settings"]
        settings = (f"lr {s['lr']:g}, head_epochs {'default' if s['head_epochs'] is None else s['head_epochs']}, "
                    f"augment {'on' if s['augment'] else 'off'}")
        rows.append([task, f"{o['oracle_test']:.3f} ({settings})", f"{o['default_test']:.3f}",
                     f"{signed(100 * o['default_minus_oracle'])} points"])
    return table(["task", "oracle (its settings)", "default fine-tune", "default − oracle"], rows)


def transfer_targets(result: dict) -> str:
    """Each target of the benchmark per task: its margin in points, and whether it holds."""
    tasks = list(dict.fromkeys(c["task"] for c in result["targets"]))
    targets = list(dict.fromkeys(c["target"] for c in result["targets"]))
    cell = {(c["target"], c["task"]): c for c in result["targets"]}
    rows = []
    for t in targets:
        row = [f"`{t}`"]
        for task in tasks:
            c = cell.get((t, task))
            row.append("" if c is None else f"{'✓' if c['ok'] else '✗'} {signed(100 * c['margin'])}")
        rows.append(row)
    held = sum(c["ok"] for c in result["targets"])
    return "\n\n".join([table(["target (margin in points)"] + tasks, rows),
                        f"**{held} of {len(result['targets'])} targets hold.**"])


def source_of(result: dict) -> str:
    reused = result.get("references_reused", {})
    if reused.get("entries"):
        return f"the references' {len(reused['entries'])} runs reused from `{reused['file']}`"
    return ""


def transfer_ablation(result: dict) -> str:
    """Test accuracy (mean over the seeds) of fine-tune and scratch with the default augmentation, none, and flips."""
    variants = ["default", "no augmentation", "with flips"]
    rows = []
    for task, runs in result["ablation"].items():
        row = [task]
        for recipe in ("fine-tune", "scratch"):
            means = {v: statistics.mean(runs[f"{recipe}, {v}"]) for v in variants}
            best = best_keys(means)
            row += [bold_if(f"{means[v]:.3f}", v in best) for v in variants]
        rows.append(row)
    header = ["task", "fine-tune: default", "no augmentation", "+ flips", "scratch: default", "no augmentation",
              "+ flips"]
    return "\n\n".join([table(header, rows), caption(f"seeds {', '.join(map(str, result['seeds']))}")])


def transfer_references(refs: dict) -> str:
    """The reference runs (hand-written loops, scikit-learn probe) kept per task and seed, with when they ran."""
    methods = list(next(iter(refs.values())))
    rows = []
    for key, entries in sorted(refs.items(), key=lambda kv: natural(kv[0])):
        dates = [e["measured"].split(" (")[0] for e in entries.values()]
        span = dates[0] if dates[0] == dates[-1] else time_span(dates[0], dates[-1])
        rows.append([key] + [f"{entries[m]['test']:.3f}, {entries[m]['seconds']:.0f} s" for m in methods] + [span])
    machines = sorted({e["machine"] for entries in refs.values() for e in entries.values()})
    return "\n\n".join([table(["task/seed"] + [METHODS[m] for m in methods] + ["measured"], rows),
                        caption("test accuracy, seconds", "machine: " + ", ".join(machines))])


def transfer_summary(result: dict) -> dict:
    """The real tier's headline: ranges over its tasks, in points and ratios."""
    tasks = result["tasks"].values()
    over_hand = [100 * (r["mean"]["fine-tune"] - r["mean"]["hand fine-tune"]) for r in tasks]
    time_share = [r["seconds"]["fine-tune"] / r["seconds"]["hand fine-tune"] for r in tasks]
    over_scratch = [100 * (max(r["mean"]["fine-tune"], r["mean"]["feature-extraction"]) - r["mean"]["scratch"])
                    for r in tasks]
    fe_vs_probe = [100 * (r["mean"]["feature-extraction"] - r["mean"]["probe"]) for r in tasks]
    return {"tasks": len(result["tasks"]), "seeds": len(result["seeds"]), "over_hand": over_hand,
            "time_share": time_share, "over_scratch": over_scratch, "fe_vs_probe": fe_vs_probe,
            "ft_seconds": [r["seconds"]["fine-tune"] for r in tasks],
            "held": sum(c["ok"] for c in result["targets"]), "targets": len(result["targets"])}


# ---------------------------------------------------------------------------------------------------------------------
# Ranking benchmark (benchmarks/rank.py)


def truth_means(truth: dict) -> dict:
    """``{target: {candidate: mean test accuracy over the seeds}}`` from the ground-truth fits."""
    runs: dict = {}
    for e in truth["entries"]:
        runs.setdefault(e["target"], {}).setdefault(e["candidate"], []).append(e["test_accuracy"])
    return {t: {c: statistics.mean(v) for c, v in by.items()} for t, by in runs.items()}


def rank_truth(truth: dict, ranking: dict) -> str:
    """Mean test accuracy of every candidate's default fine-tune per target, the best in bold, and the pick of the
    default score."""
    means = truth_means(truth)
    picks = {t: e[ranking["default_score"]]["top"] for t, e in ranking["evaluation"].items()}
    best = {t: best_keys(by) for t, by in means.items()}
    rows = [[c] + [bold_if(f"{means[t][c]:.3f}", c in best[t]) + (" ← pick" if picks.get(t) == c else "")
                   for t in means] for c in ranking["candidates"]]
    entries = truth["entries"]
    start = min(utc(e["date"]) - datetime.timedelta(seconds=e["seconds"]) for e in entries)
    end = max(utc(e["date"]) for e in entries)
    seeds = sorted({e["seed"] for e in entries})
    fits = (f"ground truth: {len(entries)} fits, seeds {', '.join(map(str, seeds))} (`{truth['command']}`), "
            f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC, {machine(truth['host'])}, transformers {truth['transformers']}")
    picked = (f"pick: the top candidate by `{ranking['default_score']}` (`{ranking['command']}`, "
              f"{when(ranking['date'])}, {machine(ranking['host'])}, transformers {ranking['transformers']})")
    return "\n\n".join([table(["candidate"] + list(means), rows), caption(fits, picked)])


def rank_scores(ranking: dict) -> str:
    """Per score over the targets: mean weighted Kendall τ, top-1 picks within 2 points, mean top-1 regret."""
    rows = []
    for score, s in ranking["summary"].items():
        default = score == ranking["default_score"]
        cells = [f"`{score}`" + (" (default)" if default else ""), f"{s['mean_tau']:.3f}",
                 f"{s['within']} of {s['targets']}", f"{s['mean_regret_points']:.1f}"]
        rows.append([bold_if(c, default) for c in cells])
    return table(["score", "mean weighted τ", "top-1 within 2 points", "mean regret (points)"], rows)


def rank_targets(ranking: dict) -> str:
    """The ranking benchmark's targets, as the result file states them, with the measured value."""
    rows = [[f"`{t['target']}`", f"{t['value']:.3f}" if isinstance(t["value"], float) else str(t["value"]),
             "met" if t["ok"] else "**not met**"] for t in ranking["targets"]]
    return table(["target", "measured", ""], rows)


def rank_cost(ranking: dict) -> str:
    """The ranking's encoder passes against plain inference passes over the same images."""
    c = ranking["cost"]
    scores = ", ".join(f"{'the recommendation' if s == 'advice' else s} {v:.2f} s" for s, v in c["score_seconds"].items())
    return (f"Encoder passes through `rank` {c['encode_seconds']:.1f} s, plain inference passes over the same images "
            f"{c['plain_pass_seconds']:.1f} s: **{c['ratio']:.2f}×** (target ≤ 1.3). The scores' own time, summed "
            f"over the candidates and targets: {scores}.")


# ---------------------------------------------------------------------------------------------------------------------
# The four cases (recipes/quadrants.py), the best epoch (benchmarks/best_epoch.py)


def quadrants(results: list) -> str:
    """Validation accuracy of every recipe in each quadrant, and the advisor's choice against the best."""
    recipes = list(results[0]["accuracy"])
    rows = []
    for q in results:
        choice = METHODS[q["advisor_choice"]] + (" (don't transfer)" if q["advisor_choice"] == "scratch" else "")
        gap = signed(q["knn_gap"], 2)
        best = best_keys(q["accuracy"])
        verdict = "best" if round(q["choice_minus_best"], 3) == 0 else f"{signed(100 * q['choice_minus_best'])} points"
        rows.append([q["intended"].replace("+", " + "), f"{q['advisor_case']} ({gap}) → {choice}"]
                    + [bold_if(f"{q['accuracy'][r]:.3f}", r in best) for r in recipes]
                    + [f"{verdict} {'✓' if q['choice_ok'] else '✗'}"])
    header = ["quadrant", "advisor: case (k-NN gap) → choice"] + [METHODS[r] for r in recipes] + ["advisor vs best"]
    return table(header, rows)


def load_best_epoch_rules() -> dict:
    """`RULES` of `benchmarks/best_epoch.py` (the rules, not a copy of them)."""
    spec = importlib.util.spec_from_file_location("best_epoch", os.path.join(HERE, "best_epoch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RULES


def best_epoch(result: dict) -> str:
    """Mean test accuracy of the epoch each rule keeps, against the plain rule (best accuracy, then loss)."""
    rules = load_best_epoch_rules()
    picks = {name: [r["history"][rule(r["history"])]["test_accuracy"] for r in result["runs"]]
             for name, rule in rules.items()}
    base = picks["accuracy, then loss"]
    rows = []
    for name, values in picks.items():
        diffs = [100 * (a - b) for a, b in zip(values, base)]
        rows.append([name, f"{statistics.mean(values):.3f}", signed(statistics.mean(diffs)),
                     f"{signed(min(diffs))} to {signed(max(diffs))}"])
    runs = ", ".join(f"{r['task']} seed {r['seed']} ({r['validation_images']} validation images)"
                     for r in result["runs"])
    return "\n\n".join([table(["rule", "mean test accuracy", "vs accuracy, then loss (points)", "per run (points)"],
                              rows), caption(f"runs: {runs}", f"measured {result['measured']}")])


# ---------------------------------------------------------------------------------------------------------------------
# Performance (benchmarks/run.py, scaling.py, threads.py, fe_breakdown.py)


def cell(r: dict, key: str, unit: str = "", digits: int = 0) -> str:
    """``median (min–max) unit`` of a figure of `benchmarks/run.py`; only the median when every run agreed."""
    median, low, high = (f"{r[f'{key}_{k}']:.{digits}f}" for k in ("median", "min", "max"))
    return f"{median}{unit}" if low == high else f"{median} ({low}–{high}){unit}"


def faster(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def performance(r: dict) -> str:
    """The table `benchmarks/run.py` prints, from its JSON: tl-hub against the Trainer and the pipeline."""
    sec = lambda key: cell(r, key, " s", 2)  # noqa: E731
    ips = lambda key: cell(r, key)  # noqa: E731
    sizes = r["sizes"]
    rows = [
        ["floor: load + 1 pass over train+val (preprocess + encoder)", sec("floor_seconds"), "", ""],
        ["floor: load + 1 pass over train only", sec("floor_train_only_seconds"), "", ""],
        [f"feature extraction, {sizes['fe_epochs']} epochs, whole fit (vs Trainer)", sec("fe_seconds"),
         sec("fe_trainer_seconds"), f"{faster(r['fe_speedup_vs_trainer'])}; vs floor: {r['fe_vs_floor']:.2f}x "
                                    f"(train only: {r['fe_vs_floor_train_only']:.2f}x)"],
        ["fine-tune all groups, train images/s (vs Trainer)", ips("ft_images_per_second"),
         ips("ft_trainer_images_per_second"), f"{r['ft_throughput_vs_trainer']:.2f}x"],
        ["fine-tune top-2 + prefix cache, train images/s", ips("ft_top2_cached_images_per_second"), "",
         f"{r['top2_cached_speedup_vs_top2']:.2f}x vs top-2 without; {r['top2_cached_speedup_vs_full']:.2f}x vs all"],
        ["fine-tune top-2, no prefix cache, train images/s", ips("ft_top2_images_per_second"), "",
         f"{r['top2_speedup_vs_full']:.2f}x vs all groups"],
        ["fine-tune top-2 + prefix cache, whole fit", sec("ft_top2_cached_fit_seconds"), "",
         f"{faster(r['top2_cached_fit_speedup_vs_top2'])} than top-2 without ({sec('ft_top2_fit_seconds')})"],
        [f"prefix cache (train + val inputs of `{r['top2_prefix_cut']}`), in memory",
         cell(r, "top2_prefix_cache_mb", " MB", 1), "", ""],
        ["peak memory growth, frozen (feature extraction)", cell(r, "frozen_peak_mb", " MB"), "",
         f"{r['frozen_mem_vs_full']:.2f}x vs full fine-tune"],
        ["peak memory growth, full fine-tune", cell(r, "full_peak_mb", " MB"), "", ""],
        [f"predict images/s, {sizes['predict_images']} images (vs pipeline)", ips("predict_images_per_second"),
         ips("pipeline_images_per_second"), f"{r['predict_vs_pipeline']:.2f}x"],
        ["model forward alone, same batches preprocessed beforehand", ips("predict_forward_only_images_per_second"),
         "", f"predict at {r['predict_vs_forward_only']:.0%} of it, pipeline at {r['pipeline_vs_forward_only']:.0%}"],
        ["first predict, fresh process: load + 1 image (vs pipeline)", sec("first_predict_seconds"),
         sec("first_predict_pipeline_seconds"), faster(r["first_predict_speedup_vs_pipeline"])],
        *(onnx_rows(r) if "onnx_predict_images_per_second_median" in r else []),
        ["preprocessing images/s, plain", ips("preprocess_images_per_second"), "", ""],
        ["preprocessing images/s, augmented", ips("preprocess_augmented_images_per_second"), "",
         f"{r['preprocess_augmented_vs_ft_training']:.1f}x vs fine-tune training images/s"],
        ["model forward images/s (inference)", ips("model_inference_images_per_second"), "", ""],
    ]
    head = ["measure", "tl-hub median (min–max)", "peer median (min–max)", "ratio"]
    note = (f"{sizes['train']} training and {sizes['val']} validation images, {r['repeats']} timed runs of each side; "
            f"{r['device']}, mixed precision {r['mixed_precision']}; finished {when(r['date'])}, {machine(r['host'])}")
    if "int8_parity" in r:
        q = r["int8_parity"]["int8"]
        note += (f". Model on disk: PyTorch {r['pytorch_model_mb']:.1f} MB, ONNX fp32 {r['onnx_model_mb']:.1f} MB "
                 f"(largest logit difference to PyTorch {r['onnx_parity']['fp32']['max_abs_diff']:.1e}), int8 "
                 f"{r['int8_model_mb']:.1f} MB (on {q['images']} validation images: top-1 agreement with fp32 "
                 f"{q['top1_agreement']:.1%}, accuracy {q['accuracy_fp32']:.3f} → {q['accuracy_int8']:.3f})")
    return "\n\n".join([table(head, rows), caption(note)])


def onnx_rows(r: dict) -> list[list[str]]:
    """The rows of predicting through ONNX Runtime (`tl_hub.export`), fp32 and int8, against the pipeline."""
    rows = []
    for name, what in (("onnx", "fp32"), ("int8", "int8")):
        rows.append([f"predict images/s through ONNX Runtime, {what} (vs pipeline)",
                     cell(r, f"{name}_predict_images_per_second"), cell(r, "pipeline_images_per_second"),
                     f"{r[f'{name}_predict_vs_pipeline']:.2f}x"])
    for name, what in (("onnx", "fp32"), ("int8", "int8")):
        rows.append([f"first predict, fresh process, ONNX {what} (vs pipeline)",
                     cell(r, f"first_predict_{name}_seconds", " s", 2), cell(r, "first_predict_pipeline_seconds", " s", 2),
                     faster(r[f"{name}_first_predict_speedup_vs_pipeline"])])
    return rows


def performance_targets(r: dict) -> str:
    """The targets `benchmarks/run.py` checks, with the measured ratio."""
    rows = [[f"`{name}`", f"{'≤' if 'at_most' in t else '≥'} {t.get('at_most', t.get('at_least')):g}",
             f"{t['value']:.2f}", "met" if t["met"] else "**not met**"] for name, t in r["targets"].items()]
    accuracy = (f"accuracy after {r['sizes']['fe_epochs']} feature-extraction epochs (median): tl-hub "
                f"{r['fe_accuracy_median']:.3f} (kept epoch), Trainer {r['fe_trainer_accuracy_median']:.3f} (last epoch)")
    return "\n\n".join([table(["target", "wanted", "measured", ""], rows), caption(accuracy)])


def scaling(result: dict) -> str:
    """Feature extraction at 1k, 10k and 100k images: time, memory, the cache."""
    rows = [[f"{r['n_train']:,} + {r['n_val']:,}", f"{r['seconds']:.1f} ({r['seconds_min']:.1f}–{r['seconds_max']:.1f})",
             f"{r['ms_per_image']:.3f}", f"{r['loop_seconds']:.1f}", f"{r['anon_growth_mb']:.0f}",
             f"{r['rss_growth_mb']:.0f}", f"{r['features_mb']:.1f}", f"{r['cache_disk_mb']:.1f}"]
            for r in result["results"]]
    header = ["images (train + validation)", "fit seconds, median (min–max)", "ms per image",
              "in the loop (solve, evaluation) s", "anonymous memory growth MB",
              "resident growth MB (incl. mapped files)", "features MB", "disk cache MB"]
    m = result["model"]
    model = (f"ViT {m['image_size']}×{m['image_size']}, patch {m['patch_size']}, hidden {m['hidden_size']}, "
             f"{m['layers']} layers; {result['epochs']} epochs; median of {result['results'][0]['repeats']} fits")
    return "\n\n".join([table(header, rows), caption(model, f"{when(result['date'])}, {machine(result['host'])}")])


def threads(result: dict) -> str:
    """Seconds of one training step on 1 thread and on every core, idle and beside another CPU-bound process."""
    cores = result["cores"]
    rows = []
    for state, models in result["results"].items():
        for name, r in models.items():
            one, many = r["threads_1"], r.get(f"threads_{cores}", r["threads_1"])
            step = lambda m: f"{m['median']:.3f} ({m['min']:.3f}–{m['max']:.3f})"  # noqa: E731
            rows.append([name, state, f"{r['step_gflops']:.1f}", step(one), step(many),
                         f"{many['median'] / one['median']:.2f}×", f"{r['auto']} ({r['auto_reason']})"])
    header = ["model", "machine", "GFLOPs per step", "1 thread, s", f"{cores} threads, s", f"{cores} vs 1",
              '`threads="auto"` picks']
    note = f"median (min–max) of {result['repeats']} steps at batch 32; {when(result['date'])}, {cores} cores"
    return "\n\n".join([table(header, rows), caption(note)])


def fe_breakdown(result: dict) -> str:
    """Where the time of a feature-extraction fit goes, per phase, with the disk and the memory cache (the JSON line
    of `benchmarks/fe_breakdown.py`)."""
    caches = [c for c in ("disk", "memory") if c in result]
    phases = list(dict.fromkeys(p for c in caches for p in result[c]))
    rows = []
    for p in phases:
        row = [p]
        for c in caches:
            v, total = result[c].get(p), result[c]["whole fit"]["median"]
            row.append("—" if v is None else f"{v['median']:.3f} ({v['min']:.3f}–{v['max']:.3f}) s, "
                                            f"{100 * v['median'] / total:.1f}%")
        rows.append(row)
    sizes = result["sizes"]
    note = (f"{sizes['train']:,} training and {sizes['validation']:,} validation images, {sizes['epochs']} epochs; "
            f"median (min–max) of {result['repeats']} fits with each cache after a warm-up, interleaved, and the "
            f"phase's share of the median fit; {when(result['date'])}, {machine(result['host'])}")
    return "\n\n".join([table(["phase"] + [f"{c} cache" for c in caches], rows), caption(note)])


def onnx_cell(onnx) -> str:
    """The ONNX column of the architecture table: the export's largest logit difference, or why it cannot export."""
    if onnx is None:
        return "not run"
    return onnx if isinstance(onnx, str) else f"✓ ({onnx['max_abs_diff']:.1g})"


def architectures(result: dict) -> str:
    """The architecture check per model type (`python tests/support/arch_check.py --json ...`)."""
    out = []
    rows = result["rows"]
    for r in rows:
        if "error" in r:
            out.append([r["type"], r["error"], "", "", "", "", "", ""])
            continue
        ddp = r.get("ddp")
        cut = "whole encoder" if r["prefix_cut"] == "-" else f"`{r['prefix_cut']}`"
        out.append([r["type"], "passes", str(r["blocks"]), f"`{', '.join(r['head'])}`",
                    "yes" if "lora" in r else "no linear layers", cut,
                    "not run" if ddp is None else f"✓ ({ddp['max_difference']:.1g})", onnx_cell(r.get("onnx"))])
    passing = sum("error" not in r and isinstance(r.get("onnx"), dict) for r in rows)
    note = (f"{passing} of {len(rows)} types pass everything; {result['transformers']} transformers; "
            f"{result['minutes']:g} minutes; finished {result['date']}, {machine(result['host'])}")
    return "\n\n".join([table(["model type", "result", "blocks", "head", "LoRA", "top-2 on cached prefix (cut)",
                                "2 processes (largest metric difference)", "ONNX export (largest logit difference)"],
                               out), caption(note)])


# ---------------------------------------------------------------------------------------------------------------------
# The README's headline figures


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label and imbalanced classes (benchmarks/multilabel.py)


ML_METHODS = {"feature-extraction": "tl-hub feature extraction", "fine-tune": "tl-hub fine-tune",
              "hand BCE fine-tune": "hand BCE fine-tune", "probe": "scikit-learn one-vs-rest probe"}


def run_caption(result: dict, name: str) -> str:
    """``seeds 0, 1, 2; 2026-12-06 10:40 UTC; Intel Xeon, 2 cores, ...`` for the result file ``name`` of
    `benchmarks/multilabel.py`."""
    return caption(f"seeds {', '.join(map(str, result['seeds']))}", when(result["date"]), machine(result["host"]),
                   source(name))


def multilabel(result: dict) -> str:
    """Test mAP and macro-F1 of each method on the mosaics: mean over the seeds (min–max), the best in bold."""
    ml = result["multilabel"]
    best = {key: best_keys({m: r["mean"][key] for m, r in ml.items()}) for key in ("mAP", "f1")}
    rows = [[ML_METHODS.get(m, m)] + [bold_if(spread(r["runs"][key]), m in best[key]) for key in ("mAP", "f1")]
            + [f"{r['median_seconds']:.0f}"] for m, r in ml.items()]
    return "\n\n".join([table(["method", "test mAP", "test macro-F1", "median seconds"], rows),
                        run_caption(result, "multilabel")])


def imbalance(result: dict, name: str = "imbalance") -> str:
    """Accuracy, balanced accuracy and macro-F1 on a balanced test set per training imbalance, default against
    ``class_weighting='none'``."""
    rows = []
    for ratio, runs in result["imbalance"].items():
        for m, r in runs.items():
            recipe, _, weighting = m.partition(", ")
            rows.append([ratio, METHODS.get(recipe, recipe), f"`{weighting}`" if weighting else "default (`auto`)"]
                        + [spread(r["runs"][k]) for k in ("accuracy", "balanced_accuracy", "f1")])
    return "\n\n".join([table(["imbalance", "recipe", "class weighting", "accuracy", "balanced accuracy",
                                "macro-F1"], rows), run_caption(result, name)])


def multilabel_targets(result: dict) -> str:
    """The targets `benchmarks/multilabel.py` checks, with their margins in points."""
    rows = [[c["part"], f"`{c['target']}`", f"{'✓' if c['ok'] else '✗'} {signed(100 * c['margin'])}"]
            for c in result["targets"]]
    return table(["part", "target", "margin (points)"], rows)


def points_range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}–{high:.0f}"


def headline(real: dict, run: dict, rank_real: dict, rank_glyph: dict, ml: dict, imb: dict, trust: dict) -> str:
    """A few lines of measured figures for the README, each with its page in the docs."""
    t = transfer_summary(real)
    default = rank_real["default_score"]
    tau_real, tau_glyph = rank_real["summary"][default]["mean_tau"], rank_glyph["summary"][default]["mean_tau"]
    picks = [e[default]["top"] == e[default]["best"] for r in (rank_real, rank_glyph) for e in r["evaluation"].values()]
    share = f"{min(t['time_share']):.0%}–{max(t['time_share']):.0%}"
    probe = (f"within {-min(t['fe_vs_probe']):.1f} points of a scikit-learn probe or above it"
             if min(t["fe_vs_probe"]) < 0 else "at or above a scikit-learn probe")
    lines = [
        f"- **Defaults that transfer** (ImageNet EfficientNet-Lite0 at 224 px, {t['tasks']} real tasks × {t['seeds']} "
        f"seeds, 2 CPU cores): the default fine-tune beats a hand-written fine-tune by {points_range(t['over_hand'])} "
        f"points in {share} of its time ({min(t['ft_seconds']):.0f}–{max(t['ft_seconds']):.0f} s a run), feature "
        f"extraction is {probe}, transfer beats scratch by {points_range(t['over_scratch'])} points; {t['held']} of "
        f"{t['targets']} targets hold ([transfer benchmark](docs/benchmarks/transfer.md)).",
        f"- **Fast where it matters** (the same model, {run['sizes']['train']} training images): feature extraction "
        f"runs {run['fe_speedup_vs_trainer']:.1f}× faster than {run['sizes']['fe_epochs']} epochs of the transformers "
        f"`Trainer` with a frozen encoder, at {run['fe_vs_floor']:.2f}× the time of loading the model and one "
        f"inference pass over the images; fine-tuning the top 2 blocks on the cached frozen prefix trains "
        f"{run['top2_cached_speedup_vs_full']:.0f}× the images/s of a full fine-tune "
        "([performance](docs/benchmarks/performance.md)).",
        f"- **Pick the base before training**: `tl_hub.rank`'s default score (`{default}`) orders real candidates with "
        f"a weighted Kendall τ of {tau_real:.3f} against their fine-tuned accuracy ({tau_glyph:.3f} on a second "
        f"tier) and picks the best base on {sum(picks)} of {len(picks)} targets "
        "([ranking benchmark](docs/benchmarks/ranking.md)).",
        multilabel_headline(ml, imb),
        trust_headline(trust),
    ]
    return "\n".join(lines)


def multilabel_headline(ml: dict, imb: dict) -> str:
    """The README line of `benchmarks/multilabel.py`: mAP against the references, and the macro-F1 that class
    weighting gains at each imbalance."""
    m = {k: v["mean"]["mAP"] for k, v in ml["multilabel"].items()}
    gains = [(ratio, 100 * (statistics.mean(runs["feature-extraction"]["runs"]["f1"])
                            - statistics.mean(runs["feature-extraction, none"]["runs"]["f1"])))
             for ratio, runs in imb["imbalance"].items() if not ratio.startswith("1:")]
    return (f"- **Multi-label and imbalanced data** (the same model, mosaics of clothing, {len(ml['seeds'])} seeds): "
            f"default fine-tune mAP {m['fine-tune']:.3f} against {m['hand BCE fine-tune']:.3f} for a hand BCE "
            f"fine-tune, feature extraction {m['feature-extraction']:.3f} against {m['probe']:.3f} for a one-vs-rest "
            "probe; on imbalanced classes the default class weighting gains "
            + ", ".join(f"{signed(g)} macro-F1 points at {r}" for r, g in gains)
            + " ([multi-label and imbalance](docs/benchmarks/multilabel.md)).")


# ---------------------------------------------------------------------------------------------------------------------
# The data audit (benchmarks/audit.py)


def audit(result: dict) -> str:
    """Per share of flipped labels: flagged images, precision and recall against the flips, test accuracy of
    feature extraction keeping, dropping the flagged images and on clean labels, near-duplicate recall (the
    lowest over the seeds) and unplanted pairs found, the audit's seconds (of which the encoder pass)."""
    rows = []
    for rate, m in result["summary"].items():
        rows.append([f"{float(rate):.0%}", f"{m['flagged']:.1f}", f"{m['precision']:.2f}", f"{m['recall']:.2f}",
                     f"{m['accuracy_keep']:.3f}", f"{m['accuracy_drop']:.3f}", f"{m['accuracy_clean']:.3f}",
                     f"{m['min_duplicate_recall']:.2f}", f"{m['duplicate_false_positives']:.1f}",
                     f"{m['audit_seconds']:.0f} ({m['encode_seconds']:.0f})"])
    header = ["labels flipped", "flagged", "precision", "recall", "test acc. keep", "drop flagged", "clean labels",
              "duplicate recall", "unplanted pairs", "audit s (encoder)"]
    return "\n\n".join([table(header, rows), run_caption(result, "audit")])


# ---------------------------------------------------------------------------------------------------------------------
# Calibration, WiSE-FT and test-time augmentation (benchmarks/trust.py)

RECIPE_SHORT = {"feature-extraction": "feature extraction", "fine-tune": "fine-tune"}


def mean_range(figure: dict, digits: int = 3) -> str:
    """``mean (min–max)`` of one figure of `benchmarks/trust.py`."""
    return f"{figure['mean']:.{digits}f} ({figure['min']:.{digits}f}–{figure['max']:.{digits}f})"


def trust_calibration(result: dict) -> str:
    """Test ECE and NLL of each recipe's model without and with the temperature fitted on validation."""
    rows = []
    for task, recipes in result["tasks"].items():
        for recipe, r in recipes.items():
            better = r["ece_after"]["mean"] <= r["ece_before"]["mean"]
            rows.append([task, RECIPE_SHORT[recipe], mean_range(r["temperature"], 2), mean_range(r["ece_before"]),
                         bold_if(mean_range(r["ece_after"]), better), mean_range(r["nll_before"]),
                         bold_if(mean_range(r["nll_after"]), r["nll_after"]["mean"] <= r["nll_before"]["mean"])])
    header = ["task", "recipe", "temperature", "test ECE without", "with", "test NLL without", "with"]
    return "\n\n".join([table(header, rows), trust_caption(result)])


def trust_caption(result: dict) -> str:
    return caption(f"seeds {', '.join(map(str, result['seeds']))}", when(result["date"]), machine(result["host"]),
                   source("trust"))


def int8_accuracy(result: dict) -> str:
    """int8 against fp32 on the real tier's test images (`benchmarks/int8.py`): the accuracy of each, the change in
    points and the top-1 agreement (mean over the seeds, min–max), and the classes that lose the most."""
    rows = []
    for task, recipes in result["tasks"].items():
        for recipe, r in recipes.items():
            change = r["accuracy_change_points"]
            worst = sorted(r["per_class_change_points"].items(), key=lambda kv: kv[1])[:2]
            losses = ", ".join(f"{label} {signed(points)}" for label, points in worst if points < 0) or "none"
            rows.append([task, RECIPE_SHORT[recipe], mean_range(r["accuracy_fp32"]), mean_range(r["accuracy_int8"]),
                         f"{signed(change['mean'])} ({signed(change['min'])} to {signed(change['max'])})",
                         f"{r['top1_agreement']['mean']:.1%}", losses])
    header = ["task", "recipe", "fp32 accuracy", "int8 accuracy", "change (points)", "top-1 agreement",
              "classes that lose most (points)"]
    note = caption(f"seeds {', '.join(map(str, result['seeds']))}", f"{result['test_images_per_class']} test images "
                   f"per class", f"calibrated on {result['calibration_images']} training images",
                   f"the first {result['float_front']:.0%} of the convolutions and matrix products and the depthwise "
                   "ones in float" if "float_front" in result else "",
                   f"mean change {signed(result['mean_change_points'])} points, worst run "
                   f"{signed(result['worst_change_points'])}", when(result["date"]), machine(result["host"]),
                   source("int8"))
    return "\n\n".join([table(header, rows), note])


def trust_wise_ft(result: dict) -> str:
    """Fine-tune test accuracy, in distribution and shifted, of plain fine-tuning (α = 1), WiSE-FT with α chosen on
    validation, α = 0.5, and the start (α = 0)."""
    rows = []
    for task, recipes in result["tasks"].items():
        r = recipes["fine-tune"]
        for split in ("test", "shifted"):
            values = {name: r[f"{name}_{split}"]["mean"] for name in ("plain", "wise_auto", "wise_half", "start")}
            best = best_keys(values)
            rows.append([task, "test" if split == "test" else f"shifted ({result['shift']})"]
                        + [bold_if(mean_range(r[f"{name}_{split}"]), name in best) for name in values]
                        + [f"{r['alpha']['mean']:.2f}" if split == "test" else ""])
    header = ["task", "test set", "plain fine-tune (α = 1)", "WiSE-FT, α on validation", "α = 0.5",
              "start (α = 0)", "mean α chosen"]
    return "\n\n".join([table(header, rows), trust_caption(result)])


def trust_tta(result: dict) -> str:
    """Test accuracy, ECE and evaluation seconds without and with every view test-time augmentation allows."""
    rows = []
    for task, recipes in result["tasks"].items():
        for recipe, r in recipes.items():
            gain = 100 * (r["tta_all_views_accuracy"]["mean"] - r["tta_none_accuracy"]["mean"])
            cost = r["tta_all_views_seconds"]["mean"] / r["tta_none_seconds"]["mean"]
            rows.append([task, RECIPE_SHORT[recipe], mean_range(r["tta_none_accuracy"]),
                         mean_range(r["tta_all_views_accuracy"]), signed(gain), f"{r['tta_none_ece']['mean']:.3f}",
                         f"{r['tta_all_views_ece']['mean']:.3f}", f"{r['tta_views']}", f"{cost:.1f}×"])
    header = ["task", "recipe", "accuracy, tta=1", "all views", "points", "ECE, tta=1", "all views", "views",
              "evaluation time"]
    return "\n\n".join([table(header, rows), trust_caption(result)])


def trust_headline(result: dict) -> str:
    """The README line of `benchmarks/trust.py`."""
    cases = [r for t in result["tasks"].values() for r in t.values()]
    ece = [(r["ece_before"]["mean"], r["ece_after"]["mean"]) for r in cases]
    nll_better = sum(r["nll_after"]["mean"] < r["nll_before"]["mean"] for r in cases)
    lower, never_higher = sum(a < b for b, a in ece), all(a <= b for b, a in ece)
    alphas = [a for t in result["tasks"].values() for a in t["fine-tune"]["alpha"]["runs"]]
    tta = [100 * (r["tta_all_views_accuracy"]["mean"] - r["tta_none_accuracy"]["mean"]) for r in cases]
    cost = [r["tta_all_views_seconds"]["mean"] / r["tta_none_seconds"]["mean"] for r in cases]
    alpha_text = (f"kept α = {alphas[0]:g} in all {len(alphas)} runs" if len(set(alphas)) == 1
                  else f"chose α from {min(alphas):g} to {max(alphas):g}")
    return (f"- **Calibrated scores** (the same model, {len(result['tasks'])} tasks × {len(result['seeds'])} seeds): "
            f"the temperature fitted on validation lowers the mean test ECE in {lower} of {len(ece)} task × recipe "
            f"cases ({min(b for b, _ in ece):.3f}–{max(b for b, _ in ece):.3f} → {min(a for _, a in ece):.3f}–"
            f"{max(a for _, a in ece):.3f}"
            + ("; it raises it in none" if never_higher else "") + f") and the NLL in {nll_better}; WiSE-FT with α "
            f"chosen on validation {alpha_text}, and test-time augmentation moved accuracy by {signed(min(tta))} to "
            f"{signed(max(tta))} points at {min(cost):.0f}–{max(cost):.0f}× the evaluation time, so both are off by "
            "default ([trust benchmark](docs/benchmarks/trust.md)).")


# ---------------------------------------------------------------------------------------------------------------------
# Registry, figures and the rewrite


TABLES: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "transfer_real": (lambda r: transfer_accuracy(r, with_seconds=True), ("transfer_real",)),
    "transfer_real_oracle": (transfer_oracle, ("transfer_real",)),
    "transfer_real_targets": (transfer_targets, ("transfer_real",)),
    "transfer_references": (transfer_references, ("transfer_references",)),
    "transfer": (lambda r: transfer_accuracy(r, with_seconds=False), ("transfer",)),
    "transfer_seconds": (transfer_seconds, ("transfer",)),
    "transfer_oracle": (transfer_oracle, ("transfer",)),
    "transfer_targets": (transfer_targets, ("transfer",)),
    "transfer_ablation": (transfer_ablation, ("transfer_ablation",)),
    "rank_real_truth": (rank_truth, ("rank_real_truth", "rank_real")),
    "rank_real_scores": (rank_scores, ("rank_real",)),
    "rank_real_cost": (rank_cost, ("rank_real",)),
    "rank_real_targets": (rank_targets, ("rank_real",)),
    "rank_truth": (rank_truth, ("rank_truth", "rank")),
    "rank_scores": (rank_scores, ("rank",)),
    "rank_cost": (rank_cost, ("rank",)),
    "rank_targets": (rank_targets, ("rank",)),
    "quadrants": (quadrants, ("quadrants",)),
    "best_epoch": (best_epoch, ("best_epoch",)),
    "run_lite0": (performance, ("run_lite0",)),
    "run_lite0_targets": (performance_targets, ("run_lite0",)),
    "run_vit": (performance, ("run_vit",)),
    "run_vit_targets": (performance_targets, ("run_vit",)),
    "fe_breakdown": (fe_breakdown, ("fe_breakdown",)),
    "scaling": (scaling, ("scaling",)),
    "threads": (threads, ("threads",)),
    "architectures": (architectures, ("architectures",)),
    "multilabel": (multilabel, ("multilabel",)),
    "multilabel_targets": (multilabel_targets, ("multilabel",)),
    "imbalance": (imbalance, ("imbalance",)),
    "imbalance_targets": (multilabel_targets, ("imbalance",)),
    "imbalance_fine_tune": (lambda r: imbalance(r, "imbalance_fine_tune"), ("imbalance_fine_tune",)),
    "imbalance_fine_tune_targets": (multilabel_targets, ("imbalance_fine_tune",)),
    "audit": (audit, ("audit",)),
    "trust_calibration": (trust_calibration, ("trust",)),
    "trust_wise_ft": (trust_wise_ft, ("trust",)),
    "trust_tta": (trust_tta, ("trust",)),
    "int8": (int8_accuracy, ("int8",)),
    "headline": (headline, ("transfer_real", "run_lite0", "rank_real", "rank", "multilabel", "imbalance", "trust")),
}
# PNGs the benchmark scripts write, shown in the docs: copied into docs/assets/ (the site holds only docs/)
COPIED = ("rank.png", "rank_real.png", "scaling.png")


def draw_transfer(path: str, digest: str, result: dict) -> None:
    """Bars of test accuracy per task and method (mean over the seeds, min–max as error bars), written atomically;
    ``digest`` (of the inputs) goes into the PNG's text, for `stale_figures`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    methods = list(next(iter(result["tasks"].values()))["runs"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, m in enumerate(methods):
        runs = [result["tasks"][t]["runs"][m] for t in tasks]
        means = [statistics.mean(r) for r in runs]
        errors = [[a - min(r) for a, r in zip(means, runs)], [max(r) - a for a, r in zip(means, runs)]]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=METHODS[m], color=plt.cm.tab10(i))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"test accuracy (mean of {len(result['seeds'])} seeds)")
    ax.set_title("ImageNet EfficientNet-Lite0 at 224 px, default settings: tl-hub vs hand-written references")
    ax.legend(ncols=len(methods), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tables-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, metadata={"Software": None, "Source": digest})
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


# figures drawn here: file under docs/assets/ -> (function(path, digest, *results), result files)
DRAWN: dict[str, tuple[Callable[..., None], tuple[str, ...]]] = {"transfer_real.png": (draw_transfer, ("transfer_real",))}


def load(name: str):
    with open(os.path.join(RESULTS, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def render(name: str) -> str:
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    function, inputs = TABLES[name]
    return function(*(load(i) for i in inputs))


def documents() -> list[str]:
    """The Markdown files that may hold generated blocks: README.md and everything under docs/."""
    docs = []
    for folder, _, files in os.walk(os.path.join(ROOT, "docs")):
        docs += [os.path.join(folder, f) for f in files if f.endswith(".md")]
    return [os.path.join(ROOT, "README.md"), *sorted(docs)]


def regenerated(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rendered afresh, and the names of the blocks that changed."""
    stale = []

    def replace(match: re.Match) -> str:
        body = f"\n{render(match.group(2))}\n\n"
        if body != match.group(3):
            stale.append(match.group(2))
        return match.group(1) + body + match.group(4)

    return MARKED.sub(replace, text), stale


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tables-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def file_mode(path: str) -> int:
    """The mode ``path`` has, or a new file's under the current umask (a temporary file is created 0600)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def inputs_digest(inputs: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in inputs:
        with open(os.path.join(RESULTS, f"{name}.json"), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def stale_figures() -> list[str]:
    """Figures under docs/assets/ that are missing, differ from their copied PNG, or were drawn from other results."""
    from PIL import Image

    stale = []
    for name in COPIED:
        target = os.path.join(ASSETS, "results", name)
        with open(os.path.join(RESULTS, name), "rb") as f:
            wanted = f.read()
        if not os.path.exists(target) or open(target, "rb").read() != wanted:
            stale.append(f"docs/assets/results/{name}")
    for name, (_, inputs) in DRAWN.items():
        target = os.path.join(ASSETS, name)
        if not os.path.exists(target) or Image.open(target).text.get("Source") != inputs_digest(inputs):
            stale.append(f"docs/assets/{name}")
    return stale


def update_figures() -> list[str]:
    stale = stale_figures()
    for name in COPIED:
        if f"docs/assets/results/{name}" in stale:
            with open(os.path.join(RESULTS, name), "rb") as f:
                write_atomic(os.path.join(ASSETS, "results", name), f.read())
    for name, (draw, inputs) in DRAWN.items():
        if f"docs/assets/{name}" in stale:
            draw(os.path.join(ASSETS, name), inputs_digest(inputs), *(load(i) for i in inputs))
    return stale


def check() -> list[str]:
    """``path: block`` for every generated block that differs from the results, and every stale figure."""
    stale = []
    for path in documents():
        with open(path, encoding="utf-8") as f:
            _, names = regenerated(f.read())
        stale += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names]
    return stale + stale_figures()


def update() -> list[str]:
    """Rewrite every stale block and figure in place; returns what changed."""
    changed = []
    for path in documents():
        with open(path, encoding="utf-8") as f:
            text, names = regenerated(f.read())
        if names:
            write_atomic(path, text.encode("utf-8"))
            changed += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names]
    return changed + update_figures()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check: exit 1, naming the stale blocks and figures.")
    parser.add_argument("--print", metavar="TABLE", choices=sorted(TABLES), help="Print one table and exit.")
    args = parser.parse_args(argv)
    if args.print:
        print(render(args.print))
        return 0
    if args.check:
        stale = check()
        for s in stale:
            print(f"stale: {s}")
        if stale:
            print("run `python benchmarks/tables.py` to regenerate them", file=sys.stderr)
        return 1 if stale else 0
    for s in update():
        print(f"rewrote {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
