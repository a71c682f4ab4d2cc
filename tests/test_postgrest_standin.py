"""The PostgREST stand-in, driven by the official `supabase` client and checked on the real
Postgres behind it with psycopg."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import requests
from helpers.net import free_port, serve_wsgi, wait_for
from postgrest.exceptions import APIError

from scripts.fakes import postgrest_standin
from supabase import Client, ClientOptions, create_client

KEY = "standin-test-service-role-key"
HEADERS = {"apikey": KEY, "Authorization": f"Bearer {KEY}"}

# Test-only objects, all named standin_test_*, created for this module and dropped after it.
SETUP = """
create table public.standin_test_log (k text primary key, n int not null default 0);
create function public.standin_test_echo(p_a int, p_b jsonb default null) returns jsonb
language sql as $$ select jsonb_build_object('a', p_a, 'b', p_b) $$;
create function public.standin_test_add(p_x int, p_y int) returns int
language sql as $$ select p_x + p_y $$;
create function public.standin_test_text(p_s text) returns text
language sql as $$ select upper(p_s) $$;
create function public.standin_test_log(p_k text) returns void
language sql as $$ insert into public.standin_test_log (k) values (p_k) $$;
create function public.standin_test_rows(p_n int)
returns table (n int, label text, doubled jsonb)
language sql as $$
  select i, 'row ' || i, jsonb_build_object('v', i * 2) from generate_series(1, p_n) as i
$$;
create function public.standin_test_typed(p_id uuid, p_tags text[], p_at timestamptz)
returns jsonb language sql as $$
  select jsonb_build_object('id', p_id, 'tags', to_jsonb(p_tags), 'year',
                            extract(year from p_at at time zone 'utc')::int)
$$;
create function public.standin_test_raise(p_msg text) returns void
language plpgsql as $$
begin
  raise exception '%', p_msg using detail = 'some detail', hint = 'some hint';
end $$;
create function public.standin_test_write_then_fail(p_k text) returns void
language plpgsql as $$
begin
  insert into public.standin_test_log (k) values (p_k);
  raise sqlstate 'PT402' using message = 'Payment Required', detail = 'Quota exceeded';
end $$;
create function public.standin_test_whoami() returns jsonb
language sql as $$
  select jsonb_build_object('role', current_user,
                            'claims', current_setting('request.jwt.claims', true)::jsonb)
$$;
create function public.standin_test_body(jsonb) returns jsonb
language sql as $$ select $1 $$;
create function public.standin_test_over(p_v int) returns text language sql as $$ select 'int' $$;
create function public.standin_test_over(p_v text) returns text language sql as $$ select 'text' $$;
grant all on public.standin_test_log to service_role;
-- Calls run as service_role; the project's grants must not decide whether these tests pass.
grant execute on all functions in schema public to service_role;
"""
TEARDOWN = """
drop function if exists public.standin_test_echo, public.standin_test_add, public.standin_test_text,
  public.standin_test_log, public.standin_test_rows, public.standin_test_typed,
  public.standin_test_raise, public.standin_test_write_then_fail, public.standin_test_whoami,
  public.standin_test_body, public.standin_test_late;
drop function if exists public.standin_test_over(int), public.standin_test_over(text);
drop table if exists public.standin_test_log;
"""


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(TEARDOWN)
        conn.execute(SETUP)
        try:
            yield conn
        finally:
            conn.execute(TEARDOWN)


@pytest.fixture(scope="module")
def base_url(database_url: str, db: psycopg.Connection) -> Iterator[str]:
    app = postgrest_standin.create_app(database_url, KEY)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        postgrest_standin.close(app)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # Without a client of its own, supabase passes a timeout that postgrest-py deprecates
    # (a DeprecationWarning on the first rpc); a bounded client is what callers should pass.
    with httpx.Client(timeout=10) as client:
        yield client


def connect(base_url: str, key: str, http: httpx.Client) -> Client:
    return create_client(base_url, key, options=ClientOptions(httpx_client=http))


@pytest.fixture(scope="module")
def supabase(base_url: str, http: httpx.Client) -> Client:
    return connect(base_url, KEY, http)


def rpc_url(base_url: str, fn: str) -> str:
    return f"{base_url}/rest/v1/rpc/{fn}"


def test_a_jsonb_result_comes_back_as_is_and_defaulted_arguments_may_be_left_out(
    supabase: Client,
) -> None:
    assert supabase.rpc("standin_test_echo", {"p_a": 1}).execute().data == {"a": 1, "b": None}
    nested = {"list": [1, "two", None], "obj": {"k": True}}
    answer = supabase.rpc("standin_test_echo", {"p_a": 2, "p_b": nested}).execute()
    assert answer.data == {"a": 2, "b": nested}
    scalar = supabase.rpc("standin_test_echo", {"p_a": 3, "p_b": "just a string"}).execute()
    assert scalar.data == {"a": 3, "b": "just a string"}


def test_scalar_results_are_json_scalars(supabase: Client, base_url: str) -> None:
    assert supabase.rpc("standin_test_add", {"p_x": 40, "p_y": 2}).execute().data == 42
    assert supabase.rpc("standin_test_text", {"p_s": "héllo"}).execute().data == "HÉLLO"
    answer = requests.post(
        rpc_url(base_url, "standin_test_text"), json={"p_s": None}, headers=HEADERS, timeout=10
    )
    assert (answer.status_code, answer.text) == (200, "null")
    assert answer.headers["Content-Type"].startswith("application/json")


def test_a_void_function_answers_204_and_its_write_is_committed(
    supabase: Client, base_url: str, db: psycopg.Connection
) -> None:
    key = uuid.uuid4().hex
    assert supabase.rpc("standin_test_log", {"p_k": key}).execute().data == []
    assert db.execute(
        "select count(*) from public.standin_test_log where k = %s", (key,)
    ).fetchone() == (1,)
    answer = requests.post(
        rpc_url(base_url, "standin_test_log"), json={"p_k": key + "x"}, headers=HEADERS, timeout=10
    )
    assert (answer.status_code, answer.content) == (204, b"")


def test_a_set_returning_function_answers_an_array_of_rows(supabase: Client) -> None:
    assert supabase.rpc("standin_test_rows", {"p_n": 2}).execute().data == [
        {"n": 1, "label": "row 1", "doubled": {"v": 2}},
        {"n": 2, "label": "row 2", "doubled": {"v": 4}},
    ]
    assert supabase.rpc("standin_test_rows", {"p_n": 0}).execute().data == []


def test_arguments_are_cast_to_the_parameter_types(supabase: Client) -> None:
    user_id = str(uuid.uuid4())
    params = {"p_id": user_id, "p_tags": ["a", "b"], "p_at": "2026-11-29T10:00:00+00:00"}
    answer = supabase.rpc("standin_test_typed", params).execute()
    assert answer.data == {"id": user_id, "tags": ["a", "b"], "year": 2026}
    assert supabase.rpc("standin_test_add", {"p_x": "40", "p_y": 2}).execute().data == 42


def test_a_function_with_one_unnamed_jsonb_parameter_receives_the_whole_body(
    supabase: Client,
) -> None:
    body = {"any": ["shape"], "n": 1}
    assert supabase.rpc("standin_test_body", body).execute().data == body


def test_unknown_functions_and_arguments_answer_404_pgrst202(
    supabase: Client, base_url: str
) -> None:
    with pytest.raises(APIError) as unknown_argument:
        supabase.rpc("standin_test_echo", {"p_a": 1, "p_nope": 2}).execute()
    assert unknown_argument.value.code == "PGRST202"
    assert unknown_argument.value.message == (
        "Could not find the function public.standin_test_echo(p_a, p_nope) in the schema cache"
    )
    assert unknown_argument.value.hint == (
        "Perhaps you meant to call the function public.standin_test_echo(p_a, p_b)"
    )
    with pytest.raises(APIError) as missing_required:
        supabase.rpc("standin_test_add", {"p_x": 1}).execute()
    assert missing_required.value.code == "PGRST202"
    answer = requests.post(
        rpc_url(base_url, "standin_test_nothing"), json={}, headers=HEADERS, timeout=10
    )
    assert answer.status_code == 404
    assert answer.json() == {
        "code": "PGRST202",
        "details": "Searched for the function public.standin_test_nothing or with a single "
        "unnamed json/jsonb parameter, but no matches were found in the schema cache.",
        "hint": None,
        "message": "Could not find the function public.standin_test_nothing() in the schema cache",
    }


def test_a_function_created_after_the_first_call_is_found_without_a_reload(
    supabase: Client, db: psycopg.Connection
) -> None:
    with pytest.raises(APIError, match="PGRST202"):
        supabase.rpc("standin_test_late", {"p_v": 1}).execute()
    db.execute(
        "create function public.standin_test_late(p_v int) returns int"
        " language sql as $$ select p_v * 10 $$;"
        " grant execute on function public.standin_test_late(int) to service_role"
    )
    assert supabase.rpc("standin_test_late", {"p_v": 1}).execute().data == 10
    db.execute("drop function public.standin_test_late(int)")
    db.execute(
        "create function public.standin_test_late(p_w int) returns int"
        " language sql as $$ select p_w * 100 $$;"
        " grant execute on function public.standin_test_late(int) to service_role"
    )
    assert supabase.rpc("standin_test_late", {"p_w": 1}).execute().data == 100


def test_an_ambiguous_overload_answers_300_pgrst203(base_url: str) -> None:
    answer = requests.post(
        rpc_url(base_url, "standin_test_over"), json={"p_v": 1}, headers=HEADERS, timeout=10
    )
    assert answer.status_code == 300
    assert answer.json()["code"] == "PGRST203"


def test_a_raised_exception_answers_400_with_the_sql_message_detail_and_hint(
    supabase: Client, base_url: str
) -> None:
    with pytest.raises(APIError) as raised:
        supabase.rpc("standin_test_raise", {"p_msg": "I refuse!"}).execute()
    assert raised.value.json() == {
        "code": "P0001",
        "details": "some detail",
        "hint": "some hint",
        "message": "I refuse!",
    }
    answer = requests.post(
        rpc_url(base_url, "standin_test_raise"), json={"p_msg": "x"}, headers=HEADERS, timeout=10
    )
    assert answer.status_code == 400
    assert answer.headers["Proxy-Status"] == "PostgREST; error=P0001"


def test_sql_errors_map_to_postgrest_http_statuses(base_url: str) -> None:
    def call(fn: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(rpc_url(base_url, fn), json=body, headers=HEADERS, timeout=10)

    key = uuid.uuid4().hex
    assert call("standin_test_log", {"p_k": key}).status_code == 204
    duplicate = call("standin_test_log", {"p_k": key})
    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "23505")
    bad_input = call("standin_test_add", {"p_x": "not a number", "p_y": 1})
    assert (bad_input.status_code, bad_input.json()["code"]) == (400, "22P02")
    custom = call("standin_test_write_then_fail", {"p_k": uuid.uuid4().hex})
    assert (custom.status_code, custom.json()["code"]) == (402, "PT402")
    assert custom.json()["details"] == "Quota exceeded"


def test_each_call_is_its_own_transaction_so_a_failure_leaves_no_write(
    supabase: Client, db: psycopg.Connection
) -> None:
    key = uuid.uuid4().hex
    with pytest.raises(APIError, match="Payment Required"):
        supabase.rpc("standin_test_write_then_fail", {"p_k": key}).execute()
    assert db.execute(
        "select count(*) from public.standin_test_log where k = %s", (key,)
    ).fetchone() == (0,)


def test_calls_run_as_service_role_with_the_request_claims(supabase: Client) -> None:
    assert supabase.rpc("standin_test_whoami", {}).execute().data == {
        "role": "service_role",
        "claims": {"role": "service_role"},
    }


def test_a_get_call_passes_query_parameters_in_a_read_only_transaction(
    supabase: Client, base_url: str
) -> None:
    assert supabase.rpc("standin_test_add", {"p_x": 1, "p_y": 2}, get=True).execute().data == 3
    answer = requests.get(
        rpc_url(base_url, "standin_test_log"), params={"p_k": "x"}, headers=HEADERS, timeout=10
    )
    assert (answer.status_code, answer.json()["code"]) == (405, "25006")


def test_requests_without_the_service_role_key_answer_401(
    base_url: str, http: httpx.Client
) -> None:
    url = rpc_url(base_url, "standin_test_add")
    body = {"p_x": 1, "p_y": 1}
    missing = requests.post(url, json=body, timeout=10)
    assert missing.status_code == 401
    assert set(missing.json()) == {"code", "message", "details", "hint"}
    for headers in ({"apikey": "wrong"}, {"Authorization": "Bearer wrong"}):
        assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 401
    for headers in ({"apikey": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert requests.post(url, json=body, headers=headers, timeout=10).json() == 2
    with pytest.raises(APIError) as denied:
        connect(base_url, "wrong-key", http).rpc("standin_test_add", body).execute()
    assert denied.value.code == "PGRST301"


def test_malformed_bodies_other_schemas_and_other_verbs_are_refused(base_url: str) -> None:
    url = rpc_url(base_url, "standin_test_add")
    invalid = requests.post(url, data="{not json", headers=HEADERS, timeout=10)
    assert (invalid.status_code, invalid.json()["code"]) == (400, "PGRST102")
    not_object = requests.post(url, json=[1, 2], headers=HEADERS, timeout=10)
    assert not_object.status_code == 400
    schema = requests.post(
        url, json={"p_x": 1, "p_y": 1}, headers={**HEADERS, "Content-Profile": "auth"}, timeout=10
    )
    assert (schema.status_code, schema.json()["code"]) == (406, "PGRST106")
    verb = requests.delete(url, headers=HEADERS, timeout=10)
    assert (verb.status_code, verb.json()["code"]) == (405, "PGRST101")


def test_main_serves_rpc_from_the_command_line_and_environment(
    database_url: str, db: psycopg.Connection
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SUPABASE_SERVICE_ROLE_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.fakes.postgrest_standin", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = rpc_url(f"http://127.0.0.1:{port}", "standin_test_add")
    try:

        def answered() -> bool:
            try:
                answer = requests.post(url, json={"p_x": 2, "p_y": 3}, headers=HEADERS, timeout=5)
            except requests.ConnectionError:
                return False
            return answer.json() == 5

        wait_for(answered, timeout=10, what="the stand-in to answer an rpc")
    finally:
        proc.terminate()
        proc.wait(10)
    missing = subprocess.run(
        [sys.executable, "-m", "scripts.fakes.postgrest_standin"],
        env={
            k: v for k, v in env.items() if k not in ("DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "DATABASE_URL" in missing.stderr
