"""Our dense attention kernel (``kernels.dense_attn``: a plan's dense rectangles) against
an fp64 softmax reference, through the CPU interpreter or on a GPU."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from sparsevit import ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU: run with TRITON_INTERPRET=1 (make test does)", allow_module_level=True)
# fp32 dots run as tf32 on a GPU; the interpreter has no bf16 (checked on the GPU only).
TOL = {torch.float32: 1e-5 if DEVICE == "cpu" else 2e-3, torch.float16: 2e-3}


def reference(q, k, v, scale):
    p = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)
    return p @ v.double()


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize(("rows", "keys", "head_dim", "dtype", "config"), [
    (100, 77, 32, torch.float16, "64x64/w4/s1"),     # ragged rows and keys
    (64, 130, 64, torch.float32, "64x128/w4/s1"),    # a last key tile of 2 keys
    (130, 64, 128, torch.float16, "128x64/w4/s1"),   # keys exactly one tile
    (17, 1, 64, torch.float32, "64x64/w4/s1"),       # one key: softmax of one
])
def test_dense_kernel_matches_reference(rows, keys, head_dim, dtype, config) -> None:
    """Rows row0 + r of an (B, N, H, D)-strided output get softmax(q k^T * scale) v; the
    rows around them stay untouched."""
    gen = torch.Generator().manual_seed(rows + keys)
    q = torch.randn(2, 3, rows, head_dim, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(2, 3, keys, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(2))
    row0 = 5
    out = torch.full((2, rows + 9, 3, head_dim), 7.0, device=DEVICE, dtype=dtype).transpose(1, 2)
    ops._triton_dense(q, k, v, out, 0.3, config, row0=row0)
    assert rel_err(out[:, :, row0:row0 + rows], reference(q, k, v, 0.3)) < TOL[dtype]
    assert (out[:, :, :row0] == 7).all() and (out[:, :, row0 + rows:] == 7).all()


def test_dense_kernel_scatters_rows() -> None:
    """With out_rows, row r lands at out_rows[r] (the gathered form's token order)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 70, 32, generator=gen).to(DEVICE) for _ in range(3))
    out_rows = torch.randperm(90, generator=gen)[:70].to(DEVICE)
    out = torch.zeros(1, 90, 2, 32, device=DEVICE).transpose(1, 2)
    ops._triton_dense(q, k, v, out, 0.2, "64x64/w4/s1", out_rows=out_rows)
    assert rel_err(out[:, :, out_rows], reference(q, k, v, 0.2)) < TOL[torch.float32]
    untouched = torch.ones(90, dtype=torch.bool, device=DEVICE)
    untouched[out_rows] = False
    assert (out[:, :, untouched] == 0).all()


def test_launch_configs_parse() -> None:
    assert ops._parse_launch("64x128/w4/s3") == (64, 128, 4, 3)
    assert all(len(ops._parse_launch(c)) == 4 for c in ops.DENSE_CONFIGS)


def test_unaligned_inputs_fall_back_to_the_vendor_kernel() -> None:
    """Inputs the copy engine cannot address (a base off the 16-byte grid) run the
    rectangle in the vendor's kernel instead of failing."""
    import sparsevit as sv

    n, d = 64, 32
    plan = sv.plan(sv.masks.dense(n), reorder="none", tile=(32, 32), heads=2, head_dim=d,
                   device=DEVICE, pad=False, dense=True)
    assert plan.dense.tolist() == [[0, n, 0, n]]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1 + 2 * n * d, generator=gen).to(DEVICE)[1:].view(1, 2, n, d)
               for _ in range(3))
    assert not ops._tma_ready(q, k, v)
    out = sv.attention(q, k, v, plan, ordered=True)
    assert rel_err(out, reference(q, k, v, d ** -0.5)) < TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", ops.DENSE_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_timed_configs_match_reference_on_the_gpu(config, dtype, head_dim) -> None:
    """Every config the plan may choose, at the launch it is timed with."""
    gen = torch.Generator().manual_seed(head_dim)
    q = torch.randn(1, 4, 300, head_dim, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(1, 4, 257, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(2))
    out = torch.empty(1, 300, 4, head_dim, device=DEVICE, dtype=dtype).transpose(1, 2)
    ops._triton_dense(q, k, v, out, head_dim ** -0.5, config)
    assert rel_err(out, reference(q, k, v, head_dim ** -0.5)) < 1e-2
