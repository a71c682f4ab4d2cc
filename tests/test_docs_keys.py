"""docs/architecture.md's Redis key table is the one in lib/state/keys.py."""

from __future__ import annotations

import re
from pathlib import Path

import lib.state.keys

ROOT = Path(__file__).resolve().parent.parent


def _table(text: str) -> str:
    found = re.search(r"^\| key .*?(?=\n\s*\n)", text, re.S | re.M)
    assert found, "no key table"
    return found.group(0)


def test_the_architecture_docs_key_table_is_the_table_in_keys_py() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert _table(doc) == _table(lib.state.keys.__doc__ or "")
