"""vercel.json's rewrites as api/_local.py follows them, compiled as `vercel build` does."""

from __future__ import annotations

import pytest

from api._rewrites import compile_rewrite, load_rewrites

JOB = "3f0f6d2a-8a4c-4a5e-9f60-3f0b2d8c1e11"

# The rewrite routes `vercel build` (vercel 64.0.2, offline as in ENVIRONMENT.md) wrote to
# .vercel/output/config.json for this vercel.json; `make check-deploy` runs that build.
BUILT_ROUTES = [
    (r"^/api/openapi\.json$", "/api/openapi"),
    (r"^/api/docs$", "/api/openapi?page=docs"),
    (r"^/api/docs(?:/((?:[^/]+?)(?:/(?:[^/]+?))*))?$", "/api/openapi?page=docs&path=$1"),
    (r"^/api/jobs(?:/([^/]+?))/events$", "/api/events?id=$1"),
    (r"^/api/jobs(?:/([^/]+?))/cancel$", "/api/jobs?action=cancel&id=$1"),
    (r"^/api/jobs(?:/([^/]+?))$", "/api/jobs?id=$1"),
]


def test_each_rewrite_compiles_to_the_route_vercel_build_writes() -> None:
    compiled = []
    for rewrite in load_rewrites():
        params = "&".join(
            [f"{k}={v}" for k, v in rewrite.query]
            + [f"{name}=${n}" for n, name in enumerate(rewrite.params, 1)]
        )
        compiled.append((rewrite.source.pattern, f"{rewrite.path}?{params}".rstrip("?")))
    assert compiled == BUILT_ROUTES


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        (f"/api/jobs/{JOB}", ("/api/jobs", [("id", JOB)])),
        (f"/api/jobs/{JOB}/cancel", ("/api/jobs", [("action", "cancel"), ("id", JOB)])),
        (f"/api/jobs/{JOB}/events", ("/api/events", [("id", JOB)])),
        ("/api/openapi.json", ("/api/openapi", [])),
        ("/api/docs", ("/api/openapi", [("page", "docs")])),
        ("/api/docs/init.js", ("/api/openapi", [("page", "docs"), ("path", "init.js")])),
        (f"/api/jobs/{JOB}/events/more", None),
        ("/api/docs/", None),
        ("/api/jobs", None),
    ],
)
def test_the_first_matching_rewrite_gives_the_function_and_its_query(
    path: str, routed: tuple[str, list[tuple[str, str]]] | None
) -> None:
    first = next((r.apply(path) for r in load_rewrites() if r.apply(path)), None)
    assert first == routed


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ("/api/jobs/:id(\\d+)", "/api/jobs"),
        ("/api/jobs/:id+", "/api/jobs"),
        ("/api/jobs/:id", "/api/jobs?id=:id"),
        ("/api/jobs/:id", "/api/nowhere"),
    ],
)
def test_a_rewrite_the_router_cannot_follow_is_refused(source: str, destination: str) -> None:
    with pytest.raises(ValueError, match="unsupported rewrite"):
        compile_rewrite(source, destination)
