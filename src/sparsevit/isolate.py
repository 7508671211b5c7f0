"""Run a function in a forked child under a wall-time limit.

A hang, a crash or the OOM killer then ends only the child, never the caller: used for
the reorder study's methods and for HiGHS, whose root cut loop can overrun its own time
limit. The child shares the parent's memory (fork), so large inputs are not copied.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def run_forked(fn: Callable[..., Any], args: tuple[Any, ...],
               limit_s: float | None) -> tuple[str, Any]:
    """``("ok", fn(*args))``, ``("timeout", None)`` after ``limit_s`` seconds (None: no
    limit), or ``("died", exit code)`` when the child ended without an answer."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(limit_s):
            return "timeout", None
        return "ok", receive.recv()
    except EOFError:
        child.join()
        return "died", child.exitcode
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()


def _child(send: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        send.send(fn(*args))
    finally:
        send.close()
