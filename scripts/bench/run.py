"""`make bench`: how fast tokens reach the browser and what a job costs, ours against the
original CareerShaper design, measured side by side in the same run on the local stack.

The baseline is the original design, switched on by configuration (`BASELINE`): the SSE reader
polls the event stream with XRANGE every 400 ms, backing off to 8 s while idle
(`SSE_READ_MODE=poll`), and the worker flushes deltas every 5 tokens or 20 ms. Sections:

1. cold start of each `api/` function (fresh `python -X importtime`, then the first response),
   against a bare Flask app;
1b. the worker's CPU per streamed token: its whole per-token path (lib.llm, a handler,
   JobEvents, Redis) under gevent and threads, against reading the model's stream alone;
2. Redis commands and QStash messages per job, in dollars per 1,000 jobs: a 1,000-token job
   streamed over 60 s, with one live SSE viewer and with none; each configuration runs on a
   Redis of its own, so `INFO commandstats` deltas count exactly one job, Lua internals
   included (as Upstash bills an EVAL: once, plus once per command it runs);
3. the cost-latency trade-off of the flush interval (50 ms to 2 s, at 20 and 60 tokens/s, one
   viewer): the real event path (`JobEvents` writing, `Producer.stream` reading) against a
   Redis of its own per setting, all settings at once; the emitter stamps each token;
4. added delta latency on the whole stack at 1, 100 and 500 concurrent streams and at 20 and 60
   tokens/s: from the offline LLM's stamp on a token (`llm_ts`) to the SSE client's receipt;
5. the submit path: server-side p50/p99 of `POST /api/jobs` (its `Server-Timing`) against a
   no-op route of the same server, and end-to-end throughput with an instant LLM;
6. concurrency per worker container: jobs that stream for 60 s at 20 tokens/s, added in
   steps, until p99 added latency > 250 ms, a job fails, or RSS > 1 GiB; gthread and gevent;
7. jobs per hour of 60 s jobs on one worker box and on two (scale-out), side by side;
8. cancel to close: from a cancel's POST to the offline LLM seeing its client go away;
9. what an image costs at submit: text against image submits of one in-process producer on the
   stand-ins at 20 ms a round trip (scripts/bench/images.py).
10. live jobs at once on one box under QSTASH_PLAN=free and payg, inline against detached, with
   the time to drain and the QStash messages per job of each (live_jobs.py);
11. the queue ETA's error at submit on a burst that overfills a model, the QStash messages per
   job of that burst (waits included) detached against inline, and the Redis commands of one
   queue update (queue_eta.py).

Targets are printed next to the figures, never asserted. Raw figures go to bench/results.json,
plots to bench/*.png; docs/performance.md explains them. The machine may be shared: ratios
against the baseline of the same run are the figures to trust.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.store import migrate
from scripts.bench import coldstart
from scripts.bench.boxes import boxes
from scripts.bench.cancel import cancel_to_close
from scripts.bench.capacity import concurrency, submit_path
from scripts.bench.common import (
    BASELINE,
    OURS,
    OUT,
    PRICES,
    SECTIONS,
    TARGETS,
    Bench,
    say,
    start_all,
)
from scripts.bench.cost import cost, sweep
from scripts.bench.images import image_submit
from scripts.bench.latency import latency
from scripts.bench.live_jobs import live_jobs
from scripts.bench.micro import cold_start, token_cpu
from scripts.bench.queue_eta import queue_eta
from scripts.bench.report import markdown, plots, table
from scripts.stack import embedded


def _cost_sections(
    results: dict[str, Any], sections: set[str], quick: bool, benches: dict[str, Bench]
) -> None:
    """Commands per job and per flush, the flush sweep, and cancel to close."""
    if "cost" in sections:
        with ThreadPoolExecutor(1) as pool:
            swept = pool.submit(sweep, quick)
            results["cost"] = cost(benches, quick)
            results["sweep"] = swept.result()
    if "cancel" in sections:
        results["cancel"] = cancel_to_close(benches["ours-1"], quick)


def _stack_sections(
    results: dict[str, Any], sections: set[str], quick: bool, database_url: str
) -> None:
    benches: dict[str, Bench] = {}
    try:
        if sections & {"cost", "cancel", "latency", "submit"}:
            for name, overrides in (("ours", OURS), ("baseline", BASELINE)):
                for viewer in (0, 1):
                    benches[f"{name}-{viewer}"] = Bench(f"{name}-{viewer}", overrides, database_url)
            say("starting 4 stacks (ours and the baseline, for 0 and 1 viewer)")
            start_all(list(benches.values()))
        _cost_sections(results, sections, quick, benches)
        for key in ("ours-0", "baseline-0"):
            if key in benches:
                benches.pop(key).stop()
        if "latency" in sections:
            results["latency"] = latency(benches, quick)
        if "submit" in sections:
            results["submit"] = submit_path(benches["ours-1"], database_url, quick)
        for bench in benches.values():
            bench.stop()
        benches.clear()
        if "concurrency" in sections:
            results["concurrency"] = concurrency(database_url, quick)

    finally:
        for bench in benches.values():
            bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads (a smoke run, ~4 min)")
    parser.add_argument(
        "--only",
        default="cold,tokens,cost,cancel,latency,submit,concurrency,boxes,images,live,queue",
        help=(
            "comma-separated sections "
            "(cold, tokens, cost, cancel, latency, submit, concurrency, boxes, images, live, queue)"
        ),
    )
    parser.add_argument(
        "--ours",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="settings for 'ours' on top of the defaults (to measure a before/after)",
    )
    parser.add_argument("--out", type=Path, help="where to write the figures (JSON)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print a results file as Markdown, run nothing"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    sections = set(args.only.split(","))
    OURS.update(dict(item.split("=", 1) for item in args.ours))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the REST stand-in's request lines
    # A SIGTERM stops the stacks too (the `finally` blocks run), like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    OUT.mkdir(exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        },
        "command": "make bench" + (" --quick" if args.quick else ""),
        "prices": PRICES,
        "targets": TARGETS,
        "baseline": BASELINE,
        "ours": dict(OURS),
    }
    if "cold" in sections:
        results["cold_start"] = cold_start(3 if args.quick else 7)
        results["cold_start_production"] = coldstart.run(args.quick)
    if "tokens" in sections:
        results["token_cpu"] = token_cpu(args.quick)
    pg = embedded.start_postgres()
    try:
        migrate.apply(pg.url)
        _stack_sections(results, sections, args.quick, pg.url)
        if "boxes" in sections:
            results["boxes"] = boxes(pg.url, args.quick)
        if "images" in sections:
            results["image_submit"] = image_submit(pg.url, args.quick)
        if "live" in sections:
            results["live_jobs"] = live_jobs(pg.url, args.quick)
        if "queue" in sections:
            results["queue_eta"] = queue_eta(pg.url, args.quick)
    finally:
        pg.stop()
    results["seconds"] = round(time.monotonic() - began, 1)
    # The machine may be shared: what else ran shows in the load average (2 cores here).
    results["machine"]["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    results["plots"] = [] if args.out else plots(results)  # a side run keeps the main plots
    path = args.out or OUT / ("results-quick.json" if args.quick else "results.json")
    if args.only != parser.get_default("only") and path.exists():
        # A partial run updates its own sections of the figures and keeps the others; the
        # run-wide fields stay those of the full run, and the partial run is recorded apart.
        earlier = json.loads(path.read_text())
        run = {k: results[k] for k in ("date", "machine", "seconds", "command")}
        sections_run = {k: v for k, v in results.items() if k in SECTIONS}
        partial = {**earlier.get("partial_runs", {}), ",".join(sorted(sections_run)): run}
        results = {**earlier, **sections_run, "partial_runs": partial}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print()
    say(f"{round(time.monotonic() - began, 1)} s; figures in {path}, plots {results['plots']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
