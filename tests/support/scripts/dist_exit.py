"""Gather tensors across the processes, then return at once: the end of an evaluation on a process that neither
prints nor saves.  Exits 0 only when the process group ends cleanly (see `tl_hub.shutdown`).

    dist_exit.py RESULT [RANK]     # RANK (if given) raises at the end
"""

import sys

import torch

from tl_hub.runtime import make_accelerator


def main(result_path, fail_on_rank=None):
    accelerator = make_accelerator()
    with open(f"{result_path}.rank{accelerator.process_index}", "w") as f:
        f.write(str(accelerator.num_processes))
    for step in range(50):
        accelerator.gather_for_metrics(torch.full((256,), float(step + accelerator.process_index)))
    if fail_on_rank is not None and accelerator.process_index == int(fail_on_rank):
        raise RuntimeError(f"rank {fail_on_rank} fails after its work")


if __name__ == "__main__":
    main(*sys.argv[1:3])
