"""Vercel function: submit, read, list and cancel jobs (`/api/jobs...`).

Each job route answers both the path the front end calls (`/api/jobs/<id>`, `.../cancel`) and
the form `vercel.json`'s rewrites give it when Vercel routes with the rewritten path
(`/api/jobs?id=<id>`, `/api/jobs?action=cancel&id=<id>`; see api/_local.py).
"""

from __future__ import annotations

from flask import Response, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from api._common import (
    create_app,
    current_identity,
    current_user,
    holds_credit,
    json_body,
    producer,
    warm,
)
from lib.errors import InputError, QuotaError
from lib.models import MAX_IDEMPOTENCY_KEY_CHARS

app = create_app(__name__)


@app.post("/api/jobs")
def submit() -> tuple[Response, int]:
    job_id = request.args.get("id")
    if job_id is not None:  # a rewritten `/api/jobs/<id>...`: only `/cancel` takes a POST
        if request.args.get("action") != "cancel":
            raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])
        return cancel(job_id)
    warm("state", "publisher")  # while the token is checked and the job charged
    who = current_identity()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS):
        raise InputError(
            "invalid Idempotency-Key",
            details={"Idempotency-Key": f"1 to {MAX_IDEMPOTENCY_KEY_CHARS} chars"},
        )
    body = json_body()
    if not holds_credit(who):  # checked before the store, whose first touch grants coins
        producer().parse(body)  # bad input is still a 400
        raise QuotaError(
            "anonymous users get no coins and no free jobs; sign in to submit jobs",
            details={"coins": 0, "free_jobs_left_today": 0},
        )
    submitted = producer().submit(who.user_id, body, key)
    return jsonify(submitted.body()), 202 if submitted.created else 200


@app.get("/api/jobs")
def list_jobs() -> Response:
    job_id = request.args.get("id")
    if job_id is not None:  # a rewritten `/api/jobs/<id>`
        return get_job(job_id)
    user_id = current_user()
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        raise InputError("invalid limit", details={"limit": "an integer 1-100"}) from None
    if not 1 <= limit <= 100:
        raise InputError("invalid limit", details={"limit": "an integer 1-100"})
    jobs = producer().list(user_id, limit, request.args.get("before"))
    return jsonify(
        {
            "jobs": [job.public() for job in jobs],
            "next_before": jobs[-1].id if len(jobs) == limit else None,
        }
    )


@app.get("/api/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify({"job": producer().get(job_id, current_user()).public()})


@app.post("/api/jobs/<job_id>/cancel")
def cancel(job_id: str) -> tuple[Response, int]:
    return jsonify({"job": producer().cancel(job_id, current_user()).public()}), 202
