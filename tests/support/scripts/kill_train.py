"""Run ``tl-hub train`` and SIGKILL this process at a chosen point.

    python kill_train.py POINT -- <tl-hub train arguments>

POINT is one of:
    none             run to the end
    step:N           just before the N-th optimizer step (counted over all periods)
    write:N          while writing the N-th checkpoint: after its weights, before its optimizer state
    period-change    right after the first period ended (its last checkpoint is written)
    rotate:N         while deleting an old checkpoint, the N-th time one is deleted
    final-save       while the trained model folder is being written
The kill is a real ``SIGKILL`` of the training process: nothing in it can clean up.
"""

import os
import signal
import sys


def die():
    sys.stdout.flush(), sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def counter(limit):
    calls = [0]

    def hit():
        calls[0] += 1
        if calls[0] == limit:
            die()

    return hit


def install(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "none":
        return
    if kind == "step":
        import tl_hub.loop as loop

        hit, make = counter(int(arg)), loop.make_optimizer

        def make_optimizer(*args, **kwargs):
            optimizer = make(*args, **kwargs)
            optimizer.register_step_pre_hook(lambda *_: hit())
            return optimizer

        loop.make_optimizer = make_optimizer
    elif kind == "write":
        import accelerate.checkpointing as ckpt

        hit, save = counter(int(arg)), ckpt.save

        def save_then_maybe_die(obj, path, *args, **kwargs):
            if str(path).endswith("optimizer.bin"):
                hit()
            return save(obj, path, *args, **kwargs)

        ckpt.save = save_then_maybe_die
    elif kind == "period-change":
        import tl_hub.loop as loop

        loop.release_prepared = lambda accelerator: die()
    elif kind == "rotate":
        import tl_hub.checkpoint as checkpoint

        hit, rmtree = counter(int(arg)), checkpoint.shutil.rmtree

        class Shutil:
            @staticmethod
            def rmtree(path, *args, **kwargs):
                if str(path).endswith(".deleting") and os.path.exists(path):
                    hit()
                return rmtree(path, *args, **kwargs)

        checkpoint.shutil = Shutil
    elif kind == "final-save":
        import tl_hub.model_folder as recipes

        recipes.plot_learning_curves = lambda *a, **k: die()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: kill_train.py POINT -- <tl-hub train arguments>"
    install(point)
    from tl_hub.cli import main

    sys.exit(main(["-q", "train", *argv]))
