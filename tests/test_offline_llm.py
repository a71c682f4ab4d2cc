"""The offline LLM, driven by the real `openai` client over loopback HTTP."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from helpers.net import free_port, wait_for
from helpers.offline_llm import (
    CJK_RESUME,
    RESUME,
    Constraints,
    Llm,
    Note,
    Review,
    Streamed,
    Tiny,
    schema_format,
    strings_in,
    user,
)

from lib.handlers import registry
from lib.handlers.base import detect_language
from lib.handlers.pre_match_audit import AuditResult
from scripts.fakes.offline_llm import REFUSAL

pytestmark = pytest.mark.timeout(30)


def test_a_json_schema_request_streams_a_schema_valid_instance(llm: Llm) -> None:
    streamed = llm.stream(
        messages=user(f"{RESUME} [[note:hidden-marker]]"), response_format=schema_format(Review)
    )

    review = Review.model_validate_json(streamed.content)
    assert len(review.sections) == 3
    assert all(len(section.bullets) == 3 for section in review.sections)
    assert review.headline is not None
    assert review.summary_markdown.startswith("# ")
    assert "\n- " in review.summary_markdown
    assert 100 <= len(review.summary_markdown.split()) <= 150
    vocabulary = {w.lower() for w in RESUME.split()}
    for text in strings_in(review.model_dump(mode="json", exclude={"seniority"})):
        assert set(re.findall(r"[a-z]+", text.lower())) <= vocabulary
    assert "hidden" not in streamed.content


@pytest.mark.parametrize("seed", ["alpha", "beta", "gamma"])
def test_instances_honour_bounds_lengths_formats_refs_and_recursion(llm: Llm, seed: str) -> None:
    completion = llm.client().chat.completions.create(
        model="m", messages=user(f"{seed} {RESUME}"), response_format=schema_format(Constraints)
    )

    found = Constraints.model_validate_json(completion.choices[0].message.content)
    assert len(found.few) == 5
    assert found.tree.children


def test_a_stream_opens_with_the_role_and_ends_with_stop_in_small_tokens(llm: Llm) -> None:
    streamed = llm.stream(model="any-model-name", messages=user(RESUME))

    first, last = streamed.choice_chunks[0], streamed.choice_chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert last.choices[0].finish_reason == "stop"
    assert last.choices[0].delta.content
    assert all(c.choices[0].finish_reason is None for c in streamed.choice_chunks[:-1])
    assert {c.model for c in streamed.chunks} == {"any-model-name"}
    assert max(len(c.choices[0].delta.content) for c in streamed.content_chunks) <= 5
    assert 50 <= len(streamed.content.split()) <= 80
    emitted = streamed.emitted(streamed.chunks)
    assert emitted == sorted(emitted)
    assert abs(emitted[-1] - time.time()) < 5


def test_the_same_messages_give_the_same_output_and_other_messages_do_not(llm: Llm) -> None:
    fmt = schema_format(Review)
    first = llm.stream(messages=user(RESUME), response_format=fmt).content
    again = llm.stream(messages=user(RESUME), response_format=fmt).content
    other = llm.stream(messages=user(RESUME + " Go"), response_format=fmt).content
    whole = llm.client().chat.completions.create(
        model="offline", messages=user(RESUME), response_format=fmt
    )

    assert first == again
    assert whole.choices[0].message.content == first
    assert other != first


def test_a_chinese_message_gets_chinese_strings(llm: Llm) -> None:
    structured = llm.stream(messages=user(CJK_RESUME), response_format=schema_format(Review))
    prose = llm.stream(messages=user(CJK_RESUME)).content

    texts = strings_in(Review.model_validate_json(structured.content).model_dump(mode="json"))
    texts.remove(json.loads(structured.content)["seniority"])
    for text in [*texts, prose]:
        assert re.search(r"[\u4e00-\u9fff]", text)
        assert not re.search(r"[A-Za-z]", text)
    assert max(len(c.choices[0].delta.content) for c in structured.content_chunks[5:-5]) <= 5


@pytest.mark.parametrize("lang", ["en", "zh"])
# A pipeline has no prompts of its own: its steps are kinds (tests/test_pipeline.py).
@pytest.mark.parametrize("kind", sorted(k for k, h in registry().items() if h.pipeline is None))
def test_every_kinds_prompts_get_an_answer_its_result_model_accepts(
    llm: Llm, kind: str, lang: str
) -> None:
    handler = registry()[kind]
    text = RESUME if lang == "en" else CJK_RESUME
    system, template = handler.prompts[lang]
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    schema = handler.result_model.model_json_schema()
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": template.format(**dict.fromkeys(names, text))},
    ]
    streamed = llm.stream(
        messages=messages,
        response_format={"type": "json_schema", "json_schema": {"name": kind, "schema": schema}},
    )

    result = handler.result_model.model_validate_json(streamed.content)
    assert detect_language(json.dumps(result.model_dump(), ensure_ascii=False)) == lang


def test_include_usage_adds_a_final_chunk_that_counts_the_tokens(llm: Llm) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *user(RESUME)]
    streamed = llm.stream(messages=messages, stream_options={"include_usage": True})

    final = streamed.chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens == len(streamed.content_chunks)
    assert abs(final.usage.prompt_tokens - len("Be brief." + RESUME) / 4) <= 1
    total = final.usage.prompt_tokens + final.usage.completion_tokens
    assert final.usage.total_tokens == total
    assert all(c.usage is None for c in streamed.chunks[:-1])


def test_a_non_streaming_call_returns_a_completion_with_usage(llm: Llm) -> None:
    completion = llm.client().chat.completions.create(model="m1", messages=user(RESUME))

    assert completion.object == "chat.completion"
    assert completion.model == "m1"
    assert completion.choices[0].finish_reason == "stop"
    assert len(completion.choices[0].message.content.split()) >= 50
    assert completion.usage.completion_tokens > 50


def test_a_fail_marker_answers_every_call_with_that_status(llm: Llm) -> None:
    client = llm.client()
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="m", messages=user("[[llm:fail=500]] hi"))
        assert failed.value.status_code == 500
        assert failed.value.type == "server_error"
        assert failed.value.body["message"]
    with pytest.raises(openai.RateLimitError):
        llm.stream(client, messages=user("[[llm:fail=429]] hi"))


def test_a_fail_once_marker_fails_the_first_call_for_those_messages_only(
    serve: Callable[..., Llm],
) -> None:
    llm, fresh = serve(), serve()
    messages = user(f"{RESUME} [[llm:fail_once=503]]")

    with pytest.raises(openai.InternalServerError) as failed:
        llm.stream(messages=messages)
    assert failed.value.status_code == 503
    assert llm.stream(messages=messages).content
    assert llm.stream(messages=messages).content
    with pytest.raises(openai.InternalServerError):
        fresh.stream(messages=messages)


def test_a_hang_marker_sends_nothing_until_the_client_gives_up(llm: Llm) -> None:
    state = llm.state
    started = time.monotonic()

    with pytest.raises(openai.APITimeoutError):
        llm.stream(llm.client(timeout=1.0), messages=user("[[llm:hang]]"))

    assert time.monotonic() - started < 3
    wait_for(lambda: state.hanging == 0, timeout=3, what="the server to notice the disconnect")


def test_a_hanging_request_does_not_block_others_and_ends_when_the_server_stops(
    serve: Callable[..., Llm],
) -> None:
    llm = serve()
    state = llm.state
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            llm.client(timeout=20).chat.completions.create(model="m", messages=user("[[llm:hang]]"))
        except openai.APIError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    wait_for(lambda: state.hanging == 1, timeout=5, what="the request to hang")
    assert llm.stream(messages=user(RESUME)).content
    assert state.hanging == 1

    state.stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [openai.APIConnectionError]


def test_a_hang_ends_without_a_response_after_hang_seconds(serve: Callable[..., Llm]) -> None:
    llm = serve(hang_seconds=0.5)
    started = time.monotonic()

    with pytest.raises(openai.APIConnectionError) as failed:
        llm.stream(llm.client(timeout=10), messages=user("[[llm:hang]]"))

    assert not isinstance(failed.value, openai.APITimeoutError)
    assert 0.4 <= time.monotonic() - started < 5


@pytest.mark.parametrize("tokens", [300, 1000])
def test_a_tokens_marker_lengthens_a_schema_answer_to_that_many_tokens(
    llm: Llm, tokens: int
) -> None:
    from scripts.fakes.offline_llm import tokenize

    plain = llm.stream(messages=user("[[llm:slow=0]] hi"), response_format=schema_format(Tiny))
    longer = llm.stream(
        messages=user(f"[[llm:slow=0]] [[llm:tokens={tokens}]] hi"),
        response_format=schema_format(Tiny),
    )

    assert len(tokenize(plain.content)) < tokens
    assert tokens <= len(tokenize(longer.content)) <= tokens + 40  # the last word may overshoot
    Tiny.model_validate_json(longer.content)  # still a valid answer: `notes` is ignored
    assert '"notes": ' in longer.content and '"notes"' not in plain.content


def test_a_slow_marker_spaces_tokens_at_least_that_far_apart(llm: Llm) -> None:
    streamed = llm.stream(messages=user("[[llm:slow=80]] hi"), response_format=schema_format(Tiny))

    Tiny.model_validate_json(streamed.content)
    emitted = streamed.emitted(streamed.content_chunks)
    gaps = [b - a for a, b in zip(emitted, emitted[1:], strict=False)]
    assert len(gaps) >= 4
    assert min(gaps) >= 0.05
    assert sum(gaps) / len(gaps) >= 0.075
    arrivals = [t for t, c in zip(streamed.arrivals, streamed.chunks, strict=True) if c.choices]
    assert arrivals[-1] - arrivals[1] >= 0.8 * 0.08 * len(gaps)


def test_tokens_per_second_sets_the_pace_of_a_stream(serve: Callable[..., Llm]) -> None:
    llm = serve(tokens_per_second=50)
    streamed = llm.stream(messages=user("hi"), response_format=schema_format(Tiny))

    emitted = streamed.emitted(streamed.content_chunks)
    expected = (len(emitted) - 1) / 50
    assert 0.8 * expected <= emitted[-1] - emitted[0] <= expected + 0.5


def test_an_invalid_json_marker_streams_text_that_is_not_json(llm: Llm) -> None:
    content = llm.stream(
        messages=user(f"{RESUME} [[llm:invalid_json]]"), response_format=schema_format(Review)
    ).content

    assert content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_an_invalid_json_once_marker_spoils_only_the_first_answer_to_that_user_message(
    llm: Llm,
) -> None:
    asked = user(f"{RESUME} [[llm:invalid_json_once]]")
    repair = [{"role": "system", "content": "Answer with only the JSON object."}, *asked]

    with pytest.raises(json.JSONDecodeError):
        json.loads(llm.stream(messages=asked, response_format=schema_format(Review)).content)
    answer = llm.stream(messages=repair, response_format=schema_format(Review)).content

    Review.model_validate_json(answer)


def test_booleans_answer_true_and_an_audit_stop_marker_turns_the_audit_against_the_match(
    llm: Llm,
) -> None:
    def audit(text: str) -> AuditResult:
        content = llm.stream(messages=user(text), response_format=schema_format(AuditResult))
        return AuditResult.model_validate_json(content.content)

    # Seeded from the messages: five messages, twenty booleans that a coin would not all set.
    for seed in ("alpha", "beta", "gamma", "delta", "epsilon"):
        go = audit(f"{seed} {RESUME}")
        assert go.proceed and go.resume_is_resume and go.job_description_is_job
        assert go.same_language
        stop = audit(f"{seed} {RESUME} [[llm:audit_stop]]")
        assert not stop.proceed and not stop.job_description_is_job
        assert stop.resume_is_resume and stop.same_language


def test_a_refuse_marker_streams_a_refusal_instead_of_content(llm: Llm) -> None:
    messages = user(f"{RESUME} [[llm:refuse]]")
    streamed = llm.stream(messages=messages, response_format=schema_format(Review))
    whole = llm.client().chat.completions.create(model="m", messages=messages)

    deltas = [c.choices[0].delta for c in streamed.choice_chunks]
    assert "".join(d.refusal or "" for d in deltas) == REFUSAL
    assert all(not d.content for d in deltas)
    assert streamed.choice_chunks[-1].choices[0].finish_reason == "stop"
    assert whole.choices[0].message.refusal == REFUSAL
    assert whole.choices[0].message.content is None


def test_a_schema_in_system_tags_gets_a_valid_instance_in_json_object_mode(llm: Llm) -> None:
    schema = json.dumps(Review.model_json_schema())
    messages = [
        {"role": "system", "content": f"Answer in JSON.\n<json_schema>{schema}</json_schema>"},
        *user(RESUME),
    ]
    streamed = llm.stream(messages=messages, response_format={"type": "json_object"})

    assert len(Review.model_validate_json(streamed.content).sections) == 3


def test_fifty_concurrent_streams_all_complete_together(llm: Llm) -> None:
    client = llm.client(timeout=20)
    start = threading.Barrier(50)

    def one(i: int) -> Streamed:
        start.wait(5)
        # 50 ms per token keeps every stream open for about a second.
        messages = user(f"[[llm:slow=50]] {RESUME} number {i}")
        return llm.stream(client, messages=messages, response_format=schema_format(Note))

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))

    assert len({Note.model_validate_json(r.content).model_dump_json() for r in results}) == 50
    assert all(r.choice_chunks[-1].choices[0].finish_reason == "stop" for r in results)
    firsts = [r.emitted(r.content_chunks)[0] for r in results]
    lasts = [r.emitted(r.content_chunks)[-1] for r in results]
    assert max(firsts) < min(lasts)


def test_a_request_without_messages_is_rejected_with_400(llm: Llm) -> None:
    with pytest.raises(openai.BadRequestError) as failed:
        llm.client().chat.completions.create(model="m", messages=[])
    assert failed.value.type == "invalid_request_error"

    raw = urllib.request.Request(f"{llm.url}/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(raw, timeout=5)
    with rejected.value as response:
        assert response.status == 400
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"


def test_health_and_models_answer_without_auth(llm: Llm) -> None:
    with urllib.request.urlopen(f"{llm.url}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"ok": True}
    assert "offline" in [m.id for m in llm.client().models.list()]


def test_the_cli_serves_at_the_env_rate_and_never_logs_message_content(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OFFLINE_LLM_TOKENS_PER_SECOND": "1000"}
    log_path = tmp_path / "llm.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.fakes.offline_llm", "--port", str(port)],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stderr=log_file,
        )
    try:
        llm = Llm(None, f"http://127.0.0.1:{port}")
        wait_for(lambda: "offline LLM on" in log_path.read_text(), timeout=15, what="startup")
        assert llm.stream(model="cli-model", messages=user(RESUME)).content
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

    log = log_path.read_text()
    assert "at 1000.0 tokens/s" in log
    assert log.rstrip().endswith("stopped")
    assert re.search(r"model=cli-model status=200 tokens=\d+ stream$", log, re.M)
    assert "payments" not in log
