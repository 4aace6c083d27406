"""Resumable training checkpoints.

A checkpoint is a folder ``checkpoint-<optimizer step>`` inside the run's checkpoint folder, holding what
``accelerator.save_state`` writes (the weights of the module being trained, optimizer, LR scheduler, gradient
scaler and every process's RNG states) and ``tl_hub_state.json``: where training stands (period, epoch, batches
of the epoch already trained, optimizer steps, the running loss of the epoch, the history so far) and what run
wrote it (recipe, model, training settings, labels, data fingerprints, number of processes).

Writes are atomic: every process writes into ``.checkpoint-N.tmp``, then the main process renames it into place,
so a folder named ``checkpoint-N`` is always complete; a run killed while writing leaves only a hidden temporary
folder, which the next save removes.  Only the newest ``keep`` checkpoints are kept.

Resuming (``resume_from_checkpoint="latest"`` or a path) continues the same run: the period, the epoch, the data
order (the sampler is seeded per epoch, and the batches already trained in the interrupted epoch are skipped),
the LR schedule and the RNG streams, so the resumed run ends with the metrics of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError, ModelError, OutputError, first_line
from .outputs import atomic_path, check_output_dir, read_json, write_json
from .runtime import PROGRESS_LOGGER

logger = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)  # the lines a run shows by default

STATE_FILE = "tl_hub_state.json"
PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class TrainingState:
    """Where training stands at a checkpoint.

    Attributes:
        period: index of the period in progress (or just finished) in the recipe's list of periods.
        period_epoch: epochs of that period already completed.
        batches: batches of the epoch in progress already trained (0 at an epoch end).
        step: optimizer steps taken so far, over all periods.
        loss_sum / seen: the running training-loss sum and example count of the epoch in progress (all processes).
        history: the per-epoch records so far.
        best_epoch: the epoch with the best validation metrics so far (its weights are in ``best.safetensors``).
    """

    period: int = 0
    period_epoch: int = 0
    batches: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seen: float = 0.0
    history: list = field(default_factory=list)
    best_epoch: int = 0


@dataclass
class ResumePoint:
    """A checkpoint to continue from: its folder and the training state it holds."""

    path: str
    state: TrainingState
    run: dict


def checkpoint_steps(directory: str) -> list[tuple[int, str]]:
    """The complete checkpoints in ``directory`` as ``(step, path)``, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str) -> Optional[str]:
    found = checkpoint_steps(directory)
    return found[-1][1] if found else None


def _remove(path: str) -> None:
    """Delete a folder so that an interruption never leaves a damaged folder under a checkpoint's name."""
    if not os.path.exists(path):
        return
    doomed = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


class Checkpointer:
    """Writes checkpoints of one run into ``directory`` and keeps the newest ``keep``.

    Args:
        directory: the run's checkpoint folder (on a file system every process can reach).
        save_steps: also save every this many optimizer steps (0: at epoch ends only).
        keep: how many checkpoints to keep.
        run: what identifies the run (recorded, and compared on resume).
    """

    def __init__(self, directory: str, *, save_steps: int = 0, keep: int = 2, run: Optional[dict] = None):
        check_output_dir(directory, overwrite=True, what="Checkpoint")  # a file or not writable: fail before training
        self.directory = os.path.abspath(directory)
        self.save_steps = save_steps
        self.keep = keep
        self.run = run or {}

    def existing(self) -> list[tuple[int, str]]:
        return checkpoint_steps(self.directory)

    def clear(self) -> None:
        """Delete this folder's checkpoints (a fresh run that replaces an earlier one)."""
        for _, path in self.existing():
            _remove(path)

    def due(self, step: int) -> bool:
        return bool(self.save_steps) and step % self.save_steps == 0

    def save(self, accelerator, state: TrainingState, extra: Optional[Callable[[str], None]] = None) -> str:
        """Write a checkpoint of the objects ``accelerator`` prepared plus ``state``; return its folder.

        Call on every process (each writes its RNG states); the main process renames the finished folder into
        place and deletes the oldest checkpoints beyond ``keep``.  ``extra(folder)``, if given, writes more files
        into the checkpoint (on the main process).
        """
        name = f"{PREFIX}{state.step}"
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name}.tmp")
        main = accelerator.is_main_process
        if main:
            os.makedirs(self.directory, exist_ok=True)
            for stale in os.listdir(self.directory):  # left by a run killed while writing or deleting
                if stale.startswith(f".{PREFIX}"):
                    shutil.rmtree(os.path.join(self.directory, stale), ignore_errors=True)
        try:
            with atomic_path(final, directory=True, temp=tmp, owner=main):
                accelerator.wait_for_everyone()  # the folder exists before any process writes into it
                accelerator.save_state(tmp, safe_serialization=True)
                # save_state does not wait: every process's RNG file must be in the folder before it is renamed
                accelerator.wait_for_everyone()
                if main:
                    if extra is not None:
                        extra(tmp)
                    write_json(os.path.join(tmp, STATE_FILE), {"state": dataclasses.asdict(state), "run": self.run})
        except OSError as e:  # e.g. the disk is full: the earlier checkpoints are still complete
            shutil.rmtree(tmp, ignore_errors=True)
            kept = self.existing()
            raise OutputError(
                f"Could not write checkpoint {final} ({e.strerror or first_line(e)}); "
                + (f"the last complete one, {kept[-1][1]}, is kept. " if kept else "")
                + "Free space or choose another --checkpoint-dir, then resume with --resume-from-checkpoint latest."
            ) from None
        if accelerator.is_main_process:
            for _, old in self.existing()[:-self.keep]:
                _remove(old)
            progress_log.info("Saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final


def resolve_checkpoint(spec: str, directory: Optional[str]) -> str:
    """The checkpoint folder meant by ``spec``: ``"latest"`` (the newest complete one in ``directory``) or a path
    (a checkpoint folder, or a checkpoint folder's parent, whose newest checkpoint is used)."""
    if spec == "latest":
        if not directory:
            raise ConfigError("resume_from_checkpoint='latest' needs checkpoint_dir (--checkpoint-dir), the folder "
                              "the interrupted run wrote its checkpoints to.")
        path = latest_checkpoint(directory)
        if path is None:
            raise ConfigError(f"There is no complete checkpoint in '{os.path.abspath(directory)}' to resume from; "
                              "start the run without resume_from_checkpoint (--resume-from-checkpoint).")
        return path
    if not os.path.isdir(spec):
        raise ConfigError(f"Checkpoint '{spec}' does not exist; pass 'latest' or the path of a checkpoint-N folder.")
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        inner = latest_checkpoint(spec)
        if inner is None:
            raise ConfigError(f"'{spec}' is not a tl-hub checkpoint (no {STATE_FILE}) and holds none; pass "
                              "'latest' or the path of a checkpoint-N folder.")
        return inner
    return spec


def read_checkpoint(path: str) -> ResumePoint:
    """Read a checkpoint's training state (the weights are loaded later, into the prepared objects)."""
    data = read_json(os.path.join(path, STATE_FILE))
    try:
        state = TrainingState(**data["state"])
        run = dict(data["run"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"Checkpoint '{path}' has an unreadable {STATE_FILE} ({e}); resume from another "
                         "checkpoint.") from None
    return ResumePoint(path=os.path.abspath(path), state=state, run=run)


def check_same_run(point: ResumePoint, run: dict) -> None:
    """Refuse to resume a checkpoint written by a different run (other settings, data, model or process count),
    naming what differs."""
    diffs = []
    for key in sorted(set(run) | set(point.run)):
        old, new = point.run.get(key), run.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                      if old.get(k) != new.get(k)]
        elif old != new:
            diffs.append(f"{key}: {_short(old)} -> {_short(new)}")
    if diffs:
        raise ConfigError(
            f"Checkpoint '{point.path}' was written by a different run ({'; '.join(diffs)}); resume with the same "
            "model, data, settings and number of processes, or start a new run without --resume-from-checkpoint."
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_checkpoint(accelerator, point: ResumePoint) -> None:
    """Load the checkpoint's weights, optimizer, scheduler and RNG states into what ``accelerator`` prepared."""
    try:
        accelerator.load_state(point.path)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as e:
        raise ModelError(f"Checkpoint '{point.path}' cannot be loaded ({type(e).__name__}: {str(e)[:200]}); it is "
                         "damaged or from another run: resume from another checkpoint.") from None
    # the batches already trained in the interrupted epoch are skipped, not counted again by accumulation
    accelerator.step = 0
