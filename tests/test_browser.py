"""The demo page (`public/`) in a real browser: Debian's chromium driven by Python playwright.

`playwright install` cannot download a browser here, so the test launches the system chromium.
Both come from `scripts/install-browser`; when either is missing the test fails and says so.
Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.net import free_port, wait_for
from helpers.stack import RESUME, events, text_of_last_attempt

from lib.handlers import registry
from scripts.stack.demo import SCREENSHOT
from scripts.stack.devstack import Ports, Stack

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the `browser` fixture, as a failure
    sync_playwright = None

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
# The flags that work on the project's machines (no GPU, no sandbox as root, closed network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLOW = " [[llm:slow=40]]"  # 25 tokens/s: a stream that lasts long enough to reload or cancel
STREAM_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problems = []
    if sync_playwright is None:
        problems.append("the Python package `playwright` is not installed in this venv")
    executable = shutil.which("chromium")
    if executable is None:
        problems.append("`chromium` is not on PATH")
    if problems:
        pytest.fail(
            "browser tests cannot run: " + "; ".join(problems) + ". Run `scripts/install-browser`.",
            pytrace=False,
        )
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _overrides(redis_url: str, database_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_PREFIX": f"browser-{uuid.uuid4().hex[:6]}:",
        "APP_ENV": "development",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "INITIAL_COINS": "5",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "60",
        # Responses end every few seconds, so EventSource's own reconnects (Last-Event-ID) happen
        # in every long stream too.
        "SSE_MAX_SECONDS": "4",
        "WORKER_DRAIN_SECONDS": "2",
        "LOG_FORMAT": "json",
        # The session's stacks share one database: a reconciler would take the others' running
        # jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
        "RECONCILE_CRON": "",
    }


@pytest.fixture(scope="module")
def stack(
    browser: Browser,
    redis_url: str,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    ports = Ports(
        producer=free_port(),
        worker=free_port(),
        broker=free_port(),
        llm=free_port(),
        storage=free_port(),
    )
    overrides = _overrides(redis_url, database_url)
    logs = tmp_path_factory.mktemp("browser-stack-logs")
    with Stack(ports=ports, overrides=overrides, log_dir=logs, quiet=True) as running:
        yield running


@pytest.fixture
def detached_stack(
    browser: Browser,
    redis_url: str,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A stack in EXECUTION_MODE=detached whose paid model runs one job at a time: the second
    job waits in line."""
    ports = Ports(
        producer=free_port(),
        worker=free_port(),
        broker=free_port(),
        llm=free_port(),
        storage=free_port(),
    )
    overrides = {
        **_overrides(redis_url, database_url),
        "EXECUTION_MODE": "detached",
        "LLM_MAX_CONCURRENCY_PAID": "1",
        "DETACHED_WAIT_SECONDS": "30",
    }
    logs = tmp_path_factory.mktemp("browser-detached-logs")
    with Stack(ports=ports, overrides=overrides, log_dir=logs, quiet=True) as running:
        yield running


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    uncaught: list[str] = []
    opened.on("pageerror", lambda error: uncaught.append(str(error)))
    opened.goto(stack.producer_url + "/")
    yield opened
    context.close()
    assert not uncaught, f"the page threw: {uncaught}"


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


def test_a_dev_user_sees_deltas_stream_in_then_the_match_result_and_coins(
    page: Page, stack: Stack
) -> None:
    sign_in(page)
    run(page, "job_match")
    # Deltas arrive one batch at a time: the running job's text is seen at 3 different lengths.
    page.wait_for_function(
        """() => {
            const length = document.getElementById('output').textContent.length;
            const running = document.getElementById('status').dataset.status === 'running';
            window.seenLengths = window.seenLengths || new Set();
            if (running && length > 0) window.seenLengths.add(length);
            return window.seenLengths.size >= 3;
        }""",
        timeout=STREAM_TIMEOUT_MS,
    )
    expect(page.locator("#progress")).not_to_have_attribute("value", "0")
    wait_for_status(page, "succeeded")
    expect(page.locator("#match-score")).to_have_text(re.compile(r"^\d{1,3}$"))
    result = page.locator("#result")
    for heading in ("Strengths", "Gaps", "Missing keywords"):
        expect(result.get_by_role("heading", name=heading)).to_be_visible()
    expect(page.locator("#coins")).to_have_text("4")  # job_match costs 1 coin
    assert page.locator("#output").text_content() == replayed_text(stack, saved_job(page))
    expect(page.get_by_role("button", name="Run")).to_be_enabled()
    shot(page, "browser-job-match-result")


def test_a_reload_mid_stream_resumes_without_duplicating_text(page: Page, stack: Stack) -> None:
    sign_in(page)
    run(page, "job_match", RESUME + SLOW)
    wait_for_streamed_text(page, 120)
    before_reload = saved_job(page)
    stream_urls: list[str] = []
    page.on("request", lambda r: stream_urls.append(r.url) if "/events" in r.url else None)
    page.reload()
    shown = page.locator("#output").text_content() or ""
    assert shown.startswith(before_reload["text"]) and shown
    wait_for_status(page, "succeeded")
    job = saved_job(page)
    assert job["id"] == before_reload["id"]
    assert page.locator("#output").text_content() == replayed_text(stack, job)
    assert "last_event_id=" in stream_urls[0], stream_urls
    # The page follows the user stream (all the user's jobs in one), not one job's.
    assert all("/api/events?token=" in url for url in stream_urls), stream_urls
    assert len(stream_urls) >= 2, "the stream should also have resumed by itself (SSE_MAX_SECONDS)"
    expect(page.locator("#match-score")).to_be_visible()
    shot(page, "browser-reloaded-mid-stream")


def test_cancelling_a_running_job_shows_cancelled_and_refunds_on_a_phone(
    browser: Browser, stack: Stack
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(stack.producer_url + "/")
        # Keyboard only: the skip link, then the dev sign-in button.
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        expect(page.locator("#dev-signin")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#coins")).to_have_text("5")
        run(page, "resume_customize", RESUME + SLOW)
        wait_for_streamed_text(page, 20)
        expect(page.locator("#coins")).to_have_text("3")  # resume_customize costs 2 coins
        page.get_by_role("button", name="Cancel job").click()
        wait_for_status(page, "cancelled")
        expect(page.locator("#status")).to_contain_text("cancelled")
        expect(page.locator("#result")).to_contain_text("cancelled")
        expect(page.locator("#coins")).to_have_text("5")
        expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
        shot(page, "browser-cancelled-phone")
    finally:
        context.close()


def test_the_customized_resume_and_the_interview_questions_are_rendered(
    browser: Browser, stack: Stack
) -> None:
    pages = {}
    for kind in ("resume_customize", "interview_prep"):  # two users, both jobs at once
        pages[kind] = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        pages[kind].goto(stack.producer_url + "/")
        sign_in(pages[kind])
        run(pages[kind], kind)
    try:
        resume, prep = pages["resume_customize"], pages["interview_prep"]
        wait_for_status(resume, "succeeded")
        result = resume.locator("#result")
        expect(result.get_by_role("heading", name="Customized resume")).to_be_visible()
        expect(result.locator(".markdown h4, .markdown h5").first).to_be_visible()
        expect(result.get_by_role("heading", name="Changes")).to_be_visible()
        expect(resume.locator("#coins")).to_have_text("3")
        shot(resume, "browser-resume-customize-result")
        wait_for_status(prep, "succeeded")
        questions = prep.locator("#result .questions > li")
        expect(questions.first).to_contain_text("Why it is asked:")
        expect(questions.first).to_contain_text("Answer outline:")
        expect(prep.locator("#result").get_by_role("heading", name="Focus areas")).to_be_visible()
        shot(prep, "browser-interview-prep-result")
    finally:
        for opened in pages.values():
            opened.context.close()


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


def test_a_pipeline_from_a_screenshot_uploads_it_and_shows_each_step(
    page: Page, stack: Stack
) -> None:
    sign_in(page)
    page.get_by_label("Kind").select_option("match_from_image")
    page.get_by_label("Job posting screenshot").set_input_files(str(SCREENSHOT))
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#stage")).to_contain_text(
        "step 2/4: job_summary", timeout=STREAM_TIMEOUT_MS
    )
    wait_for_status(page, "succeeded")
    expect(page.locator("#stage")).to_contain_text("step 4/4: job_match")
    expect(page.locator("#result-section")).to_be_visible()
    expect(page.locator("#coins")).to_have_text("1")  # the pipeline costs 4 coins, once
    expect(page.locator("#match-score")).to_have_text(re.compile(r"^\d{1,3}$"))
    job = saved_job(page)
    registry()["match_from_image"].result_model.model_validate(job["result"])
    shot(page, "browser-pipeline-result")


def test_a_pipeline_its_audit_stopped_shows_the_audit_and_no_match(
    page: Page, stack: Stack
) -> None:
    sign_in(page)
    page.get_by_label("Resume").fill(RESUME + " [[llm:audit_stop]]")  # proceed: false
    page.get_by_label("Kind").select_option("match_from_image")
    page.get_by_label("Job posting screenshot").set_input_files(str(SCREENSHOT))
    page.get_by_role("button", name="Run").click()
    wait_for_status(page, "succeeded")

    job = saved_job(page)
    assert job["result"]["stopped_by"] == "pre_match_audit" and job["result"]["job_match"] is None
    stopped = page.locator("#pipeline-stopped")
    expect(stopped).to_contain_text("Stopped by pre_match_audit: no match was run")
    expect(stopped).to_contain_text(job["result"]["pre_match_audit"]["summary"])
    expect(page.locator("#match-score")).to_have_count(0)
    expect(page.locator("#stage")).to_contain_text("step 3/4: pre_match_audit")
    expect(page.locator("#coins")).to_have_text("1")  # charged as submitted
    shot(page, "browser-pipeline-stopped")
