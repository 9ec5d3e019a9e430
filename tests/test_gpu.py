"""Tests for grin_ui.gpu: the model work as self-contained calls, as a ZeroGPU worker process runs them.

A ZeroGPU worker gets its arguments and sends its results back pickled, and it cannot see the main process's memory:
so every message must be plain CPU data that pickles, and the Stop flag must be visible from another process.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grin_engine.config import GrinConfig, GrinError
from grin_ui import gpu
from grin_ui.state import STORE, StopFlag, stop_flag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stored_tiny(tiny, monkeypatch):
    """The tiny model as the app's shared base model, under the name 'tiny'."""
    monkeypatch.setattr(STORE, "_current", tiny)
    return tiny


def _cpu_only(obj) -> None:
    """Pickle the object; every tensor inside must be on the CPU."""
    devices = set()

    class Checker(pickle.Pickler):
        def reducer_override(self, value):
            if isinstance(value, torch.Tensor):
                devices.add(value.device.type)
            return NotImplemented

    import io
    Checker(io.BytesIO()).dump(obj)
    assert devices <= {"cpu"}


def _checksum(model) -> float:
    return sum(p.double().sum().item() for p in model.state_dict().values())


def test_stop_flag_is_seen_by_another_process(tmp_path):
    flag = StopFlag(str(tmp_path / "stop"))
    assert not flag.is_set()
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()).set()"
    subprocess.run([sys.executable, "-c", code], input=pickle.dumps(flag), check=True, cwd=str(ROOT))
    assert flag.is_set()
    flag.clear()
    assert not flag.is_set()


def test_stop_flags_are_per_session():
    a, b = stop_flag("visitor-a"), stop_flag("visitor-b")
    a.clear(), b.clear()
    a.set()
    assert a.is_set() and not b.is_set()
    a.clear()


def test_gpu_uses_spaces_when_present(monkeypatch):
    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration):
            calls.append(duration)
            return lambda fn: ("wrapped", fn)

    monkeypatch.setattr(gpu, "spaces", FakeSpaces)
    assert gpu.gpu(42)(len) == ("wrapped", len)
    assert calls == [42]
    monkeypatch.setattr(gpu, "spaces", None)
    assert gpu.gpu(42)(len) is len


def test_influence_and_unlearn_send_plain_cpu_data(stored_tiny, forget_items, retain_items, tmp_path):
    checksum = _checksum(stored_tiny.model)
    stop = StopFlag(str(tmp_path / "stop"))
    messages = list(gpu.influence_work("tiny", forget_items, retain_items, stop))
    assert [m[0] for m in messages][-1] == "done"
    for message in messages:
        _cpu_only(message)
    hist, top = messages[-1][1]
    assert top.seconds > 0 and int(hist.total.sum()) > 0 and 0 < top.kept < top.n

    cfg = GrinConfig(loss="graddiff", p=0.1, steps=2, batch_size=2, max_length=64, max_new_tokens=4)
    messages = list(gpu.unlearn_work("tiny", forget_items, retain_items, cfg, None, stop))
    assert messages[-1][0] == "done"
    for message in messages:
        _cpu_only(message)
    before, result, kept = messages[-1][1]
    assert kept is not None and kept.covers(cfg.p)  # the scores it computed, for the next run
    assert len(result.losses) == 2 and result.patch is not None and result.unlearned_model is None
    assert set(before) == {"forget", "retain"}
    assert _checksum(stored_tiny.model) == checksum  # the shared base is only read


def test_stop_set_from_outside_ends_the_run(stored_tiny, forget_items, retain_items, tmp_path):
    stop = StopFlag(str(tmp_path / "stop"))
    stop.set()  # pressed before the first batch: the run ends at its first check
    cfg = GrinConfig(loss="graddiff", p=0.1, steps=2, batch_size=2, max_length=64, max_new_tokens=4)
    kinds = [m[0] for m in gpu.influence_work("tiny", forget_items, retain_items, stop)]
    assert kinds[-1] == "stopped"
    final = list(gpu.unlearn_work("tiny", forget_items, retain_items, cfg, None, stop))[-1]
    assert final == ("done", (None, None, None))  # stopped while answering with the base


def test_errors_come_back_as_user_errors(stored_tiny, tmp_path):
    stop = StopFlag(str(tmp_path / "stop"))
    final = list(gpu.influence_work("tiny", [], [], stop))[-1]  # no items: the engine refuses
    assert final[0] == "error" and isinstance(final[1], GrinError)
    pickle.dumps(final)


def test_gpu_durations_follow_items_steps_and_model_size(stored_tiny, forget_items, retain_items, monkeypatch):
    """spaces.GPU(duration=callable): the callable takes the work function's own arguments, and the time asked
    for grows with the items, the steps and the model's size, within ZeroGPU's bounds."""
    import inspect

    pairs = [(gpu.influence_seconds, gpu.influence_work), (gpu.unlearn_seconds, gpu.unlearn_work),
             (gpu.compare_seconds, gpu.compare_work), (gpu.generate_seconds, gpu.generate_work)]
    for duration, work in pairs:
        assert list(inspect.signature(duration).parameters) == list(inspect.signature(work).parameters)
    cfg, stop = GrinConfig(steps=20), None
    few = gpu.unlearn_seconds("tiny", forget_items[:1], retain_items[:1], cfg, None, stop)
    many = gpu.unlearn_seconds("tiny", forget_items * 50, retain_items * 50, cfg, None, stop)
    more_steps = gpu.unlearn_seconds("tiny", forget_items[:1], retain_items[:1], GrinConfig(steps=200), None, stop)
    cached = gpu.unlearn_seconds("tiny", forget_items * 50, retain_items * 50, cfg, {"forget": {}}, stop)
    assert 30 <= few < cached < many <= gpu.MAX_GPU_SECONDS and few < more_steps
    assert gpu.influence_seconds("tiny", forget_items, retain_items, stop) < \
        gpu.influence_seconds("tiny", forget_items * 50, retain_items * 50, stop)
    small = gpu.compare_seconds("tiny", forget_items, retain_items, cfg, ["grin"], stop)
    assert small < gpu.compare_seconds("tiny", forget_items, retain_items, cfg, ["grin", "grun", "full"], stop)
    monkeypatch.setattr(gpu, "DEFAULT_PARAMETERS", 1e3)  # the tiny model now counts as a much bigger one
    assert gpu.unlearn_seconds("tiny", forget_items[:1], retain_items[:1], cfg, None, stop) > few
    assert gpu.unlearn_seconds("tiny", forget_items * 50, retain_items * 50, cfg, None, stop) == gpu.MAX_GPU_SECONDS
    assert gpu.unlearn_seconds("not-loaded", forget_items[:1], retain_items[:1], cfg, None, stop) == few
