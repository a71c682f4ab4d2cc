"""The demo page (`public/`) in a real browser (fixtures/browser_suite.py): a waiting job's place in
line, model Markdown rendered as text only, and the dev token endpoint it signs in with.
Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
from fixtures import browser_suite
from helpers.browser import (
    ROOT,
    SLOW,
    STREAM_TIMEOUT_MS,
    run,
    shot,
    sign_in,
    wait_for_status,
    wait_for_streamed_text,
)
from helpers.net import free_port, wait_for
from helpers.stack import RESUME

from scripts.stack.devstack import Stack

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # reported by the `browser` fixture, as a failure
    pass

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

browser = browser_suite.browser
stack = browser_suite.stack  # this module's own stack
detached_stack = browser_suite.detached_stack
page = browser_suite.page


def test_a_waiting_job_shows_its_place_in_line_and_eta_until_it_runs(
    browser: Browser, detached_stack: Stack
) -> None:
    pages = []
    try:
        for _ in range(2):  # two users; the model takes one job at a time
            opened = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            opened.goto(detached_stack.producer_url + "/")
            sign_in(opened)
            pages.append(opened)
        first, second = pages
        first.get_by_label("Tier").select_option("paid")
        run(first, "job_match", RESUME + SLOW)
        wait_for_streamed_text(first, 10)
        second.get_by_label("Tier").select_option("paid")
        run(second, "job_match", RESUME)
        line = second.locator("#queue")
        expect(line).to_be_visible(timeout=STREAM_TIMEOUT_MS)
        expect(line).to_have_text(re.compile(r"^#1 in line · about \d+ s$"))
        expect(second.locator("#status")).to_have_attribute("data-status", "queued")
        shot(second, "browser-queue-position")
        wait_for_status(second, "running")
        expect(line).to_be_hidden()
        wait_for_status(second, "succeeded")
    finally:
        for opened in pages:
            opened.context.close()


def test_model_markdown_is_rendered_as_text_never_as_markup(page: Page) -> None:
    rendered = page.evaluate(
        """() => {
            const md = '# Jordan <b>Lee</b>\\n<img src=x onerror="window.pwned = 1">\\n'
                + '- **Python** & <script>window.pwned = 2</script>\\n- Flask\\n\\nPlain text';
            const root = window.CareerShaper.renderMarkdown(md);
            document.body.append(root);
            return {
                heading: root.querySelector('h4').textContent,
                items: [...root.querySelectorAll('ul > li')].map((li) => li.textContent),
                bold: root.querySelector('li strong').textContent,
                elements: [...root.querySelectorAll('*')].map((n) => n.tagName.toLowerCase()),
            };
        }"""
    )
    assert rendered["heading"] == "Jordan <b>Lee</b>"
    assert rendered["items"] == ["Python & <script>window.pwned = 2</script>", "Flask"]
    assert rendered["bold"] == "Python"
    assert set(rendered["elements"]) <= {"h4", "p", "ul", "li", "strong"}
    assert page.evaluate("window.pwned") is None


def test_the_dev_token_endpoint_mints_only_in_development(stack: Stack) -> None:
    given = str(uuid.uuid4())
    with httpx.Client(base_url=stack.producer_url, timeout=10) as client:
        minted = client.post("/api/dev/token", json={"user_id": given})
        assert minted.status_code == 200 and minted.json()["user_id"] == given
        me = client.get(
            "/api/me", headers={"Authorization": f"Bearer {minted.json()['access_token']}"}
        )
        assert me.json()["user_id"] == given
        bad = client.post("/api/dev/token", json={"user_id": "nope"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    port = free_port()
    producer = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "api._local:app"],
        cwd=ROOT,
        # Outside development the public dev secret is refused at start, so this producer has
        # secrets of its own: the dev token endpoint must be off even so.
        env={
            **stack.env,
            "APP_ENV": "test",
            "SUPABASE_JWT_SECRET": secrets.token_urlsafe(32),
            "STREAM_TOKEN_SECRET": secrets.token_urlsafe(32),
            "QSTASH_TOKEN": secrets.token_urlsafe(16),
            # No reconciler here: it would verify signatures with the stack's public dev keys.
            "PRODUCER_URL": "",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/api/health"), 20, 0.1, what="a test-env producer")
        refused = httpx.post(url + "/api/dev/token", json={})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    finally:
        os.killpg(producer.pid, signal.SIGTERM)
        producer.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
