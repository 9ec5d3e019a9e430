"""The default classroom flow in the web app, timed step by step as a visitor waits for it, for one or more checkouts.

    python bench/classroom.py --repos . /tmp/before            # this checkout, then another (e.g. git worktree)
    python bench/classroom.py --repos . --items 4 --steps 2    # smaller, for a quick look

For each checkout, in turn and in one sitting: start its `python app.py` on a free port (the real default model),
then through gradio_client as one visitor: Load -> Compute influence (p = 1%) -> Unlearn with the Unlearn tab's
defaults -> Compare methods with its default methods (grin, grun, full). Each step's wall time is from submit to
the last message (what the visitor waits). Prints a table of the times with the ratio of each checkout to the
first, and the default run's forget and retain answers before / after. --out writes it all as JSON.
The /load, /influence, /unlearn and /compare API names and inputs are those of docs/API.md (stable across versions).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD = ("default", "", "harry_potter", "", None, "general_knowledge", "", None)
METHODS = ["grin", "grun", "full"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(root: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRIN_PUBLIC="0", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(root))
    return subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_up(server: subprocess.Popen, url: str, timeout: float = 300) -> None:
    import httpx

    start = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() - start > timeout:
            raise SystemExit(f"server did not start: {server.stderr.read()[-2000:] if server.stderr else ''}")
        time.sleep(1)


def _rows(value) -> list:
    if isinstance(value, dict) and value.get("__type__") == "update":
        value = value["value"]
    return value["data"] if isinstance(value, dict) and "data" in value else value


def timed(job_or_call, name: str = "") -> tuple[float, object]:
    start = time.perf_counter()
    outputs = job_or_call()
    seconds = time.perf_counter() - start
    print(f"  {name}: {seconds:.1f} s", flush=True)  # as it happens: a long sitting cut short still says something
    return seconds, outputs


def flow(url: str, args) -> dict:
    """One visitor's default flow: {step: seconds}, the statuses and the default run's answers."""
    from gradio_client import Client

    from grin_engine.config import GrinConfig

    d = GrinConfig()
    sigma2 = f"{d.sigma2:g}".replace("e-0", "e-")
    unlearn = [d.loss, 100 * d.p, sigma2, d.lr, args.steps or d.steps, d.alpha, None, d.seed, True, args.items]
    client = Client(url, verbose=False)
    times, statuses = {}, {}
    times["load"], out = timed(lambda: client.predict(*LOAD, api_name="/load"), "load")
    statuses["load"] = out[-1]
    times["influence"], out = timed(lambda: client.submit(args.items, 100 * d.p, api_name="/influence").result(),
                                    "influence")
    statuses["influence"] = out[0]
    times["unlearn"], out = timed(lambda: client.submit(*unlearn, api_name="/unlearn").result(), "unlearn")
    statuses["unlearn"] = out[0]
    answers = {"forget": _rows(out[2]), "retain": _rows(out[3])}
    if args.second_p:
        second = list(unlearn)
        second[1] = args.second_p
        times[f"unlearn again at p = {args.second_p}%"], out = timed(
            lambda: client.submit(*second, api_name="/unlearn").result(), "unlearn again")
        statuses["unlearn again"] = out[0]
    if args.no_compare:
        return {"seconds": times, "statuses": statuses, "answers": answers, "unlearn_inputs": unlearn}
    compare = [METHODS, d.grun_loss, d.grun_gate, d.grun_lr, d.grun_gate_weight, args.grun_steps or d.grun_steps,
               *unlearn, "forget"]
    times["compare"], out = timed(lambda: client.submit(*compare, api_name="/compare").result(), "compare")
    statuses["compare"] = out[0]
    return {"seconds": times, "statuses": statuses, "answers": answers, "unlearn_inputs": unlearn}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", nargs="+", default=[str(ROOT)], help="checkouts to time, in this order")
    parser.add_argument("--items", type=int, default=16, help="max items per set (the app's default: 16)")
    parser.add_argument("--steps", type=int, default=None, help="unlearning steps (default: GrinConfig's)")
    parser.add_argument("--grun-steps", type=int, default=None, help="GRUN steps (default: GrinConfig's)")
    parser.add_argument("--second-p", type=float, default=None, help="also a second Unlearn at this p (%%)")
    parser.add_argument("--no-compare", action="store_true", help="stop after Unlearn (a shorter sitting)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    results = {}
    for repo in args.repos:
        root = Path(repo).resolve()
        port = free_port()
        start = time.perf_counter()
        server = start_app(root, port)
        print(f"{root}:", flush=True)
        try:
            wait_up(server, f"http://127.0.0.1:{port}/")
            started = time.perf_counter() - start
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                    text=True).stdout.strip()
            result = flow(f"http://127.0.0.1:{port}/", args)
            result["seconds"] = {"server start": started, **result["seconds"]}
            result["commit"] = commit
            results[str(root)] = result
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        print(f"{root} ({commit}): " + ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items()), flush=True)

    if not results:
        return 1
    first = next(iter(results.values()))["seconds"]
    print(f"\n{args.items} items per set, steps {args.steps or 'default'}; wall seconds per step "
          f"(ratio to {next(iter(results))}):")
    for root, result in results.items():
        cells = [f"{k} {v:.0f} s ({v / first[k]:.2f}x)" if first.get(k) else f"{k} {v:.0f} s"
                 for k, v in result["seconds"].items()]
        print(f"  {result['commit']}: " + "; ".join(cells) + f"; total {sum(result['seconds'].values()):.0f} s")
    for root, result in results.items():
        print(f"\n{result['commit']} statuses:")
        for step, status in result["statuses"].items():
            print(f"  {step}: {status}")
        print(f"{result['commit']} default run's answers (question | gold | before | after):")
        for split, rows in result["answers"].items():
            for row in rows:
                print(f"  [{split}] " + " | ".join(str(cell) for cell in row))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
