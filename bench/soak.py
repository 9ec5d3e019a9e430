"""Soak test: N visitors use one app server at once, through gradio_client, for a bounded time.

    python bench/soak.py --visitors 6 --items 4 --steps 2 --minutes 30

Starts `python app.py` on a free port (the real default model unless --model), then each visitor, in its own thread
and session: load -> influence (its own p) -> select -> unlearn -> ask its own question -> report. It checks that
every visitor got its own result (the selected count matches its own p, the report holds its own p), and prints:
- the server's RSS over time (sampled every 2 s), RSS after the first visitor finished, at the end, the peak, and
  the ratio end / after-first (the target: <= ~1.5);
- per visitor: each action's wait in the queue (submit -> start) and run time, the queue positions it was shown,
  and its errors ("Unexpected ..." counted apart: those are bugs, not messages);
- a JSON summary (--out).
Every visitor's heavy jobs share one slot, so with N visitors the last waits for the N - 1 before it: --minutes
bounds the whole run, and a visitor still waiting then is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
P_PERCENT = [0.5, 1.0, 2.0, 3.0, 5.0, 0.2, 0.7, 1.5, 4.0, 0.3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Visitor(threading.Thread):
    def __init__(self, index: int, url: str, args, deadline: float):
        super().__init__(daemon=True, name=f"visitor-{index}")
        self.index, self.url, self.args, self.deadline = index, url, args, deadline
        self.p = P_PERCENT[index % len(P_PERCENT)]
        self.actions: list[dict] = []
        self.errors: list[str] = []
        self.checks: dict = {}
        self.finished_at: float | None = None

    def call(self, name: str, *inputs) -> object:
        """Submit, watch the queue status until it starts and ends; record wait, run time and positions shown."""
        job = self.client.submit(*inputs, api_name=name)
        submitted, started, ranks = time.monotonic(), None, set()
        while not job.done():
            status = job.status()
            if status.rank is not None and status.code.name == "IN_QUEUE":
                ranks.add(status.rank)
            if started is None and status.code.name in ("PROCESSING", "ITERATING", "PROGRESS"):
                started = time.monotonic()
            if time.monotonic() > self.deadline:
                job.cancel()
                raise TimeoutError(f"{name}: still running at the deadline")
            time.sleep(0.5)
        ended = time.monotonic()
        started = started or ended
        self.actions.append({"action": name, "wait_s": round(started - submitted, 1),
                             "run_s": round(ended - started, 1), "queue_positions": sorted(ranks)})
        return job.result()  # raises the app's error, if any

    def run(self) -> None:
        from gradio_client import Client

        a = self.args
        try:
            self.client = Client(self.url, verbose=False)
            self.call("/load", a.model_source, a.model_name, "harry_potter", "", None, "general_knowledge", "", None)
            self.call("/influence", a.items, self.p)
            text = self.call("/select", self.p)[0]
            selected = int(text.split("**: ")[1].split(" of ")[0].replace(",", ""))
            candidates = int(text.split(" of ")[1].split()[0].replace(",", ""))
            self.checks["preview_selected"], self.checks["candidates"] = selected, candidates
            outputs = self.call("/unlearn", "graddiff", self.p, "1e-6", 5e-4, a.steps, 1.0, None, 0, True, a.items)
            self.checks["unlearn_status"] = outputs[0][:160]
            before, after = self.call("/generate", f"Visitor {self.index}: who is Harry Potter's best friend?")
            self.checks["answered"] = bool(before) and bool(after)
            report = json.loads(Path(self.call("/report")[0]).read_text())
            sel = report["selection"]
            expected = self.p / 100 * sel["candidates"]
            self.checks.update(report_p=report["config"]["p"], selected=sel["selected"], expected=round(expected),
                               own_result=abs(report["config"]["p"] - self.p / 100) < 1e-12
                               and abs(sel["selected"] - expected) <= 0.005 * expected + 1)
        except Exception as exc:  # noqa: BLE001 - recorded: the soak reports every error
            self.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        self.finished_at = time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=6)
    parser.add_argument("--items", type=int, default=4, help="items per set each visitor uses")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=30.0, help="the whole soak ends by then")
    parser.add_argument("--model", default="default", help="'default' or a Hub id")
    parser.add_argument("--public", action="store_true", help="run the server in public mode (GRIN_PUBLIC=1)")
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    args = parser.parse_args()
    args.model_source, args.model_name = ("default", "") if args.model == "default" else ("Hub id", args.model)

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRIN_PUBLIC="1" if args.public else "0",
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), TOKENIZERS_PARALLELISM="false")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            samples.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid), 1)))
            stop_sampling.wait(2.0)

    threading.Thread(target=sample, daemon=True).start()
    try:
        import httpx

        while True:  # the server is up when its page answers
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - start > 180:
                print("server did not start:", server.stderr.read()[-2000:] if server.stderr else "")
                return 1
            time.sleep(1)
        idle_mb = rss_mb(server.pid)
        deadline = start + 60 * args.minutes
        visitors = [Visitor(i, url, args, deadline) for i in range(args.visitors)]
        for v in visitors:
            v.start()
            time.sleep(0.5)  # they arrive one after another, all within a few seconds
        first_done_mb = None
        while any(v.is_alive() for v in visitors):
            if first_done_mb is None and any(v.finished_at for v in visitors):
                first_done_mb = rss_mb(server.pid)
            time.sleep(1)
        if first_done_mb is None:
            first_done_mb = rss_mb(server.pid)
        time.sleep(5)
        end_mb = rss_mb(server.pid)
    finally:
        stop_sampling.set()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    peak = max((mb for _, mb in samples), default=0.0)
    summary = {
        "visitors": args.visitors, "items": args.items, "steps": args.steps, "model": args.model,
        "seconds": round(time.monotonic() - start, 1), "rss_mb": {
            "idle": round(idle_mb, 1), "after_first_visitor": round(first_done_mb, 1), "end": round(end_mb, 1),
            "peak": peak, "end_over_first": round(end_mb / first_done_mb, 2) if first_done_mb else None},
        "rss_over_time": samples,
        "per_visitor": [{"p_percent": v.p, "checks": v.checks, "errors": v.errors, "actions": v.actions}
                        for v in visitors],
    }
    errors = [e for v in visitors for e in v.errors]
    summary["errors"] = len(errors)
    summary["unexpected_errors"] = sum("Unexpected" in e or "upstream Gradio app" in e for e in errors)
    summary["all_own_results"] = all(v.checks.get("own_result") for v in visitors)
    summary["max_queue_position_shown"] = max((r for v in visitors for a in v.actions for r in a["queue_positions"]),
                                              default=None)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"{args.visitors} visitors, {args.items} items, {args.steps} steps, model {args.model}: "
          f"{summary['seconds']:.0f} s")
    r = summary["rss_mb"]
    print(f"RSS MB: idle {r['idle']:.0f}, after first visitor {r['after_first_visitor']:.0f}, end {r['end']:.0f}, "
          f"peak {r['peak']:.0f}; end / after-first = {r['end_over_first']}")
    print("RSS over time (s, MB): " + ", ".join(f"{t:.0f}:{mb:.0f}" for t, mb in samples[:: max(1, len(samples) // 30)]))
    for i, v in enumerate(visitors):
        waits = ", ".join(f"{a['action'][1:]} {a['wait_s']:.0f}+{a['run_s']:.0f}s"
                          + (f" (pos {a['queue_positions']})" if a["queue_positions"] else "") for a in v.actions)
        print(f"visitor {i} p={v.p}%: own result {v.checks.get('own_result')} (selected {v.checks.get('selected')}, "
              f"expected {v.checks.get('expected')}); wait+run: {waits}; errors: {v.errors or 'none'}")
    print(f"errors {summary['errors']} (unexpected {summary['unexpected_errors']}); every visitor's own result: "
          f"{summary['all_own_results']}; largest queue position shown: {summary['max_queue_position_shown']}")
    return 0 if summary["errors"] == 0 and summary["all_own_results"] else 1


if __name__ == "__main__":
    sys.exit(main())
