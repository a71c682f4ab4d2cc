"""Plain helpers for the tests, defined once (the shared fixtures are in tests/fixtures/).

- `net`: free ports, serving a WSGI app on loopback, waiting on a condition.
- `stack`: driving a running stack over HTTP as the front end does (`User`, SSE `events`).
- `worker`: the in-process worker's environment and signed QStash deliveries to it.
- `broker`: the dev broker harness's recording destination and running broker.
- `backends`: reads and steps only tests need, straight on Redis and Postgres (`live_for_user`,
  `open_streams`, `renew`, `refund`, `balance`), and the contract suites' `new_id` and `submit`.
- `config`, `cli`, `browser`: the helpers of the lib/config.py, `cs` and demo page suites.
"""
