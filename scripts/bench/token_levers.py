"""Two levers on the worker's CPU per streamed token, measured alone under gevent (issue 12):
`python -m scripts.bench.token_levers [--redis URL] [--rounds N]` prints one JSON line.

- `recv_us`: CPU per chunk of 50 greenlets each reading 100-byte chunks from a socketpair, with
  a socket timeout (what httpx's read timeout costs per read: a gevent `Timeout`) and without.
- `xadd_us`: CPU per plain XADD of a watched job's flush through our `TcpBackend` (redis-py), one
  command per round trip as `JobEvents` sends them, and 5 per pipeline (what batching the
  flushes of a process's jobs would give at best).

The variants alternate within each round; each figure is the median over the rounds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402

CHUNKS = 20_000
GREENLETS = 50
PAYLOAD = json.dumps({"text": "a few tokens", "attempt": 1, "job_id": "x" * 36, "ts": 1.0})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _per_op(work: Callable[[int], None], ops: int) -> float:
    """µs of CPU per operation of GREENLETS greenlets sharing `ops` operations."""
    cpu = _cpu()
    gevent.joinall([gevent.spawn(work, ops // GREENLETS) for _ in range(GREENLETS)])
    return round((_cpu() - cpu) / ops * 1e6, 1)


def _recv(timeout: float | None) -> Callable[[int], None]:
    def work(chunks: int) -> None:
        writer, reader = socket.socketpair()
        reader.settimeout(timeout)

        def write() -> None:
            for _ in range(chunks):
                writer.send(b"x" * 100)
                gevent.sleep(0.0005)  # one chunk per wake-up, as tokens come

        sender = gevent.spawn(write)
        left = chunks * 100
        while left:
            reader.settimeout(timeout)  # httpcore sets it before every read
            left -= len(reader.recv(65536))
        sender.join()
        writer.close()
        reader.close()

    return work


def _xadd(backend: object, per_pipeline: int) -> Callable[[int], None]:
    from lib.state.tcp import TcpBackend

    assert isinstance(backend, TcpBackend)
    args = ("XADD", "tokbench-levers", "*", "t", "delta", "d", PAYLOAD)

    def work(commands: int) -> None:
        for _ in range(commands // per_pipeline):
            if per_pipeline == 1:
                backend.command(*args)
            else:
                pipe = backend._client.pipeline(transaction=False)  # noqa: SLF001 - a bench
                for _ in range(per_pipeline):
                    pipe.execute_command(*args)
                pipe.execute()
            gevent.sleep(0.001)

    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.token_levers")
    parser.add_argument("--redis", help="a Redis URL (default: an embedded one)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from lib.state.tcp import TcpBackend
    from scripts.stack import embedded

    server = None if args.redis else embedded.start_redis()
    url = args.redis or (server.url if server else "")
    backend = TcpBackend(url)
    runs: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name, work in (
                ("recv_us/timeout_30s", _recv(30.0)),
                ("recv_us/no_timeout", _recv(None)),
                ("xadd_us/one_per_round_trip", _xadd(backend, 1)),
                ("xadd_us/five_per_pipeline", _xadd(backend, 5)),
            ):
                ops = CHUNKS if name.startswith("recv") else CHUNKS // 4
                runs.setdefault(name, []).append(_per_op(work, ops))
        backend.command("DEL", "tokbench-levers")
    finally:
        backend.close()
        if server is not None:
            server.stop()
    out = {name: {"p50": statistics.median(v), "rounds": v} for name, v in runs.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
