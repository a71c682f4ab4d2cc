"""The registry of job kinds. Each module in this package defines one kind as `HANDLER`.

Adding a kind means adding one module here (its input, result model, prompts and `handle`);
its coin cost is the module's default, overridable with `COST_<KIND>`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from lib.handlers.base import Context, Handler

__all__ = ["Context", "Handler", "registry", "get"]


@cache
def registry() -> dict[str, Handler]:
    """Every registered kind, by name."""
    found: dict[str, Handler] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_") or module.name == "base":
            continue
        handler = getattr(importlib.import_module(f"{__name__}.{module.name}"), "HANDLER", None)
        if isinstance(handler, Handler):
            found[handler.kind] = handler
    return found


def get(kind: str) -> Handler | None:
    return registry().get(kind)
