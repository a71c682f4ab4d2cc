"""One run of the worker's per-token path, in a process of its own: `python -m
scripts.bench.token_path --llm URL --redis URL --path NAME ...` prints one JSON line with the
tokens read and the process's CPU seconds (user + system, all threads) while it read them.

Paths:
- `worker`: what an attempt does with each token: `lib.llm.LLM` (the official SDK's request),
  a real handler's `Context.structured` (job_match), `JobEvents` batching and its XADDs to a
  real Redis, the handler's result validated at the end;
- `worker-unwatched`: `worker` with nobody watching (DELTA_FLUSH_IDLE_MS=0): no flush and no
  Redis command until the attempt ends (the bench stops before its result is written), so
  `worker` minus this is what the watched job's flushes cost per token;
- `sdk-models`: the SDK's own stream of `ChatCompletionChunk` models, nothing else (read only:
  the original code's reading, the baseline);
- `raw-lines`: `with_streaming_response` and `iter_lines` + `json.loads`, nothing else (read
  only: what `lib/llm.py` does before its callback);
- `raw-lines-paced`: `raw-lines` that sleeps 140 ms after a read once 140 ms have passed since
  its last sleep, so each wake-up finds about 3 tokens waiting at 20 tokens/s: an experiment,
  what reading at the flush cadence instead of once per token would save.

Under `--mode gevent` the process is patched first, as gunicorn's gevent worker does.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.token_path")
    parser.add_argument("--llm", required=True, help="the offline LLM's base URL (…/v1)")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--mode", choices=("gevent", "threads"), default="gevent")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--slow", type=int, default=50, help="ms between tokens")
    parser.add_argument("--profile", help="write a cProfile of one stream's path here")
    args = parser.parse_args(argv)
    if args.mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    from scripts.bench.token_run import run

    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
