"""`python -m scripts.gen.openapi_kinds`: write the kind-dependent parts of api/_openapi.json.

The kinds, each kind's input schema and each result schema come from the handler registry
(`lib/handlers`), so the document cannot drift from what the producer validates: the `Kind`
enum and its costs, one `SubmitRequest` variant per kind (its `input` schema), and the result
schemas of `Job.result` and the `result` event. `--check` exits 1 when the file is stale
(tests/test_openapi.py runs the same check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from lib.handlers import registry

DOCUMENT = Path(__file__).resolve().parents[2] / "api" / "_openapi.json"
REF = "#/components/schemas/{model}"


def _untitled(node: Any) -> Any:
    """`node` without pydantic's generated `title` strings (a property named `title` stays)."""
    if isinstance(node, dict):
        return {
            k: _untitled(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _variant_name(kind: str) -> str:
    return "Submit" + "".join(part.capitalize() for part in kind.split("_"))


def kind_schemas() -> dict[str, Any]:
    """The document's kind-dependent component schemas, by name."""
    kinds = registry()
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for handler in kinds.values():
        models += [(handler.input_model, "validation"), (handler.result_model, "serialization")]
    keys, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = _untitled(top["$defs"])
    names = sorted(kinds)
    costs = ", ".join(f"`{kind}` {kinds[kind].cost}" for kind in names)
    schemas["Kind"] = {
        "type": "string",
        "enum": names,
        "description": f"Coins per kind: {costs} (`COST_<KIND>` overrides).",
    }
    variants = {}
    for kind in names:
        handler = kinds[kind]
        name = _variant_name(kind)
        variants[kind] = REF.format(model=name)
        schemas[name] = {
            "type": "object",
            "additionalProperties": False,
            "required": ["kind", "input"],
            "properties": {
                "kind": {"const": kind},
                "input": keys[(handler.input_model, "validation")],
                "tier": {"$ref": REF.format(model="SubmitTier")},
            },
        }
    schemas["SubmitRequest"] = {
        "description": "The body of a submit: a kind and that kind's input.",
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "kind", "mapping": variants},
    }
    schemas["KindResult"] = {
        "description": "The result of a kind, as its result model validates it.",
        "anyOf": [keys[(kinds[kind].result_model, "serialization")] for kind in names],
    }
    return schemas


def updated(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with its kind-dependent schemas regenerated (a new dict; `doc` is unchanged)."""
    new = json.loads(json.dumps(doc))
    new["components"]["schemas"].update(kind_schemas())
    return new


def render(doc: dict[str, Any]) -> str:
    """The document as the file stores it."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    current = DOCUMENT.read_text()
    fresh = render(updated(json.loads(current)))
    if args.check:
        if fresh != current:
            print(f"{DOCUMENT} is stale: run python -m scripts.gen.openapi_kinds", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
