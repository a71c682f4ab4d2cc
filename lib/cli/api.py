"""The producer's HTTP API, as `cs` calls it: one method per endpoint, errors as `AppError`."""

from __future__ import annotations

from typing import Any

import httpx

from lib.errors import AppError, UnavailableError

USER_AGENT = "careershaper-cli"


class ApiError(AppError):
    """The producer answered with an error body (`{"error": {code, message, details}}`)."""


def raise_for_error(response: httpx.Response) -> None:
    """Raise the API's error as an ApiError, with its HTTP status and Retry-After."""
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200] or response.reason_phrase, None
    retry_after = response.headers.get("Retry-After")
    raise ApiError(
        message,
        code=code,
        status=response.status_code,
        details=details,
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


class Api:
    """A client of the producer for one user (bearer token)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.token = token
        self.client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError(f"cannot reach the producer at {self.base_url}: {exc}") from exc
        raise_for_error(response)
        return response.status_code, response.json()

    def submit(
        self, kind: str, job_input: dict[str, Any], tier: str, idempotency_key: str | None
    ) -> tuple[bool, dict[str, Any]]:
        """Submit a job; returns (created, body). `created` is False for an idempotent replay."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        status, body = self._call(
            "POST",
            "/api/jobs",
            json={"kind": kind, "input": job_input, "tier": tier},
            headers=headers,
        )
        return status == 202, body

    def upload(self, content: bytes, content_type: str) -> str:
        """Upload an image as the front end does: a signed upload URL from `POST /api/uploads`,
        then the file straight to Storage (supabase-py's storage client). Returns its path."""
        from storage3 import SyncStorageClient
        from storage3.exceptions import StorageApiError

        grant = self._call("POST", "/api/uploads", json={"content_type": content_type})[1]
        storage_url = grant["signed_url"].split("/object/upload/sign/", 1)[0] + "/"
        try:
            with SyncStorageClient(storage_url, {}, http_client=httpx.Client(timeout=60)) as st:
                st.from_(grant["bucket"]).upload_to_signed_url(
                    grant["path"], grant["token"], content, {"content-type": content_type}
                )
        except (StorageApiError, httpx.HTTPError) as exc:
            raise UnavailableError(f"the upload to Storage failed: {exc}") from exc
        return str(grant["path"])

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", f"/api/jobs/{job_id}")[1]["job"]
        return body

    def jobs(self, limit: int, before: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        body: dict[str, Any] = self._call("GET", "/api/jobs", params=params)[1]
        return body

    def cancel(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._call("POST", f"/api/jobs/{job_id}/cancel")[1]["job"]
        return body

    def me(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", "/api/me")[1]
        return body

    def events_url(self, job_id: str) -> str:
        """The job's stream, authenticated by this client's bearer token."""
        return f"/api/jobs/{job_id}/events"
