"""The schedule JSON's schema (a JSON Schema document) and a checker for the subset it uses.

The GPU images carry no ``jsonschema`` package, so the few keywords used here (type,
required, properties, additionalProperties, enum, minimum, items, minItems, maxItems)
are checked by ``check``; the document itself stays standard JSON Schema for other tools.
"""

from __future__ import annotations

from typing import Any

from sparsevit.errors import SparseVitError

_INT = {"type": "integer", "minimum": 0}
_POS = {"type": "integer", "minimum": 1}
_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sparsevit schedule",
    "type": "object",
    "required": ["version", "method", "gpu", "software", "n_tokens", "nnz", "batch", "heads",
                 "head_dim", "dtype", "config", "max_tiles", "n_items", "programs",
                 "predicted_us", "solver"],
    "properties": {
        "version": {"enum": [1]},
        "method": {"enum": ["fixed", "greedy", "ilp"]},
        "gpu": {"type": "string"},
        "software": {"type": "object"},
        "n_tokens": _POS, "nnz": _INT, "batch": _POS, "heads": _POS, "head_dim": _POS,
        "dtype": {"enum": ["bf16", "fp16"]},
        "config": {
            "type": "object",
            "required": ["bm", "bn", "num_warps", "num_stages"],
            "properties": {"bm": _POS, "bn": _POS, "num_warps": _POS, "num_stages": _POS,
                           "programs_per_sm": _POS},
        },
        "max_tiles": _POS,
        "n_items": _INT,
        "programs": {
            "type": ["object", "null"],
            "required": ["ptr", "units"],
            "additionalProperties": False,
            "properties": {"ptr": {"type": "array", "items": _INT, "minItems": 2},
                           "units": {"type": "array", "items": _INT}},
        },
        "predicted_us": _NUM,
        "lower_bound_us": _NUM_OR_NULL,
        "solver": {
            "type": "object",
            "required": ["name", "status", "objective", "gap", "time_s"],
            "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                           "objective": _NUM_OR_NULL, "gap": _NUM_OR_NULL, "time_s": _NUM},
        },
        "details": {"type": "object"},
        "dense": {"type": "array",
                  "items": {"type": "array", "items": _INT, "minItems": 4, "maxItems": 4}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float),
          "integer": int, "null": type(None), "boolean": bool}


def check(doc: Any, schema: dict[str, Any] = SCHEMA, where: str = "schedule") -> None:
    """Raise SparseVitError naming the first place where ``doc`` breaks ``schema``."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(doc, _TYPES[t]) and not (isinstance(doc, bool) and t != "boolean")
                 for t in types)
        if not ok:
            raise SparseVitError(f"{where}: expected {' or '.join(types)}, "
                                 f"got {type(doc).__name__}")
    if "enum" in schema and doc not in schema["enum"]:
        raise SparseVitError(f"{where}: {doc!r} is not one of {schema['enum']}")
    if "minimum" in schema and doc < schema["minimum"]:
        raise SparseVitError(f"{where}: {doc} is below {schema['minimum']}")
    if isinstance(doc, dict):
        missing = [k for k in schema.get("required", ()) if k not in doc]
        if missing:
            raise SparseVitError(f"{where}: missing {', '.join(missing)}")
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = sorted(set(doc) - set(props))
            if extra:
                raise SparseVitError(f"{where}: unexpected {', '.join(extra)}")
        for key, sub in props.items():
            if key in doc:
                check(doc[key], sub, f"{where}.{key}")
    if isinstance(doc, list):
        if len(doc) < schema.get("minItems", 0):
            raise SparseVitError(f"{where}: needs at least {schema['minItems']} entries")
        if len(doc) > schema.get("maxItems", len(doc)):
            raise SparseVitError(f"{where}: holds at most {schema['maxItems']} entries")
        if "items" in schema:
            item = schema["items"]
            # Long int arrays: check types in one pass rather than recursing per entry.
            if item.get("type") == "integer" and set(item) <= {"type", "minimum"}:
                bad = next((v for v in doc if not isinstance(v, int) or isinstance(v, bool)
                            or v < item.get("minimum", v)), None)
                if bad is not None or any(isinstance(v, bool) for v in doc):
                    raise SparseVitError(f"{where}: entries must be integers >= "
                                         f"{item.get('minimum', '-inf')}, found {bad!r}")
            else:
                for i, v in enumerate(doc):
                    check(v, item, f"{where}[{i}]")
