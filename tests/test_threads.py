"""CPU threads: the cores a process may use (affinity, cgroup quota), the load of other processes, the size of the
work, the ``threads`` setting and ``--threads`` flag, and a fit that restores the count it found."""

import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from tl_hub import ConfigError, FineTuneRecipe, TrainingConfig, threads_for
from tl_hub import threads as th
from tl_hub.cli import main

BUSY_LOOP = "import time\nend = time.time() + 30\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (None, "auto"), (" AUTO ", "auto"), (2, 2), ("3", 3)])
def test_threads_setting_accepts_auto_and_whole_numbers(value, expected):
    assert th.check_threads(value) == expected
    assert TrainingConfig(threads=value).threads == expected


@pytest.mark.parametrize("value", [0, -1, "0", "many", 1.5, True, ""])
def test_bad_threads_values_say_what_to_write(value):
    with pytest.raises(ConfigError, match=r"`threads` should be 'auto' or a whole number .* at least 1"):
        TrainingConfig(threads=value)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({}, None),
], ids=["v2-unlimited", "v2-1.5", "v1-unlimited", "v1-0.5", "v1-cpuacct-3", "none"])
def test_cgroup_quota_v1_and_v2(tmp_path, files, expected):
    for name, text in files.items():
        write(tmp_path / name, text)
    assert th.cgroup_cpu_limit(str(tmp_path)) == expected


def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(th, "affinity", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(th, "cgroup_cpu_limit", lambda: None)
    assert th.usable_cpus() == 4
    monkeypatch.setattr(th, "cgroup_cpu_limit", lambda: 2.5)
    assert th.usable_cpus() == 2
    monkeypatch.setattr(th, "cgroup_cpu_limit", lambda: 0.5)  # half a core still computes on one thread
    assert th.usable_cpus() == 1


@pytest.fixture
def four_cores(monkeypatch, no_omp):
    monkeypatch.setattr(th, "usable_cpus", lambda: 4)
    monkeypatch.setattr(th, "cpus_busy_elsewhere", lambda seconds=0: 0.0)
    return monkeypatch


def test_auto_uses_every_free_core_for_large_steps(four_cores):
    assert th.choose_threads("auto", step_flops=50e9) == (4, "4 cores")
    assert th.choose_threads("auto")[0] == 4


@pytest.mark.parametrize("busy, expected", [(0.3, 4), (1.0, 3), (1.6, 2), (3.9, 1), (7.0, 1)])
def test_auto_leaves_the_cores_other_processes_keep_busy(four_cores, busy, expected):
    four_cores.setattr(th, "cpus_busy_elsewhere", lambda seconds=0: busy)
    count, reason = th.choose_threads("auto", step_flops=50e9)
    assert count == expected
    assert ("busy" in reason) == (expected < 4)


def test_auto_gives_each_thread_a_minimum_of_work(four_cores):
    count, reason = th.choose_threads("auto", step_flops=0.5 * th.MIN_FLOPS_PER_THREAD)
    assert count == 1 and "small steps" in reason
    assert th.choose_threads("auto", step_flops=3.5 * th.MIN_FLOPS_PER_THREAD)[0] == 3
    assert th.choose_threads("auto", step_flops=0.03e9)[0] == 3  # the smallest step measured: no slower on 2 threads


def test_auto_splits_the_cores_between_the_processes_of_a_launch(four_cores):
    assert th.choose_threads("auto", step_flops=50e9, processes=2) == (2, "4 cores for 2 processes")
    assert th.choose_threads("auto", step_flops=50e9, processes=8)[0] == 1


def test_auto_keeps_omp_num_threads_and_a_gpu_run_keeps_torch_default(four_cores):
    four_cores.setenv("OMP_NUM_THREADS", "3")
    assert th.choose_threads("auto", step_flops=0.1e9) == (3, "OMP_NUM_THREADS")
    four_cores.delenv("OMP_NUM_THREADS")
    assert th.choose_threads("auto", step_flops=0.1e9, device_type="cuda")[0] == torch.get_num_threads()
    assert th.choose_threads(2, step_flops=0.1e9) == (2, "set")  # a number is taken as given


def test_busy_cores_are_measured_while_another_process_computes():
    """A real competitor: one Python busy loop keeps about one core busy (more if the machine has other load)."""
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)
        busy = th.cpus_busy_elsewhere(seconds=0.5)
    finally:
        competitor.kill()
        competitor.wait()
    assert busy >= 0.6, busy


def test_threads_for_sets_and_restores_the_count(no_omp):
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with threads_for(other) as count:
        assert count == other and torch.get_num_threads() == other
    assert torch.get_num_threads() == before


@pytest.mark.slow
@pytest.mark.parametrize("busy, expected", [(0.0, 2), (1.0, 1)], ids=["idle", "one-core-busy"])
def test_fit_computes_on_the_chosen_threads_and_restores_them(tiny_model_dir, colour_ds, no_omp, caplog, monkeypatch,
                                                               busy, expected):
    monkeypatch.setattr(th, "usable_cpus", lambda: 2)
    monkeypatch.setattr(th, "cpus_busy_elsewhere", lambda seconds=0: busy)
    before = torch.get_num_threads()
    seen = []
    recipe = FineTuneRecipe(tiny_model_dir("resnet"), threads="auto", seed=0, min_steps=0, max_epochs=3)
    with caplog.at_level(logging.INFO, logger="tl_hub"):
        recipe.fit(colour_ds, progress=False, on_period_end=lambda *a: seen.append(torch.get_num_threads()))
    assert recipe.result.run.step_flops is not None and recipe.result.run.step_flops > 2 * th.MIN_FLOPS_PER_THREAD  # counted for the budget
    assert set(seen) == {expected}  # inside the run, every period
    assert torch.get_num_threads() == before
    if busy:
        assert any("Computing on 1 CPU thread: 2 cores, 1.0 busy" in r.getMessage() for r in caplog.records)


def test_cli_threads_flag_is_checked_and_exported(monkeypatch, capsys, no_omp, tmp_path):
    assert main(["predict", str(tmp_path), "missing.png", "--threads", "0"]) == 2
    assert "`--threads` should be 'auto' or a whole number" in capsys.readouterr().err
    monkeypatch.setattr(torch, "set_num_threads", torch.set_num_threads)  # restored after the test
    before = torch.get_num_threads()
    try:
        assert main(["predict", str(tmp_path), "missing.png", "--threads", "1"]) == 2  # the image does not exist
        assert os.environ["OMP_NUM_THREADS"] == "1"  # what the runs the command starts keep
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        torch.set_num_threads(before)
