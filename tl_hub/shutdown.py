"""A clean end for multi-process runs: the process group is destroyed and its worker threads idle before Python exits.

Why this is needed.  A gloo process group runs its collectives on worker threads (``pt_gloo_runloop``).  After a
collective completes, the waiting Python code goes on at once, while the worker still holds the finished work and
releases it a moment later; releasing it drops the last reference to the work's Python tensors, which takes the
GIL.  When the script has returned by then (a rank that does not print or save, under busy cores), the interpreter
is already finalizing, the worker's ``take_gil`` ends the thread with ``pthread_exit``, the unwind meets a
``noexcept`` destructor (``AsyncAllgatherWork``), and the C++ runtime aborts: ``terminate called without an active
exception``, SIGABRT, and a launcher that marks a finished run as failed.  ``destroy_process_group`` alone does not
help: the DDP wrappers still hold the group, so its workers outlive it until the interpreter's last garbage
collection, which is exactly the moment they must not run.

`end_process_group` destroys the group and then waits, with the GIL released, until every worker thread is idle:
asleep, and not woken once during a wait in which the GIL was free (a worker that still had a work to release
would have taken the GIL and run).  Idle workers never touch Python again: when the interpreter's last garbage
collection frees the group, its destructor only stops and joins them.  (Collecting the group earlier, from Python,
is not safe: a DDP reducer frees it with the GIL held, and a worker still waiting for the GIL would deadlock the
join.)  `end_process_group_at_exit` registers it once to run at interpreter exit, before finalization starts; the
recipes, ``tl-hub train``, the streaming path and `tl_hub.TransferTrainer` do that when they set up a run, so a
user's script needs nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time

logger = logging.getLogger(__name__)

# native thread names of the process-group workers that can take the GIL (c10d::ProcessGroupGloo::runLoop)
COMM_THREADS = ("pt_gloo_runloop",)
# the GIL-free wait in which an idle worker must not run, and the most time spent waiting for all to be idle
IDLE_WINDOW_S = 0.02
IDLE_TIMEOUT_S = 5.0

_registered = False


def comm_threads() -> dict[int, tuple[str, int]]:
    """This process's process-group worker threads: native id -> (scheduler state, context switches so far).
    Empty where ``/proc`` is missing (not Linux)."""
    tasks = f"/proc/{os.getpid()}/task"
    try:
        ids = os.listdir(tasks)
    except OSError:
        return {}
    found = {}
    for tid in ids:
        try:
            with open(os.path.join(tasks, tid, "comm")) as f:
                if f.read().strip() not in COMM_THREADS:
                    continue
            with open(os.path.join(tasks, tid, "status")) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the thread ended while we looked
            continue
        switches = int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])
        found[int(tid)] = (fields["State"].split()[0], switches)
    return found


def wait_until_idle(timeout: float = IDLE_TIMEOUT_S, window: float = IDLE_WINDOW_S) -> bool:
    """Wait, with the GIL released, until every process-group worker thread is idle: asleep, and not run once in
    ``window`` seconds in which the GIL was free.  True when they are (or there are none), False after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    before = comm_threads()
    while before:
        time.sleep(window)  # releases the GIL: a worker finishing a collective takes it now and runs
        after = comm_threads()
        if after == before and all(state == "S" for state, _ in after.values()):
            return True
        if time.monotonic() >= deadline:
            logger.warning("process-group threads still busy after %.0f s at exit: %s", timeout, after)
            return False
        before = after
    return True


def end_process_group(timeout: float = IDLE_TIMEOUT_S) -> bool:
    """Destroy the default process group (if one runs) and wait until its worker threads are idle
    (`wait_until_idle`), so that the interpreter can exit cleanly.  True when they are."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return wait_until_idle(timeout)


def _at_exit() -> None:
    if getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None:
        return  # the script died of an exception: the launcher ends the other processes; nothing to wait for
    end_process_group()


def end_process_group_at_exit() -> None:
    """Run `end_process_group` when the interpreter exits normally (registered once per process)."""
    global _registered
    if not _registered:
        atexit.register(_at_exit)
        _registered = True
