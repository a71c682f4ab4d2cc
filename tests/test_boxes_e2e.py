"""End to end with two worker boxes (fixtures/stacks.py `boxes_stack`: two gunicorn workers on two
ports, WORKER_URLS listing both, the reconciler on its schedule): jobs spread, a full box is
passed over, and when one box dies under load every job still ends on the other."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from helpers.net import wait_for
from helpers.stack import RESUME, User, follow, terminal_count

from lib.boxes import Registry
from lib.handlers import registry as registry_of_kinds
from lib.state import State
from lib.state.tcp import TcpBackend
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

SLOW = " [[llm:slow=25]]"  # about 25 ms a token: a job streams for a few seconds


def attempts(box: str) -> int:
    """The attempts a box finished (its /metrics, every outcome)."""
    text = httpx.get(f"{box}/metrics", timeout=10).text
    found = re.findall(r"^cs_job_attempts_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(value) for value in found))


def registry(stack: Stack) -> tuple[Registry, TcpBackend]:
    backend = TcpBackend(stack.env["REDIS_URL"])
    state = State(backend, prefix=stack.env["REDIS_PREFIX"], box_ttl=1.5)
    return Registry(state), backend


def submit_many(stack: Stack, count: int, resume: str = RESUME) -> list[tuple[User, str]]:
    """`count` jobs of as many users at once; (user, events url) of each."""

    def one(_: int) -> tuple[User, str]:
        user = User(stack.producer_url)
        response = user.submit("job_match", resume=resume)
        assert response.status_code == 202, response.text
        return user, response.json()["events_url"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def finish_all(stack: Stack, jobs: list[tuple[User, str]], timeout: float = 120) -> None:
    """Follow every job's stream to its end; each ends succeeded, with one terminal event."""

    def one(job: tuple[User, str]) -> None:
        stream = follow(stack.producer_url, job[1], timeout=timeout)
        assert stream[-1].data["status"] == "succeeded", stream[-1].data
        assert terminal_count(stream) == 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, jobs))


def test_both_boxes_announce_themselves(boxes_stack: Stack) -> None:
    reg, backend = registry(boxes_stack)
    try:
        live = wait_for(lambda: len(reg.live()) == 2 and reg.live(), what="two live boxes")
    finally:
        backend.close()
    assert sorted(live) == sorted(boxes_stack.worker_urls)
    assert all(box.max_jobs == 8 and box.processes == 1 for box in live.values())


def test_jobs_spread_over_both_boxes(boxes_stack: Stack) -> None:
    first, second = boxes_stack.worker_urls
    before = attempts(first), attempts(second)

    finish_all(boxes_stack, submit_many(boxes_stack, 12))

    ran = attempts(first) - before[0], attempts(second) - before[1]
    assert sum(ran) == 12
    assert min(ran) >= 3, ran  # picks alternate as each reservation lowers a box's room


def test_a_box_with_no_room_gets_no_new_jobs(boxes_stack: Stack) -> None:
    first, second = boxes_stack.worker_urls
    reg, backend = registry(boxes_stack)
    stop = threading.Event()

    def hold_the_first_box_full() -> None:  # a second process of box 1 that runs 8 jobs
        while not stop.is_set():
            reg.beat(first, "busy", 8, 8)
            stop.wait(0.3)

    # An earlier test's last attempts are counted in /metrics just after their terminal event;
    # a box announces them ended after that, so an idle fleet has counted everything.
    wait_for(
        lambda: len(reg.live()) == 2 and all(b.running == 0 for b in reg.live().values()),
        what="both boxes idle",
    )
    holder = threading.Thread(target=hold_the_first_box_full, daemon=True)
    holder.start()
    try:
        wait_for(lambda: reg.live()[first].free <= 0, what="the first box to look full")
        before = attempts(first), attempts(second)
        finish_all(boxes_stack, submit_many(boxes_stack, 6))
        assert (attempts(first) - before[0], attempts(second) - before[1]) == (0, 6)
    finally:
        stop.set()
        holder.join(5)
        reg.leave(first, "busy")
        backend.close()


def test_when_a_box_is_killed_under_load_every_job_ends_on_the_other(
    boxes_stack: Stack,
) -> None:
    first, second = boxes_stack.worker_urls
    reg, backend = registry(boxes_stack)
    worker = boxes_stack.component("worker")
    try:
        jobs = submit_many(boxes_stack, 16, resume=RESUME + SLOW)
        client = redis.Redis.from_url(boxes_stack.env["REDIS_URL"])
        leases = f"{boxes_stack.env['REDIS_PREFIX']}job:*:lease"
        wait_for(lambda: len(list(client.scan_iter(leases))) >= 6, timeout=30, what="load")
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGKILL)  # the whole first box, mid-job
        worker.proc.wait(10)
        killed_at = time.monotonic()

        # Its announcement lapses; new jobs go to the live box only.
        wait_for(lambda: first not in reg.live(), timeout=10, what="the dead box to lapse")
        assert reg.pick([first, second]) == second
        jobs += submit_many(boxes_stack, 4)

        # Its running jobs lose their leases; the reconciler re-publishes them to the other.
        finish_all(boxes_stack, jobs, timeout=150)
        assert time.monotonic() - killed_at < 150
        cost = registry_of_kinds()["job_match"].cost
        for user, _ in jobs:  # each charged once, whatever box ran it
            assert user.me()["coins"] == 50 - cost
    finally:
        backend.close()
        boxes_stack.restart("worker")
