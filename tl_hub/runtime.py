"""Where code runs: the Accelerate set-up shared by training, evaluation, prediction and the advisor.

- `make_accelerator`: an ``Accelerator`` whose global batch is split across processes with a seeded data order.
- `process_state`: the process's rank and device, without building an ``Accelerator``.
- `release_prepared`: forget what an accelerator prepared, so that the next period can prepare its own objects.
- `default_num_workers`: how many processes decode and preprocess images for each training process.

Setting up a process group here also registers its clean end at exit (`tl_hub.shutdown`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Optional

from .errors import ConfigError, first_line
from .shutdown import end_process_group_at_exit

# the logger of the few lines a run shows by default (periods, epochs, checkpoints, the saved model); everything
# else tl-hub logs at INFO is detail (``tl-hub -v``)
PROGRESS_LOGGER = "tl_hub.progress"
"""The logger of the lines a run shows by default."""


@contextlib.contextmanager
def progress_named(name: str):
    """Inside the block, every progress line starts with ``name:`` (the recipe, so that runs side by side, as in
    `tl_hub.compare`, can be told apart)."""
    class Prefix(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not getattr(record, "tl_hub_named", False):
                record.msg, record.tl_hub_named = f"{name}: {record.msg}", True
            return True

    log, prefix = logging.getLogger(PROGRESS_LOGGER), Prefix()
    log.addFilter(prefix)
    try:
        yield
    finally:
        log.removeFilter(prefix)


@contextlib.contextmanager
def progress_shown(show: bool = True):
    """Inside the block, the progress lines (periods, epochs, checkpoints) reach stderr even when the program has not
    set up logging (a Python script or notebook); a program that has (the CLI, ``logging.basicConfig``) keeps its
    own handlers and levels."""
    log = logging.getLogger(PROGRESS_LOGGER)
    if not show or log.hasHandlers():
        yield
        return
    handler, level = logging.StreamHandler(), log.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def process_state():
    """Accelerate's process state, honouring ``ACCELERATE_USE_CPU`` as ``Accelerator`` does (a bare
    ``PartialState()`` created first would otherwise pin a CPU multi-process launch to one process)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes > 1:
        end_process_group_at_exit()
    return state


def is_main_process() -> bool:
    """Whether this is the process that writes outputs and prints results (always true without a launcher)."""
    return process_state().is_main_process


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1, seed: int = 42,
                     cpu: bool = False, log_with: Optional[Sequence[str]] = None, logging_dir: Optional[str] = None):
    """An ``Accelerator`` whose global batch is split across processes and whose data order is seeded,
    so that 1 and N processes see the same batches; ``log_with``: experiment trackers (checked to be installed)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    log_with = check_trackers(log_with) if log_with else None
    if mixed_precision == "fp16" and (cpu or process_state().device.type == "cpu"):
        raise ConfigError("mixed_precision='fp16' needs a GPU: on the CPU Accelerate would silently train in fp32. "
                          "Use bf16 (supported on CPU) or no.")
    try:
        accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=seed),
            log_with=log_with, project_dir=(logging_dir or os.path.join("runs", "tl_hub")) if log_with else None,
        )
    except ValueError as e:
        raise ConfigError(
            f"Cannot set up Accelerate with mixed_precision={mixed_precision!r}: {first_line(e)} "
            "Pass an existing `accelerator=` to fit(), or use the same precision within one process."
        ) from None
    if accelerator.num_processes > 1:
        end_process_group_at_exit()
    return accelerator


def check_trackers(names: Sequence[str]) -> list[str]:
    """``names`` (``"all"``: every installed tracker), each checked to be installed (Accelerate would otherwise
    drop a missing one without a word)."""
    from accelerate.tracking import get_available_trackers

    available = [str(t) for t in get_available_trackers()]
    if "all" in names:
        return available
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"report_to={','.join(names)!r}, but {', '.join(missing)} is not installed; install it "
                          "(`pip install tl-hub[tracking]` installs TensorBoard, MLflow and wandb) or pass "
                          "report_to='none'.")
    return list(names)


def check_batch_size(batch_size: int, num_processes: int, name: str = "batch_size") -> None:
    """A global batch must split evenly across the processes."""
    if batch_size % num_processes:
        raise ConfigError(
            f"`{name}` ({batch_size}) is the global batch and must be divisible by the number of processes "
            f"({num_processes}); pass e.g. {max(num_processes, batch_size // num_processes * num_processes)}."
        )


def release_prepared(accelerator) -> None:
    """Forget the models, optimizers, schedulers and loaders the accelerator prepared (what
    ``Accelerator.free_memory`` does, without its full garbage collection, which costs a noticeable fraction
    of a short head-training period); their memory is freed as soon as nothing else refers to them."""
    for name in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        held = getattr(accelerator, name, None)
        if isinstance(held, list):
            held.clear()
    accelerator.step = 0


# most DataLoader workers per process by default: past this, preprocessing rarely keeps up any better
MAX_DEFAULT_WORKERS = 8


def default_num_workers(device_type: str, processes_per_node: int = 1) -> int:
    """DataLoader workers per training process when ``num_workers`` is not given.

    On the CPU: 0, since the model's forward and backward already use every core and workers would take cores from
    them.  With a GPU, preprocessing becomes the bottleneck (about 2.5k images/s per core at 64 px with a PIL
    processor, far fewer at 224 px, against many thousands a GPU can take), so each process gets its share of
    the cores, less one for itself, at most `MAX_DEFAULT_WORKERS`.

    Example:
        >>> default_num_workers("cpu")
        0
    """
    if device_type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_DEFAULT_WORKERS, cores // max(processes_per_node, 1) - 1))


def processes_per_node(accelerator) -> int:
    """The training processes on this machine (``LOCAL_WORLD_SIZE`` from the launcher, else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
