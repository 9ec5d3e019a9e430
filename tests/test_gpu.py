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


PARTS = [(gpu.influence_seconds, gpu.influence_work), (gpu.prepare_seconds, gpu.prepare_part),
         (gpu.piece_seconds, gpu.train_part), (gpu.finish_seconds, gpu.finish_part),
         (gpu.masks_seconds, gpu.masks_part), (gpu.method_seconds, gpu.method_part),
         (gpu.sweep_seconds, gpu.sweep_part), (gpu.attack_seconds, gpu.attack_part),
         (gpu.generate_seconds, gpu.generate_work)]


def test_gpu_durations_follow_items_steps_and_model_size(stored_tiny, forget_items, retain_items, monkeypatch):
    """spaces.GPU(duration=callable): the callable takes the part's own arguments, and the time asked for grows
    with the items, the steps and the model's size, never above one call's limit."""
    import inspect

    for duration, part in PARTS:
        assert list(inspect.signature(duration).parameters) == list(inspect.signature(part).parameters)
    cfg, stop = GrinConfig(steps=20), None
    few = gpu.finish_seconds("tiny", forget_items[:1], retain_items[:1], cfg, None, None, {}, {}, stop)
    many = gpu.finish_seconds("tiny", forget_items * 20, retain_items * 20, cfg, None, None, {}, {}, stop)
    more_steps = gpu.finish_seconds("tiny", forget_items[:1], retain_items[:1], GrinConfig(steps=40), None, None,
                                    {}, {}, stop)
    assert 30 <= few < many <= gpu.CALL_SECONDS and few < more_steps
    until = GrinConfig(steps=20, until="forget_keyword_accuracy<=0.25")  # the until-checks' answers count
    assert gpu.finish_seconds("tiny", forget_items, retain_items, until, None, None, {}, {}, stop) > \
        gpu.finish_seconds("tiny", forget_items, retain_items, cfg, None, None, {}, {}, stop)
    fresh = gpu.prepare_seconds("tiny", forget_items * 20, retain_items * 20, cfg, None, None, stop)
    cached = gpu.prepare_seconds("tiny", forget_items * 20, retain_items * 20, cfg, {"forget": {}}, None, stop)
    assert cached < fresh
    assert gpu.influence_seconds("tiny", forget_items, retain_items, stop) < \
        gpu.influence_seconds("tiny", forget_items * 50, retain_items * 50, stop)
    monkeypatch.setattr(gpu, "DEFAULT_PARAMETERS", 1e3)  # the tiny model now counts as a much bigger one
    assert gpu.finish_seconds("tiny", forget_items[:1], retain_items[:1], cfg, None, None, {}, {}, stop) > few
    assert gpu.finish_seconds("tiny", forget_items * 50, retain_items * 50, cfg, None, None, {}, {},
                              stop) == gpu.CALL_SECONDS
    assert gpu.finish_seconds("not-loaded", forget_items[:1], retain_items[:1], cfg, None, None, {}, {}, stop) == few


@pytest.mark.parametrize("steps", [1, 7, 100, 1000])
def test_training_pieces_fit_one_call_each(stored_tiny, forget_items, retain_items, monkeypatch, steps):
    monkeypatch.setattr(gpu, "DEFAULT_PARAMETERS", 4e3)  # a few seconds a step: several pieces for many steps
    cfg = GrinConfig(steps=steps, until="forget_keyword_accuracy<=0.25", until_every=2)
    ends = gpu.training_pieces("tiny", forget_items, retain_items, cfg)
    assert ends == sorted(ends) and (not ends or ends[-1] <= steps)
    starts = [0] + ends
    step = gpu.step_work("tiny", forget_items, cfg)
    for start, end in zip(starts, ends):
        assert gpu.GPU_SECONDS["start"] + (end - start) * step <= gpu.CALL_SECONDS
    left = steps - starts[-1]
    after = gpu.work_seconds("tiny", answers=gpu.answers(len(forget_items) + len(retain_items), cfg))
    assert gpu.GPU_SECONDS["start"] + left * step + after <= gpu.CALL_SECONDS


def test_a_run_in_many_calls_equals_a_run_in_one(stored_tiny, forget_items, retain_items, tmp_path, monkeypatch):
    """With a call limit so short that each call holds a few steps, unlearn_work trains in several parts (each asks
    for at most the limit) and gives the same losses, metrics and patch as with the limit that holds it all."""
    stop = StopFlag(str(tmp_path / "stop"))
    cfg = GrinConfig(loss="npo", p=0.1, steps=9, batch_size=2, max_length=64, max_new_tokens=4)
    calls = []
    for name in ("prepare_part", "train_part", "finish_part"):
        part, duration = getattr(gpu, name), getattr(gpu, name.replace("_part", "_seconds").replace("train",
                                                                                                   "piece"))

        def recorded(*args, part=part, duration=duration, name=name):
            calls.append((name, duration(*args)))
            yield from part(*args)
        monkeypatch.setattr(gpu, name, recorded)

    one = list(gpu.unlearn_work("tiny", forget_items, retain_items, cfg, None, stop))[-1][1]
    assert [n for n, _ in calls] == ["prepare_part", "finish_part"]
    calls.clear()
    monkeypatch.setattr(gpu, "DEFAULT_PARAMETERS", 1e4)  # the tiny model counts as 3x: 1.2 s a step, 4 in 5 s
    monkeypatch.setattr(gpu, "CALL_SECONDS", 35)
    messages = list(gpu.unlearn_work("tiny", forget_items, retain_items, cfg, one[0], stop, one[2]))
    many = messages[-1][1]
    assert [n for n, _ in calls][0] == "train_part" and len(calls) >= 3  # prepare skipped: both kept
    assert all(seconds <= 35 for _, seconds in calls)
    assert many[1].losses == one[1].losses and many[1].metrics == one[1].metrics
    assert many[1].patch.numel() == one[1].patch.numel()
    for (name, (index, values)), (_, (index2, values2)) in zip(one[1].patch.entries.items(),
                                                               many[1].patch.entries.items()):
        assert torch.equal(index, index2) and torch.equal(values, values2), name
    curves = [m[2] for m in messages if m[0] == "progress" and m[2]]
    assert curves[-1] == many[1].losses[:len(curves[-1])]  # the loss curve goes on across the parts


def test_stop_between_training_parts_keeps_the_losses_so_far(stored_tiny, forget_items, retain_items, tmp_path,
                                                              monkeypatch):
    """A Stop pressed while a training part runs ends the run after that part: no further GPU call, a stopped result
    with the base's metrics and the losses of the steps taken."""
    stop = StopFlag(str(tmp_path / "stop"))
    cfg = GrinConfig(loss="graddiff", p=0.1, steps=9, batch_size=2, max_length=64, max_new_tokens=4)
    monkeypatch.setattr(gpu, "DEFAULT_PARAMETERS", 1e4)
    monkeypatch.setattr(gpu, "CALL_SECONDS", 35)
    parts, train_part = [], gpu.train_part

    def train_then_stop(*args):  # the visitor presses Stop as the first training part ends
        parts.append("train_part")
        for message in train_part(*args):
            if message[0] == "done":
                stop.set()
            yield message
    monkeypatch.setattr(gpu, "train_part", train_then_stop)
    monkeypatch.setattr(gpu, "finish_part", lambda *args: parts.append("finish_part") or iter(()))
    final = list(gpu.unlearn_work("tiny", forget_items, retain_items, cfg, None, stop))[-1]
    stop.clear()
    assert final[0] == "done", final
    before, result, kept = final[1]
    assert parts == ["train_part"] and result.stopped and 0 < len(result.losses) < cfg.steps
    assert result.metrics["before"]["forget"] and result.metrics["after"] is None and kept is not None


def test_every_part_hands_the_gpu_cache_back(stored_tiny, forget_items, retain_items, tmp_path, monkeypatch):
    """A plain GPU server runs job after job: each part, finished, stopped or failed, releases the CUDA cache."""
    released = []
    monkeypatch.setattr(gpu, "release_gpu_cache", lambda: released.append(True))
    stop = StopFlag(str(tmp_path / "stop"))
    list(gpu.influence_work("tiny", forget_items, retain_items, stop))
    list(gpu.influence_work("tiny", [], [], stop))  # an error
    gpu.generate_work("tiny", "Who?", None, 2)
    assert released == [True, True, True]
