"""Tests for the CLI (python -m grin_engine): a bad input exits non-zero with one "error:" line, no traceback,
and writes nothing. The processes run four at a time (each spends ~3 s importing torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BAD_INPUTS = {
    "p_zero": (["run", "--p", "0"], "p must be"),
    "p_above_one": (["run", "--p", "1.5"], "p must be"),
    "negative_sigma2": (["run", "--sigma2", "-1"], "sigma2"),
    "unknown_loss": (["run", "--loss", "nope"], "unknown loss"),
    "unknown_loss_old_flag": (["run", "--method", "nope"], "unknown loss"),
    "unknown_set": (["run", "--forget", "no_such_set"], "no_such_set"),
    "missing_file": (["run", "--forget", "/tmp/does/not/exist.jsonl"], "/tmp/does/not/exist.jsonl"),
    "unknown_model": (["run", "--model", "no-such-org/xyz"], "no-such-org/xyz"),
    # paths: every output and reference is checked before the model loads (nothing written, exit 2)
    "out_empty": (["run", "--out", ""], "--out: give a file name"),
    "out_folder": (["run", "--out", "/tmp"], "is a folder"),
    "out_proc": (["run", "--out", "/proc/r.json"], "cannot write in folder '/proc'"),
    "out_device": (["run", "--out", "/dev/null"], "not a regular file"),
    "save_model_proc": (["run", "--save-model", "/proc/m"], "--save-model: cannot write"),
    "reference_not_a_model": (["run", "--reference", "/etc"], "holds no model"),
    "score_out_folder": (["score", "--out", "/tmp"], "is a folder"),
    "save_grun_folder": (["compare", "--methods", "grin,grun", "--save-grun", "/tmp"], "--save-grun"),
    # numbers and names
    "seed_huge": (["run", "--seed", str(10**30)], "seed must be"),
    "lr_huge": (["run", "--lr", "1e300"], "learning rate must be at most"),
    "lr_nan": (["run", "--lr", "nan"], "learning rate must be a finite number"),
    "steps_huge": (["run", "--steps", str(10**9)], "steps must be at most"),
    "model_name_long": (["run", "--model", "x" * 5000], "5,000 characters"),
    # uploads (files written by the fixture into {data})
    "nested_json": (["run", "--forget", "{data}/nested.json"], "nested too deeply"),
    "keywords_int": (["run", "--forget", "{data}/keywords.jsonl"], "'keywords' must be a list of texts"),
    "bad_until": (["run", "--until", "forget_accuracy<0.2"], "unknown metric"),
    "sweep_out_not_jsonl": (["sweep", "--out", "sweep.json"], "ending in .jsonl"),
    "sweep_bad_target": (["sweep", "--target", "forget_keyword_accuracy=1"], "METRIC<=NUMBER"),
    "sweep_target_and": (["sweep", "--target", "forget_keyword_accuracy<=0.25 and forget_fluency>=0.9"],
                         "one condition here"),
    "until_and_retain": (["run", "--until", "forget_keyword_accuracy<=0.25 and retain_fluency>=0.9"],
                         "forget set only"),
    "sweep_unknown_method": (["sweep", "--methods", "grin,nope"], "unknown nope"),
    "unknown_device_map": (["run", "--device-map", "everywhere"], "device map"),
    "bad_max_memory": (["run", "--device-map", "auto", "--max-memory", "lots"], "--max-memory"),
    "unknown_attack": (["run", "--attacks", "relearn,nope"], "unknown nope"),
    "attack_missing_report": (["attack", "/tmp/no/such/report.json"], "/tmp/no/such/report.json"),
    "attack_bad_steps": (["run", "--attacks", "relearn", "--relearn-steps", "0"], "relearn steps"),
    "tofu_report_only_alone": (["tofu", "--report-only"], "goes with --tune or --grid"),
    "tofu_report_only_no_lines": (["tofu", "--tune", "--report-only", "--out", "tune.jsonl"], "not found"),
}

BAD_FILES = {
    "nested.json": "[" * 100_000 + "]" * 100_000,
    "keywords.jsonl": '{"question": "Q?", "answer": "A.", "keywords": 5}\n',
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """name -> (return code, stdout, stderr, files left in the working folder)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GRIN_DEBUG", None)
    data = tmp_path_factory.mktemp("data")
    for file_name, content in BAD_FILES.items():
        (data / file_name).write_text(content)
    results, running = {}, []
    try:
        for name, (args, _) in BAD_INPUTS.items():  # a few at a time: each spends seconds importing torch
            cwd = tmp_path_factory.mktemp(name)
            args = [a.replace("{data}", str(data)) for a in args]
            running.append((name, cwd, subprocess.Popen([sys.executable, "-m", "grin_engine", *args], cwd=cwd,
                                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                        text=True)))
            while len(running) >= 4 or (running and name == list(BAD_INPUTS)[-1]):
                done_name, done_cwd, proc = running.pop(0)
                out, err = proc.communicate(timeout=300)
                results[done_name] = (proc.returncode, out, err, sorted(p.name for p in done_cwd.iterdir()))
    finally:
        for _, _, proc in running:
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_with_one_error_line(outcomes, name):
    code, out, err, files = outcomes[name]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert code == 2, (code, err)  # a user mistake (GrinError), not an unexpected exception (status 1)
    assert "Traceback" not in err and "Traceback" not in out
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert lines[-1] == error_lines[0], err
    assert BAD_INPUTS[name][1] in error_lines[0], err
    assert files == [], f"a failed run wrote {files}"


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_prints_only_the_error_line(outcomes, name):
    """The CLI's contract (its docstring): a mistake prints ONE line to stderr - no progress line before it."""
    _, _, err, _ = outcomes[name]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.mark.slow
def test_run_stops_once_forgotten_by_default_and_until_none_turns_it_off():
    from grin_engine.cli.commands import config_from
    from grin_engine.cli.parser import build_parser
    from grin_engine.config import STOP_ONCE_FORGOTTEN

    parser = build_parser()
    assert config_from(parser.parse_args(["run"])).until == STOP_ONCE_FORGOTTEN
    assert config_from(parser.parse_args(["run", "--until", "None"])).until is None
    assert config_from(parser.parse_args(["run", "--until", "forget_fluency>=0.9"])).until == "forget_fluency>=0.9"
    for command in ("compare", "sweep", "tofu"):  # these compare runs at equal step counts
        assert config_from(parser.parse_args([command])).until is None


def test_run_on_the_default_model_writes_the_report(tmp_path):
    """The real pipeline through the CLI on the packaged model, small: 6 items a set, 3 steps."""
    import json

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "grin_engine", "run", "--max-items", "6", "--steps", "3",
                           "--p", "0.01", "--until", "none", "--out", str(out),
                           "--save-model", str(tmp_path / "unlearned")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert abs(report["selection"]["fraction"] - 0.01) <= 0.005 * 0.01
    assert report["model"]["source"] == "gguf" and report["model"]["layers"] == 30
    assert len(report["losses"]) == 3 and all(isinstance(x, float) for x in report["losses"])
    assert len(report["generations"]) == 12 and all(g["before"] for g in report["generations"])
    for when in ("before", "after"):
        for split in ("forget", "retain"):
            assert set(report["metrics"][when][split]) >= {"rougeL_recall", "keyword_accuracy", "probability",
                                                           "fluency"}
    # before unlearning the model knows every built-in fact (the sets keep only the items whose greedy answer, with the
    # default 48 new tokens, holds a keyword)
    assert report["metrics"]["before"]["forget"]["keyword_accuracy"] == 1.0
    assert "keyword_accuracy" in proc.stdout and "fluency" in proc.stdout  # the before/after table
    assert report["metrics"]["before"]["forget"]["fluency"] == 1.0  # the base model answers in sentences
    assert set(report["fluency"]["after"]["forget"]) == {"looping", "non_answer", "reasons"}
    assert report["memory"]["cpu"]["peak_bytes"] > report["memory"]["cpu"]["weights_bytes"]
    assert "memory on cpu (" in proc.stdout
    # the GGUF model was de-quantised: the saved folder is a plain safetensors model, without the gguf note
    saved = json.loads((tmp_path / "unlearned" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["num_hidden_layers"] == 30
    assert (tmp_path / "unlearned" / "model.safetensors").stat().st_size > 100_000_000


def test_score_on_a_local_model_folder(tmp_path, tokenizer):
    """`score` through the real loading code on a local folder (a tiny Llama saved as safetensors)."""
    import json

    folder, env = _tiny_folder(tmp_path, tokenizer, lambda it: {"question": it.question, "answer": it.answer})
    out = tmp_path / "selection.json"
    proc = subprocess.run([sys.executable, "-m", "grin_engine", "score", "--model", str(folder), "--forget",
                           str(tmp_path / "forget.jsonl"), "--retain", str(tmp_path / "retain.jsonl"),
                           "--p", "0.01", "0.1", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [s["p"] for s in result["selections"]] == [0.01, 0.1]
    for s in result["selections"]:
        assert abs(s["fraction"] - s["p"]) <= 0.005 * s["p"] + 1 / s["candidates"]
        assert sum(row["selected"] for row in s["by_layer"]) == s["selected"]
    assert result["selections"][0]["selected"] < result["selections"][1]["selected"]
    usage = result["memory"]["cpu"]  # the device and the peak, in the file and on the terminal
    assert usage["peak_bytes"] > usage["weights_bytes"] > 0 and "cores" in usage["name"]
    assert "memory on cpu (" in proc.stdout


def test_run_save_patch_then_attack_a_local_model(tmp_path, tokenizer):
    """run --save-patch --attacks, then `attack` on the saved report: both write the attacks section."""
    import json

    folder, env = _tiny_folder(tmp_path, tokenizer, lambda it: {
        "question": it.question, "answer": it.answer, "keywords": it.keywords,
        "paraphrased_questions": [f"Say: {it.question}"]})
    common = ["--model", str(folder), "--forget", str(tmp_path / "forget.jsonl"), "--retain",
              str(tmp_path / "retain.jsonl")]
    proc = subprocess.run([sys.executable, "-m", "grin_engine", "run", *common, "--steps", "2", "--p", "0.05",
                           "--max-new-tokens", "4", "--save-patch", "patch.safetensors", "--attacks",
                           "quant4,paraphrase", "--out", "report.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["attacks"]["grin"]) == {"quant4", "paraphrase"}
    assert [r["attack"] for r in report["attack_table"]] == ["quant4", "paraphrase"]
    assert "recovery" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "grin_engine", "attack", "report.json", "--attacks",
                           "quant4,relearn", "--relearn-steps", "2", "--out", "attacks.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    attacked = json.loads((tmp_path / "attacks.json").read_text())
    assert set(attacked["attacks"]["grin"]) == {"quant4", "relearn"}
    # the same patch, the same quantisation: the same numbers as the run's own attack
    assert attacked["attacks"]["grin"]["quant4"]["metrics"] == report["attacks"]["grin"]["quant4"]["metrics"]
    assert attacked["attacks"]["grin"]["quant4"]["details"] == report["attacks"]["grin"]["quant4"]["details"]


def _tiny_folder(tmp_path, tokenizer, record):
    """save_tiny_model_files (record(item) -> the JSON object of one) and the environment to run the CLI in:
    (folder, env)."""
    from conftest import save_tiny_model_files

    folder = save_tiny_model_files(tmp_path, tokenizer, record)[0]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return folder, env


# --- the terminal tables (grin_engine/cli/tables.py) ---------------------------------------------------------------


def test_summary_shows_fluency_and_why_answers_are_not_fluent():
    from grin_engine.cli.tables import format_summary

    values = {"keyword_accuracy": 1.0, "fluency": 1.0}
    report = {"selection": {"selected": 1, "candidates": 10, "fraction": 0.1,
                            "by_kind": {"attention": {"selected": 1}, "ffn": {"selected": 0}}},
              "metrics": {"before": {"forget": values, "retain": values},
                          "after": {"forget": {"keyword_accuracy": 0.0, "fluency": 0.5}, "retain": values}},
              "fluency": {"after": {"forget": {"looping": 0.25, "non_answer": 0.25, "reasons": []},
                                    "retain": {"looping": 0.0, "non_answer": 0.0, "reasons": []}}},
              "timings": {"unlearn_s": 1.0}}
    text = format_summary(report)
    assert [line.split() for line in text.splitlines() if line.startswith("fluency")] == \
        [["fluency", "1.000", "0.500", "1.000", "1.000"]]
    assert "not fluent after: forget 25% looping, 25% non-answers; retain 0% looping, 0% non-answers" in text


def test_comparison_table_shows_fluency_on_both_splits():
    from grin_engine.cli.tables import format_comparison

    row = {"method": "grin", "forget_gate": None, "seconds": 3.0}
    for split in ("forget", "retain"):
        for metric in ("keyword_accuracy", "rougeL_recall", "fluency"):
            row[f"{split}_{metric}"], row[f"{split}_{metric}_before"] = 0.5, 1.0
    row["forget_fluency"] = 0.25
    lines = format_comparison({"table": [row], "overlap": {}, "stopped": False}).splitlines()
    assert lines[0].split()[-6:] == ["FL", "retain", "FL", "gate", "f/r", "seconds"]
    assert lines[2].split() == ["grin", "0.500", "0.500", "0.500", "0.500", "0.250", "0.500", "-", "3"]


def test_frontier_base_values_come_from_each_metric_own_split():
    """The front's y may be the forget set's fluency: the base line reads it from the forget split."""
    from grin_engine.cli.tables import format_frontier

    report = {"frontier": {"forget_metric": "forget_keyword_accuracy", "retain_metric": "forget_fluency",
                           "settings": [], "fronts": {}, "areas": {}, "target": None, "auto_p": {}},
              "before": {"metrics": {"forget": {"keyword_accuracy": 1.0, "fluency": 0.75},
                                     "retain": {"fluency": 0.5}}},
              "points": [], "total": 0, "skipped": 0, "stopped": False}
    assert format_frontier(report).splitlines()[0] == "base model: forget_keyword_accuracy 1.000, forget_fluency 0.750"
