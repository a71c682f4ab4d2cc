"""The registry of job kinds. Each module in this package defines one kind as `HANDLER`.

Adding a kind means adding one module here (its input, result model, prompts and `handle`);
its coin cost is the module's default, overridable with `COST_<KIND>`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from lib.handlers.base import Context, Handler

__all__ = ["Context", "Handler", "kinds", "registry", "get"]


@cache
def kinds() -> frozenset[str]:
    """Every kind's name, listed without importing its module (each module is named for its
    kind)."""
    return frozenset(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name != "base"
    )


@cache
def registry() -> dict[str, Handler]:
    """Every registered kind, by name (imports every kind's module)."""
    found = (get(kind) for kind in sorted(kinds()))
    return {handler.kind: handler for handler in found if handler is not None}


def get(kind: str) -> Handler | None:
    """The handler of `kind`, or None. Imports only that kind's module: a cold submit builds
    one kind's models, not every kind's."""
    if kind not in kinds():
        return None
    handler = getattr(importlib.import_module(f"{__name__}.{kind}"), "HANDLER", None)
    return handler if isinstance(handler, Handler) and handler.kind == kind else None
