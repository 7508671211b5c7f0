"""GPU timing, measured device peaks, and the roofline floor of masked attention.

Times come from ``triton.testing.do_bench``: CUDA events around each call, L2 flushed
before each call, median and 20th/80th percentiles over the repetitions (its default
``return_mode`` is the mean, which outliers drag, so the quantiles are asked for).

Kernel timings replay the call from a CUDA graph, so the events bracket the device's
work rather than the host's Python launch path: on an H200, ``sv.attention`` on a
784-token RegionViT graph spends 37-67 µs of host time on kernels of 5-25 µs, and
timed call by call it measured the host (bars moving 2x between runs).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

WARMUP_MS = 25
REP_MS = 100
MIN_REPS = 10  # below this p20/p80 say nothing: slow calls get a longer rep window


def bench(fn: Callable[[], Any], warmup_ms: float = WARMUP_MS, rep_ms: float = REP_MS,
          min_reps: int = MIN_REPS, cuda_graph: bool = True) -> dict[str, Any]:
    """Median, p20 and p80 of ``fn``'s device time, in microseconds (CUDA only), and how
    it was timed: ``timing`` is "cuda_graph" (``fn`` captured once, its replays timed) or
    "eager" (``fn`` called each time: asked for with ``cuda_graph=False``, as a whole
    model's latency includes its host time, or because ``fn`` cannot be captured; then
    ``graph_error`` says why)."""
    from triton.testing import do_bench

    mode: dict[str, Any] = {"timing": "eager"}
    if cuda_graph:
        fn, mode = _graphed(fn)
    # do_bench turns rep_ms into a call count from its own 5-call estimate.
    estimate_ms = do_bench(fn, warmup=0, rep=0, return_mode="median")
    rep_ms = max(rep_ms, min_reps * 1.2 * estimate_ms)
    median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_us": median * 1e3, "p20_us": p20 * 1e3, "p80_us": p80 * 1e3, **mode}


def _graphed(fn: Callable[[], Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``fn`` captured into a CUDA graph, and its replay; ``fn`` itself when capture fails
    (a host sync, an op that cannot be captured, no memory for the graph's pool)."""
    import torch

    # Warm up outside the capture, on a side stream as capture wants: compilation,
    # autotuning and lazy probes (host syncs) happen here, once.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as e:
        torch.cuda.synchronize()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return fn, {"timing": "eager", "graph_error": reason}
    return graph.replay, {"timing": "cuda_graph"}


def measure_peaks(device: str = "cuda", matmul_n: int = 8192,
                  copy_bytes: int = 1 << 30) -> dict[str, float]:
    """Achievable bf16 matmul rate (TFLOP/s) and device copy bandwidth (GB/s, read+written).

    Measured rather than taken from datasheets: the floor should be what this card,
    at its current clocks, can actually do. Random data: zeros run faster than real data.
    """
    return {
        "matmul_tflops": 2 * matmul_n**3 / (_matmul_us(device, matmul_n) * 1e-6) / 1e12,
        "copy_gbps": 2 * copy_bytes / (_copy_us(device, copy_bytes) * 1e-6) / 1e9,
        "matmul_n": matmul_n,
        "copy_bytes": copy_bytes,
    }


def _matmul_us(device: str, n: int) -> float:
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    c = torch.empty_like(a)
    return bench(lambda: torch.matmul(a, b, out=c))["median_us"]


def _copy_us(device: str, n_bytes: int) -> float:
    import torch

    src = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src))["median_us"]


def attention_flops(nnz: int, head_dim: int, heads: int, batch: int) -> int:
    """Useful FLOPs of masked attention: QK^T and PV over attended entries only (2+2 per MAC)."""
    return 4 * nnz * head_dim * heads * batch


def attention_bytes(n_tokens: int, head_dim: int, heads: int, batch: int, itemsize: int) -> int:
    """Fewest bytes any implementation must move: read Q, K, V once and write O once."""
    return 4 * batch * heads * n_tokens * head_dim * itemsize


def floor_us(useful_flops: float, n_bytes: float, peaks: dict[str, float]) -> float:
    """Roofline floor: the larger of compute time at peak and transfer time at peak."""
    compute = useful_flops / (peaks["matmul_tflops"] * 1e12)
    memory = n_bytes / (peaks["copy_gbps"] * 1e9)
    return max(compute, memory) * 1e6


class TimeLimitExceeded(BaseException):
    """Raised inside a ``time_limit`` block. A BaseException, so the ``except Exception``
    of a backend's own error handling cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after ``seconds`` of wall time (main thread, POSIX; None or
    <= 0: no limit). The interrupt lands at the next Python bytecode, so a hang inside
    one C call ends only when that call returns; the kit's per-cell limit covers that."""
    if not seconds or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"over the {seconds:g} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
