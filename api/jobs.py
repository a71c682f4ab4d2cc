"""Vercel function: submit, read, list and cancel jobs (`/api/jobs...`)."""

from __future__ import annotations

from flask import Response, jsonify, request

from api._common import create_app, current_user, json_body, producer, warm
from lib.errors import InputError
from lib.models import MAX_IDEMPOTENCY_KEY_CHARS

app = create_app(__name__)


@app.post("/api/jobs")
def submit() -> tuple[Response, int]:
    warm("state", "publisher")  # while the token is checked and the job charged
    user_id = current_user()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS):
        raise InputError(
            "invalid Idempotency-Key",
            details={"Idempotency-Key": f"1 to {MAX_IDEMPOTENCY_KEY_CHARS} chars"},
        )
    submitted = producer().submit(user_id, json_body(), key)
    return jsonify(submitted.body()), 202 if submitted.created else 200


@app.get("/api/jobs")
def list_jobs() -> Response:
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
