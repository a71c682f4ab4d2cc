"""`make demo`'s script (scripts/demo.py) against a stack started as `make demo` starts it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from lib.config import DEV_JWT_SECRET
from lib.handlers import registry
from scripts.demo import KINDS, run_demo
from scripts.devstack import Stack

pytestmark = pytest.mark.e2e


def test_the_demo_runs_every_registered_kind_and_each_one_succeeds(
    local_stack: Callable[..., AbstractContextManager[Stack]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert sorted(KINDS) == sorted(registry())
    with local_stack("demo", OFFLINE_LLM_TOKENS_PER_SECOND="2000") as stack:
        code = run_demo(stack.producer_url, DEV_JWT_SECRET)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "demo: all jobs succeeded" in out
    for kind in KINDS:
        assert f"\n{kind}: job " in out
