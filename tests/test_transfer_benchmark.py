"""benchmarks/transfer.py's reference store: results kept per task and seed, reused, written atomically."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _transfer():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", os.path.join(ROOT, "benchmarks", "transfer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_store_round_trip_and_reuse(tmp_path):
    transfer = _transfer()
    path = str(tmp_path / "refs.json")
    store = transfer.ReferenceStore(path)
    assert store.get("lite0/fashion/5/seed1", "probe") is None and store.reused == []
    store.put("lite0/fashion/5/seed1", "probe", 0.73, 19.5)
    entry = json.load(open(path))["lite0/fashion/5/seed1"]["probe"]
    assert entry["test"] == 0.73 and entry["seconds"] == 19.5 and entry["measured"] and "CPU cores" in entry["machine"]
    assert os.listdir(tmp_path) == ["refs.json"]  # no temporary file left behind
    again = transfer.ReferenceStore(path)
    assert again.get("lite0/fashion/5/seed1", "probe")["test"] == 0.73
    assert again.reused == ["lite0/fashion/5/seed1 probe"]
    assert again.get("lite0/fashion/5/seed1", "hand fine-tune") is None


def test_reference_store_without_file_keeps_nothing(tmp_path):
    store = _transfer().ReferenceStore(None)
    store.put("t/seed0", "probe", 0.5, 1.0)
    assert store.get("t/seed0", "probe") is None and store.reused == []


def test_named_only_tasks_are_real_but_not_in_the_default_tier():
    transfer = _transfer()
    names = [t[0] for t in transfer.REAL_TASKS]
    assert "lite0/fashion/50" not in names and len(names) >= 3
    assert all(transfer.is_real(t[0]) for t in transfer.REAL_TASKS + transfer.LARGE_REAL_TASKS)
    assert not transfer.is_real("resnet/handwritten/5")
