"""What a chaos run reports: one `Row` per scenario, the table printed at the end (violations
grouped by kind), the log lines of the jobs a violation names (`evidence.txt`), and the machine
and JSON-ready figures of the results file.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    scenario: str
    title: str
    accepted: int = 0
    submitted: int = 0
    peak_running: int = 0
    faults: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def evidence(row: Row, log_dir: Path) -> None:
    """For the first jobs named in violations, keep their log lines in evidence.txt."""
    ids = list(dict.fromkeys(m for v in row.violations for m in _JOB_ID.findall(v)))[:5]
    if not ids:
        return
    lines = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(job_id in line for job_id in ids):
                lines.append(f"{path.stem}: {line}")
    (log_dir / "evidence.txt").write_text("\n".join(lines) + "\n")


def print_table(rows: list[Row]) -> None:
    width = 52
    head = (
        f"{'scenario':<12} {'jobs':>5} {'peak':>5} {'retried':>7}  {'faults injected':<{width}}"
        f" {'viol.':>5} {'secs':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for row in rows:
        faults = "; ".join(row.faults) or "-"
        retried = row.stats.get("retried", "-")
        print(
            f"{row.scenario:<12} {row.accepted:>5} {row.peak_running:>5} {retried:>7}"
            f"  {faults[:width]:<{width}} {len(row.violations):>5} {row.seconds:>6.1f}"
        )
        for extra in _wrap(faults[width:], width):
            print(f"{'':<34}{extra}")
    print("(jobs: accepted; peak: most running at once; retried: jobs that took > 1 attempt)")
    for row in rows:
        for kind, examples in kinds_of(row.violations).items():
            print(f"  {row.scenario}: {len(examples)} x {kind}")
            for example in list(dict.fromkeys(examples))[:2]:
                print(f"      e.g. {example}")


def kinds_of(violations: list[str]) -> dict[str, list[str]]:
    """Group violations by their text with ids and figures blanked, most frequent first."""
    groups: dict[str, list[str]] = {}
    for text in violations:
        kind = re.sub(r"\d+(\.\d+)?", "N", _JOB_ID.sub("<id>", text))
        groups.setdefault(kind, []).append(text)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


def machine() -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "mem_total_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def plain(value: Any) -> Any:
    """JSON-ready: mapping keys become strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
