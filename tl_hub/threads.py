"""How many CPU threads PyTorch computes with: the cores this process may really use, less those other processes
keep busy, and fewer for small work.

PyTorch's default is one intra-op thread per core of the machine.  Its threads wait for each other at the end of
every operation, so when another process holds one of the cores (a CI runner, a shared workstation, a second
job) every operation waits for the thread that is not scheduled: on 2 cores beside one other CPU-bound process a
training step took 2.2x to 2.5x as long on 2 threads as on 1 (`benchmarks/threads.py`), and a whole fine-tuning
epoch of a tiny model once went from 0.1 s to 10 s.  Idle, every step size measured ran as fast or faster on all
cores, down to 0.03 GFLOPs.

- `usable_cpus`: the cores of this process's affinity mask, capped by a cgroup CPU quota (containers, Slurm).
- `cpus_busy_elsewhere`: how many of them other processes kept busy over a short sample (``/proc/stat``).
- `choose_threads`: the thread count for a ``threads`` setting ("auto" or a number) and a step's size in FLOPs.
- `threads_for`: a context that computes with that many threads and restores the previous count after.

``OMP_NUM_THREADS`` set in the environment is the user's choice: "auto" keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Optional, Union

from .errors import ConfigError
from .runtime import PROGRESS_LOGGER

logger = logging.getLogger(__name__)

# each thread gets at least this much of a training step: measured on 2 idle cores (benchmarks/threads.py, and tiny
# test models), steps of 0.03 to 74 GFLOPs ran as fast or faster on 2 threads than on 1 (0.62x to 1.00x the time),
# so only steps smaller than any measured get fewer threads; what slows small and large steps alike is another busy
# process (2.2x to 2.5x slower on 2 threads than on 1)
MIN_FLOPS_PER_THREAD = 1e7
# how long the other processes' load is sampled, and the share of a core that counts as busy
SAMPLE_SECONDS = 0.2
BUSY_SHARE = 0.5


def check_threads(value: Union[str, int, None], name: str = "threads") -> Union[str, int]:
    """``value`` as "auto" or a positive int (the CLI passes text), or a `ConfigError` saying what to write."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"`{name}` should be 'auto' or a whole number of CPU threads of at least 1, got {value!r}.")
    return count


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    candidates = [(os.path.join(root, "cpu.max"), None)]
    for folder in ("cpu", "cpu,cpuacct"):
        base = os.path.join(root, folder)
        candidates.append((os.path.join(base, "cpu.cfs_quota_us"), os.path.join(base, "cpu.cfs_period_us")))
    for quota_path, period_path in candidates:
        try:
            with open(quota_path) as f:
                text = f.read().split()
            if period_path is None:  # v2: "max 100000" or "150000 100000"
                quota, period = text[0], text[1]
            else:
                with open(period_path) as f:
                    quota, period = text[0], f.read().split()[0]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        return max(int(quota) / int(period), 0.01)
    return None


def affinity() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """Whole cores this process may compute on: its affinity mask, capped by the cgroup quota (at least 1)."""
    cores = len(affinity())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.floor(limit + 1e-9))
    return max(cores, 1)


def _cpu_times(cpus: set[int]) -> Optional[tuple[float, float]]:
    """(busy, total) clock ticks of ``cpus`` since boot, from ``/proc/stat`` (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [float(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def cpus_busy_elsewhere(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's CPUs other processes kept busy over ``seconds`` (0 where it cannot be read)."""
    cpus = affinity()
    own_start, before = time.process_time(), _cpu_times(cpus)
    if before is None:
        return 0.0
    time.sleep(seconds)
    own, after = time.process_time() - own_start, _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return 0.0
    busy_share = (after[0] - before[0]) / (after[1] - before[1])
    return max(0.0, busy_share * len(cpus) - own / seconds)


def choose_threads(setting: Union[str, int, None] = "auto", step_flops: Optional[float] = None,
                   processes: int = 1, device_type: str = "cpu") -> tuple[int, str]:
    """The intra-op thread count for ``setting`` and why, as ``(threads, reason)``.

    "auto": ``OMP_NUM_THREADS`` when set; PyTorch's own count when the model runs on an accelerator; else this
    process's share of the usable cores (``processes`` per machine) less those other processes keep busy, and no
    more than one per `MIN_FLOPS_PER_THREAD` of a step, at least 1.
    """
    import torch

    setting = check_threads(setting)
    if setting != "auto":
        return setting, "set"
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    if device_type != "cpu":
        return torch.get_num_threads(), f"the model runs on {device_type}"
    cores = max(1, usable_cpus() // max(processes, 1))
    if step_flops is not None and step_flops < cores * MIN_FLOPS_PER_THREAD:
        count = max(1, int(step_flops // MIN_FLOPS_PER_THREAD))
        return min(count, cores), f"small steps ({step_flops / 1e9:.2g} GFLOPs)"
    if processes > 1:  # the other processes of this launch are busy by design
        return cores, f"{usable_cpus()} cores for {processes} processes"
    busy = cpus_busy_elsewhere()
    free = max(1, min(cores, math.floor(cores - busy + (1 - BUSY_SHARE))))
    if free < cores:
        return free, f"{cores} cores, {busy:.1f} busy with other processes"
    return cores, f"{cores} cores"


@contextlib.contextmanager
def threads_for(setting: Union[str, int, None] = "auto", step_flops: Optional[float] = None, processes: int = 1,
                device_type: str = "cpu", announce: bool = True):
    """Compute with `choose_threads` threads inside the block; the previous count is restored after it.  Fewer
    threads than cores because other processes are busy is said on the progress log (with ``announce``)."""
    import torch

    previous = torch.get_num_threads()
    count, reason = choose_threads(setting, step_flops, processes, device_type)
    if count != previous:
        torch.set_num_threads(count)
    if announce and "busy" in reason:
        logging.getLogger(PROGRESS_LOGGER).info("Computing on %d CPU thread%s: %s (set threads to choose).", count,
                                                "" if count == 1 else "s", reason)
    else:
        logger.info("CPU threads: %d (%s)", count, reason)
    try:
        yield count
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
