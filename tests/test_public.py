"""Tests for grin_ui.public: public mode is on by itself on a Space, and its caps hold through a launched app."""

from __future__ import annotations

import dataclasses
import json

import pytest

gradio_client = pytest.importorskip("gradio_client")

from grin_ui import public  # noqa: E402

LOAD_DEFAULT = ("default", "", "harry_potter", "", None, "general_knowledge", "", None)
RUN = ["graddiff", 1.0, "1e-6", 5e-4, 2, 1.0, None, 0, True, 2]


@pytest.fixture(scope="module", autouse=True)
def public_server():
    """This module's app runs in public mode (set before the app is built: its sliders and queue follow the caps)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRIN_PUBLIC", "1")
        yield


@pytest.mark.parametrize("env, expected", [
    ({}, False), ({"SPACE_ID": "someone/grin-studio"}, True), ({"SPACE_ID": "x/y", "GRIN_PUBLIC": "0"}, False),
    ({"GRIN_PUBLIC": "1"}, True),
])
def test_public_mode_is_on_by_itself_on_a_space(monkeypatch, env, expected):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRIN_PUBLIC", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert public.public_mode() is expected
    assert public.caps() is (public.PUBLIC if expected else public.LOCAL)


def _refused(fn, match):
    with pytest.raises(Exception, match=match) as caught:
        fn()
    assert "Unexpected" not in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.fixture(scope="module")
def visitor(tiny_app):
    client = gradio_client.Client(tiny_app, verbose=False)
    client.predict(*LOAD_DEFAULT, api_name="/load")
    return client


def test_model_allow_list(tiny_app):
    client = gradio_client.Client(tiny_app, verbose=False)
    _refused(lambda: client.predict("Hub id", "Qwen/Qwen2.5-72B-Instruct", "harry_potter", "", None,
                                    "general_knowledge", "", None, api_name="/load"), "this public server offers")


def test_upload_caps(tiny_app, tmp_path):
    client = gradio_client.Client(tiny_app, verbose=False)
    big = tmp_path / "big.jsonl"  # 1.5 MB
    big.write_text((json.dumps({"question": "Q?", "answer": "A" * 1000}) + "\n") * 1500)
    _refused(lambda: client.predict("default", "", "harry_potter", "", gradio_client.handle_file(str(big)),
                                    "general_knowledge", "", None, api_name="/load"), "at most 1.0 MB")
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": "A."}) + "\n" for i in range(3000)))
    _refused(lambda: client.predict("default", "", "harry_potter", "", gradio_client.handle_file(str(many)),
                                    "general_knowledge", "", None, api_name="/load"), "at most 2,000 per set")


@pytest.mark.parametrize("index, value, match", [
    (3, 0.1, "this server accepts 1e-07 to 0.01"), (4, 150, "greater than maximum value 60"),
    (1, 20.0, "selects at most 10%"), (9, 64, "greater than maximum value 32"),
])
def test_run_caps(visitor, index, value, match):
    args = list(RUN)
    args[index] = value
    _refused(lambda: visitor.submit(*args, api_name="/unlearn").result(timeout=120), match)


def test_grun_and_question_caps(visitor):
    _refused(lambda: visitor.submit(["grun"], "idk", "linear", 1e-2, 3.0, 1000, *RUN, "forget",
                                    api_name="/compare").result(timeout=120), "at most 60")
    _refused(lambda: visitor.predict("Who? " * 300, api_name="/generate"), "at most 1,000")


def test_a_large_patch_is_not_kept_per_visitor(visitor, monkeypatch):
    """A run whose patch passes the per-visitor cap keeps metrics and the report, not the patch."""
    monkeypatch.setattr(public, "PUBLIC", dataclasses.replace(public.PUBLIC, patch_bytes=1000))
    args = list(RUN)
    args[8] = False  # no mask: the whole model's weights change
    job = visitor.submit(*args, api_name="/unlearn")
    job.result(timeout=300)
    final = job.outputs()[-1][0]
    assert "Done" in final and "keeps unlearned models of at most" in final, final
    _refused(lambda: visitor.predict(api_name="/weights"), "not kept on this server")
    assert json.loads(open(visitor.predict(api_name="/report")[0]).read())["losses"]


def test_sweep_tofu_and_attack_caps(visitor):
    """The Sweep, TOFU and Attack tabs hold the public caps too: a grid too large, a TOFU run (two fine-tunings),
    relearning past the step cap and sampling past its cap are refused before any work."""
    grid = (["grin", "random"], "0.1, 0.5, 1, 2, 5", "1e-6", "0, 1", "forget_keyword_accuracy<=0.25", False,
            "forget_keyword_accuracy", "retain_keyword_accuracy", "graddiff", 5e-4, 2, 1.0, None, 2)
    _refused(lambda: visitor.submit(*grid, api_name="/sweep").result(timeout=120), "at most 12 in one grid")
    steep = list(grid)
    steep[1], steep[3], steep[9] = "1", "0", 0.1  # one point per method, but a learning rate past the cap
    _refused(lambda: visitor.submit(*steep, api_name="/sweep").result(timeout=120), "this server accepts")
    _refused(lambda: visitor.submit("forget01", ["grin"], 5, api_name="/tofu_run").result(timeout=120),
             "this public server does not run it")
    visitor.submit(*RUN, api_name="/unlearn").result(timeout=300)  # a run to attack
    _refused(lambda: visitor.submit("last run (Unlearn)", ["relearn"], 400, 5e-5, 8, "keyword accuracy",
                                    api_name="/attack").result(timeout=120), "relearning steps: 400")
    _refused(lambda: visitor.submit("last run (Unlearn)", ["sample"], 10, 5e-5, 32, "keyword accuracy",
                                    api_name="/attack").result(timeout=120), "samples: 32")


@pytest.mark.parametrize("parameters", [135e6, 362e6])  # the Space's two models: SmolLM2-135M and -360M
def test_public_caps_keep_each_indivisible_part_within_one_gpu_call(monkeypatch, parameters):
    """At the public caps (most items, steps, answer tokens, samples), one method's run, one sweep point and each
    attack fit one ZeroGPU call on either model a Space offers (gpu.py's estimates; until-checks off)."""
    from grin_engine.attacks import ATTACKS
    from grin_engine.config import GrinConfig
    from grin_engine.attacks.base import AttackConfig
    from grin_engine.runs.sweep import SweepGrid
    from grin_ui import gpu

    monkeypatch.setattr(gpu, "_model_scale", lambda name: parameters / gpu.DEFAULT_PARAMETERS)
    caps = public.PUBLIC
    cfg = GrinConfig(steps=caps.max_steps, grun_steps=caps.max_grun_steps, max_new_tokens=caps.max_new_tokens)
    items = [None] * caps.max_items
    room = gpu.CALL_SECONDS - gpu.GPU_SECONDS["start"]
    for method in ("grin", "grun", "full"):
        assert gpu.method_work("m", items, items, cfg, method) <= room, method
    grid = SweepGrid(methods=["grin", "grun"], steps=[caps.max_steps], grun_steps=[caps.max_grun_steps])
    assert gpu.point_work("m", items, items, cfg, grid) <= room
    acfg = AttackConfig(relearn_steps=caps.max_steps, samples=caps.attack_samples)
    for name in ATTACKS:
        answers, steps = gpu.attack_units(name, items, items, cfg, acfg)
        assert gpu.work_seconds("m", answers=answers, steps=steps) <= room, name
