"""Process-group accounting for the benches: CPU ticks, RSS, the machine's other load."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# Process-group accounting --------------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[0] is the state; then ppid, pgrp
            pids.append(int(entry))
    return pids


def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def all_processes() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (ppid, utime + stime ticks, name)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
    return out


def _ours(procs: dict[int, tuple[int, int, str]]) -> set[int]:
    """This process, its descendants (the stack, embedded Valkey) and the embedded Postgres,
    which pg_ctl detaches (any `postgres` process counts: an outside one would be ours too)."""
    mine = {os.getpid()}
    changed = True
    while changed:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in mine} - mine
        mine |= more
        changed = bool(more)
    return mine | {pid for pid, (_, _, name) in procs.items() if name == "postgres"}


def other_cpu_seconds(
    before: dict[int, tuple[int, int, str]], after: dict[int, tuple[int, int, str]], busy: int
) -> float:
    """Machine CPU used outside this bench during the run (other users of the machine), an
    estimate: processes that started and ended between the two snapshots count as other."""
    ours = _ours(before) | _ours(after)
    used = sum(after[p][1] - before.get(p, (0, 0, ""))[1] for p in ours if p in after)
    return round(max(0, busy - used) / TICK, 2)


def machine_ticks() -> tuple[int, int]:
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]) - idle, sum(parts[:8])


class GroupMeter:
    """Samples a process group: peak summed VmRSS, CPU ticks used since `start()`."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.base: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.peak_rss_kb = 0
        self.pids: set[int] = set()

    def sample(self) -> None:
        rss = 0
        for pid in group_pids(self.pgid):
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            self.pids.add(pid)
            self.base.setdefault(pid, 0 if self.last else ticks)
            self.last[pid] = ticks
            rss += rss_kb(pid)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def start(self) -> int:
        self.sample()
        self.base = dict(self.last)
        self.peak_rss_kb = 0
        self.sample()
        return self.peak_rss_kb

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds per process since `start()`, busiest first (short-lived ones too)."""
        used = {pid: (t - self.base.get(pid, 0)) / TICK for pid, t in self.last.items()}
        return dict(sorted(used.items(), key=lambda kv: -kv[1]))


class Sampler:
    """Samples the meters every 0.25 s in a thread until stopped."""

    def __init__(self, meters: dict[str, GroupMeter]) -> None:
        self.meters = meters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for meter in self.meters.values():
                meter.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for meter in self.meters.values():
            meter.sample()
