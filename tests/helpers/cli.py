"""`cs`, run as a user runs it (test_cli.py, test_cli_admin.py): `Cli` runs it in a subprocess with
a stack's environment and a home of its own, so a dev user of its own.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.stack import JD, RESUME

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cli:
    """`cs` with the stack's environment and a home of its own (so a dev user of its own)."""

    env: dict[str, str]
    home: Path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lib.cli.main", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self(*args)
        assert done.returncode == 0, f"cs {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done

    def file(self, name: str, text: str) -> str:
        path = self.home / name
        path.write_text(text)
        return str(path)

    def submit(self, *extra: str, resume: str = RESUME) -> subprocess.CompletedProcess[str]:
        return self(
            "submit",
            "--dev",
            "--kind",
            "job_match",
            "--resume",
            self.file("resume.txt", resume),
            "--jd",
            self.file("jd.txt", JD),
            *extra,
        )
