"""The demo page (`public/`) in a real browser: Debian's chromium driven by Python playwright
(fixtures/browser_suite.py). A job of each kind, a reload mid-stream, a cancel on a phone, and
pipelines from a screenshot. Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import re

import pytest
from fixtures import browser_suite
from helpers.browser import (
    SLOW,
    STREAM_TIMEOUT_MS,
    replayed_text,
    run,
    saved_job,
    shot,
    sign_in,
    wait_for_status,
    wait_for_streamed_text,
)
from helpers.stack import RESUME

from lib.handlers import registry
from scripts.stack.demo import SCREENSHOT
from scripts.stack.devstack import Stack

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # reported by the `browser` fixture, as a failure
    pass

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

browser = browser_suite.browser
stack = browser_suite.stack  # this module's own stack
page = browser_suite.page


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
