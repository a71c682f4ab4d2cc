"""The suite's fixtures, registered for every test from the modules of `tests/fixtures/`.

- `fixtures.servers`: real Redis and Postgres for the session, embedded unless REDIS_URL /
  DATABASE_URL are set (with DATABASE_URL, a database of the suite's own, dropped at the end);
  every test gets its own Redis key prefix, so tests never see each other's keys even on a
  shared server. PgBouncer and the Upstash REST, PostgREST and Storage stand-ins in front of them.
- `fixtures.stacks`: `local_stack` starts the whole local stack (`scripts.stack.devstack.Stack`)
  on those servers; `e2e_stack` is the end-to-end suite's stack, once on each profile (`local`,
  `cloud`); `boxes_stack` runs two worker boxes.
- `fixtures.inprocess`: the in-process worker (`make_worker`, `make_detached`, `env`), producer
  (`make_producer`), `db`, and the events tests' `state`, `clock` and `job_id`.
- `fixtures.fakes`: the offline LLM (`serve`, `llm`, `llm_url`) and the dev broker (`dev_broker`,
  and the harness `mounts`, `make_broker`, `broker`, `dest`).

Plain helpers (no fixtures) are in `tests/helpers/`.
"""

pytest_plugins = [
    "fixtures.servers",
    "fixtures.stacks",
    "fixtures.inprocess",
    "fixtures.fakes",
]
