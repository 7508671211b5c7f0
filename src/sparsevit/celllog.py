"""One log file per benchmark cell: a provenance header, free text, RESULT lines.

Format (parsed by plot/logs.py with a regex, never by position)::

    # sparsevit-log v1
    # <key>: <value>            provenance and cell settings, one per line
    ...free text...
    RESULT {"status": "OK", ...}   one JSON object per measured row

``status`` is OK, or a sentinel: OOM, NS (not supported / not run), TLE (time limit)
or FAIL (correctness check failed), each with a ``reason``.
File name: ``<figure>.<device>.<model>.<resolution>.<system>.log``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sparsevit.atomic import write_text

STATUSES = ("OK", "OOM", "NS", "TLE", "FAIL")


def cell_name(figure: str, device: str, model: str, resolution: int | str, system: str) -> str:
    parts = [figure, device, model, str(resolution), system]
    for p in parts:
        if not p or "." in p or "/" in p:
            raise ValueError(f"cell name part {p!r} must be non-empty without '.' or '/'")
    return ".".join(parts) + ".log"


def write(path: str | os.PathLike, header: dict[str, Any], results: list[dict[str, Any]],
          body: str = "") -> Path:
    """Write a cell log atomically; every result row needs a valid ``status``."""
    lines = ["# sparsevit-log v1"]
    lines += [f"# {k}: {v}" for k, v in header.items()]
    if body:
        lines.append(body.rstrip("\n"))
    for row in results:
        if row.get("status") not in STATUSES:
            raise ValueError(f"result status must be one of {STATUSES}, got {row.get('status')!r}")
        lines.append("RESULT " + json.dumps(row, sort_keys=True))
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)
