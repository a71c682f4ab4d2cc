"""The demo page's test helpers (test_browser.py, test_browser_page.py): signing in, running a kind
and waiting on what the page shows, the job the page saved, the text of a full replay, and
screenshots to `test-artifacts/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.stack import events, text_of_last_attempt
from scripts.stack.devstack import Stack

try:
    from playwright.sync_api import Page, expect
except ImportError:  # reported by the `browser` fixture (fixtures/browser_suite.py), as a failure
    pass

ROOT = Path(__file__).resolve().parents[1]


ARTIFACTS = ROOT / "test-artifacts"


SLOW = " [[llm:slow=40]]"  # 25 tokens/s: a stream that lasts long enough to reload or cancel


STREAM_TIMEOUT_MS = 30_000


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page) -> None:
    page.get_by_role("button", name="Sign in as a new dev user").click()
    expect(page.locator("#coins")).to_have_text("5")


def run(page: Page, kind: str, resume: str | None = None) -> None:
    if resume is not None:
        page.get_by_label("Resume").fill(resume)
    page.get_by_label("Kind").select_option(kind)
    page.get_by_role("button", name="Run").click()


def wait_for_status(page: Page, status: str) -> None:
    expect(page.locator("#status")).to_have_attribute(
        "data-status", status, timeout=STREAM_TIMEOUT_MS
    )


def wait_for_streamed_text(page: Page, chars: int) -> None:
    """Wait until the page has shown `chars` characters of a running job's text."""
    page.wait_for_function(
        """(chars) => document.getElementById('status').dataset.status === 'running'
               && document.getElementById('output').textContent.length >= chars""",
        arg=chars,
        timeout=STREAM_TIMEOUT_MS,
    )


def saved_job(page: Page) -> dict[str, Any]:
    return page.evaluate("JSON.parse(sessionStorage.getItem('cs.job'))")  # type: ignore[no-any-return]


def replayed_text(stack: Stack, job: dict[str, Any]) -> str:
    """The text of a full replay of the job's stream, from its first event."""
    return text_of_last_attempt(events(stack.producer_url, job["events_url"]))
