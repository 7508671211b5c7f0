"""The row gather/scatter kernel equals index_select / index_copy_ (Triton interpreter)."""

import os

import pytest
import torch

from sparsevit.kernels import gather_rows as kernel
from sparsevit.kernels.gather_rows import gather_rows, scatter_rows

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernel in the Triton interpreter")


@pytest.mark.parametrize("shape,dim", [((37, 5), 0), ((3, 50, 96), 1), ((2, 3, 41, 64), 2),
                                       ((2, 3, 41, 200), -2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gather_and_scatter_match_torch(shape, dim, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype)
    n = shape[dim]
    index = torch.randperm(n, generator=g)[: max(1, n - 7)]
    got = gather_rows(x, index, dim)
    assert torch.equal(got, x.index_select(dim, index))
    out = torch.zeros_like(x)
    assert torch.equal(scatter_rows(out, index, got, dim),
                       torch.zeros_like(x).index_copy_(dim, index, got))


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel's launches (a fallback to torch would also give equal rows)."""
    calls = []
    real = kernel._launch
    monkeypatch.setattr(kernel, "_launch", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_strided_outer_dims_take_the_kernel_path(launches):
    # q of a fused qkv projection: (B, H, N, D) whose batch and head strides do not merge
    qkv = torch.randn(2, 33, 3, 4, 16)
    q = qkv.permute(2, 0, 3, 1, 4)[0]
    index = torch.tensor([5, 0, 32, 7])
    assert torch.equal(gather_rows(q, index, 2), q.index_select(2, index))
    out = torch.zeros(2, 4, 33, 16).permute(0, 2, 1, 3).transpose(1, 2)  # odd strides
    src = torch.randn(2, 4, 4, 16)
    assert torch.equal(scatter_rows(out, index, src, 2),
                       torch.zeros(2, 4, 33, 16).index_copy_(2, index, src))
    assert len(launches) == 2


def test_layouts_without_a_row_view_fall_back_to_torch(launches):
    x = torch.randn(6, 5, 4).transpose(1, 2)  # strided columns
    index = torch.tensor([3, 1])
    assert torch.equal(gather_rows(x, index, 1), x.index_select(1, index))
    assert gather_rows(x, index[:0], 1).shape == (6, 0, 5)
    assert not launches


def test_copy_rows_at_moves_the_same_rows(launches):
    g = torch.Generator().manual_seed(3)
    src = torch.randn(2, 3, 41, 64, generator=g)
    out = torch.zeros(2, 41, 3, 64).transpose(1, 2)  # heads interleaved, as attention's
    index = torch.tensor([40, 3, 17, 0])
    expected = torch.zeros(2, 3, 41, 64).index_copy_(2, index, src.index_select(2, index))
    assert torch.equal(kernel.copy_rows_at(out, index, src, 2), expected)
    assert len(launches) == 1
