"""Launching a script in several real processes on the CPU, as the multi-process tests do.

``accelerate launch --cpu --num_processes 2`` silently runs one process; two real ones on the CPU take
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`` (gloo).  Every test that launches
asserts the world size its processes report.
"""

import os
import shutil
import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(script: str, *args: str, processes: int = 2, module: bool = False) -> list[str]:
    """The command that runs ``script args`` (``module``: ``python -m script args``) in ``processes`` processes on
    one machine (gloo on the CPU; run it with `launch_env`)."""
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
            *(["--module"] if module else []), script, *args]


def launch_env(**extra: str) -> dict:
    """The environment of a launched run: one thread per process (two processes on two cores would otherwise
    oversubscribe them) and the CPU."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", **extra}


ABORT_SIGNS = ("terminate called", "Fatal Python error", "SIGABRT", "exitcode  : -6", "core dumped")


def aborts_in(text: str) -> list[str]:
    """The lines of a run's output that say a process aborted."""
    return [line for line in text.splitlines() if any(sign in line for sign in ABORT_SIGNS)]


def run(cmd: list[str], env: dict, timeout: int = 600):
    """Run ``cmd`` to the end; it must exit 0 with no process aborting."""
    import subprocess

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and not aborts_in(proc.stderr), proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
