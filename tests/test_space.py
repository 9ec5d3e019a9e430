"""Tests for space/build.py: the files a ZeroGPU Space would use (front matter + requirements) are a combination
ZeroGPU supports, and the app imports `spaces` before anything can touch CUDA."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# ZeroGPU's supported versions (Hugging Face hub docs, spaces-zerogpu.md). Written here, apart
# from space/build.py, so that a wrong choice in the build fails this test.
ZEROGPU_PYTHON = {"3.10.13", "3.12.12"}
ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}


def _builder():
    spec = importlib.util.spec_from_file_location("space_build", ROOT / "space" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def front_matter(readme: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.S)
    assert match, "no front matter"
    return yaml.safe_load(match.group(1))


def pins(requirements: str) -> dict[str, str]:
    found = {}
    for line in requirements.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            found[name.strip().lower()] = version.strip()
    return found


def zerogpu_problems(meta: dict, requirements: str) -> list[str]:
    """What keeps this front matter + requirements from starting on ZeroGPU (empty: nothing)."""
    problems = []
    if meta.get("sdk") != "gradio":
        problems.append(f"sdk {meta.get('sdk')!r}: ZeroGPU runs Gradio Spaces only")
    if str(meta.get("python_version")) not in ZEROGPU_PYTHON:
        problems.append(f"python_version {meta.get('python_version')!r} not in {sorted(ZEROGPU_PYTHON)}")
    pinned = pins(requirements)
    if pinned.get("torch") not in ZEROGPU_TORCH:
        problems.append(f"torch {pinned.get('torch')!r} not in {sorted(ZEROGPU_TORCH)}")
    if "spaces" not in pinned:
        problems.append("no `spaces` package")
    return problems


def test_the_check_fails_on_an_unsupported_combination():
    """Today's repository front matter (Python 3.11) with a CPU torch pin is what this test must catch."""
    problems = zerogpu_problems({"sdk": "gradio", "python_version": "3.11"}, "torch==2.13.0\ngradio==6.31.0\n")
    assert len(problems) == 3, problems


def test_built_space_is_a_supported_zerogpu_combination(tmp_path):
    out = _builder().build(tmp_path / "space")
    readme = (out / "README.md").read_text()
    requirements = (out / "requirements.txt").read_text()
    meta = front_matter(readme)
    assert zerogpu_problems(meta, requirements) == []
    # the rest of the front matter and every other pin are the repository's own
    repo_meta = front_matter((ROOT / "README.md").read_text())
    assert {k: v for k, v in meta.items() if k not in ("python_version", "suggested_hardware")} == \
        {k: v for k, v in repo_meta.items() if k != "python_version"}
    repo_pins = pins((ROOT / "requirements.txt").read_text())
    assert {k: v for k, v in pins(requirements).items() if k not in ("torch", "spaces")} == \
        {k: v for k, v in repo_pins.items() if k != "torch"}
    assert (out / "app.py").is_file() and (out / "grin_engine" / "runs" / "pipeline.py").is_file()
    assert (out / "grin_ui" / "gpu.py").is_file() and (out / "assets").is_dir()
    assert not list(out.rglob("__pycache__"))


def test_app_imports_spaces_before_anything_that_can_touch_cuda():
    lines = [line.strip() for line in (ROOT / "app.py").read_text().splitlines()]
    first_spaces = next(i for i, line in enumerate(lines) if line.startswith("import spaces"))
    first_project = next(i for i, line in enumerate(lines) if re.match(r"(from|import) (grin_|torch|transformers)", line))
    assert first_spaces < first_project


def _visit_as_a_space(tmp_path, tokenizer, *flags) -> dict:
    """tests/spaces_standin.py in a fresh process on a tiny model folder: what it recorded."""
    import json
    import os
    import subprocess
    import sys

    from conftest import save_tiny_model_files

    folder, _, _ = save_tiny_model_files(tmp_path, tokenizer)
    out = tmp_path / "visit.json"
    # 32 s a call: the tiny model's 5-step run needs a training call before its finish call
    env = {**os.environ, "GRIN_GPU_CALL_SECONDS": "32", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "tests" / "spaces_standin.py"), str(out), str(folder), *flags],
                   env=env, check=True, timeout=900, cwd=str(ROOT))
    return json.loads(out.read_text())


def test_the_stand_in_catches_a_model_loaded_in_a_request_thread(tmp_path, tokenizer):
    """Without the preload, a visitor's Load loads the model in a Gradio worker thread: on ZeroGPU that reaches real
    CUDA and fails; the stand-in says so."""
    visit = _visit_as_a_space(tmp_path, tokenizer, "--no-preload")
    assert visit["error"] is not None and visit["calls"] == []
    assert visit["violations"] and "load_model" in visit["violations"][0], visit


def test_the_app_as_a_zerogpu_space_starts_and_serves_a_whole_visit(tmp_path, tokenizer):
    """app.py imported as on a ZeroGPU Space (SPACE_ID set, a strict stand-in `spaces` module: tests/spaces_standin.py)
    in a fresh process: its model is loaded and placed at import in the main thread, and a visitor's Load ->
    Influence -> Unlearn -> Ask -> Attack -> Sweep makes no model load or device move outside a spaces.GPU call, every
    call asks for at most the per-call limit, and a run too long for one call is trained in several."""
    visit = _visit_as_a_space(tmp_path, tokenizer)
    assert visit["error"] is None, visit
    assert visit["violations"] == []
    calls = [name for name, _ in visit["calls"]]
    assert all(seconds <= 32 for _, seconds in visit["calls"]), visit["calls"]
    assert "Loaded" in visit["seen"]["load"] and "Influence computed" in visit["seen"]["influence"]
    assert "Done" in visit["seen"]["unlearn"] and "Done" in visit["seen"]["sweep"], visit["seen"]
    assert calls.count("train_part") >= 1 and calls.count("finish_part") == 1
    assert calls.count("attack_part") == 2 and calls.count("sweep_part") >= 2 and "generate_work" in calls
    assert calls.index("influence_work") < calls.index("finish_part") < calls.index("generate_work") \
        < calls.index("attack_part") < calls.index("sweep_part")
