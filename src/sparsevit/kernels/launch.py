"""Repeat launches of a compiled Triton kernel without Triton's per-call binding.

``kernel[grid](*args)`` binds every argument, specializes each one (value 1, divisibility
by 16, pointer alignment) and hashes the result to find the compiled kernel, on every
call. A model calls ``sv.attention`` with the same shapes in every layer, so that work
repeats, and compiled forwards at 224-1024 px are host-bound: one call on RegionViT-S's
1024 px stage-1 plan costs more host time than its ~40 µs kernel. Side by side on an H200
host (``sv.attention`` host µs per call, Triton's launch -> this one): RegionViT-S 1024 px
stage 1 114.6 -> 79.1, ViL-S 2048 px stage 1 89.6 -> 80.1, ViL-S-chunk 512 px 85.3 -> 77.3.

Here the first launch of a signature goes through Triton (compiling if needed) and keeps
the compiled kernel; later launches with the same signature call its launcher directly,
as ``JITFunction.run`` does after its lookup. The signature holds everything Triton
specializes on, conservatively: every int and bool exactly, each tensor's dtype and
pointer alignment, each tensor descriptor's dtype, alignment, shape, strides and block,
the constexprs and the launch options.
"""

from __future__ import annotations

from typing import Any

import torch
from triton import knobs
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

# (kernel, signature) -> compiled kernel. Bounded: one entry per distinct launch shape.
_COMPILED: dict[tuple, Any] = {}
_MAX_ENTRIES = 1024


def _arg_key(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16)
    if isinstance(arg, TensorDescriptor):
        return (arg.base.dtype, arg.base.data_ptr() % 16, tuple(arg.shape), tuple(arg.strides),
                tuple(arg.block_shape), arg.padding)
    if isinstance(arg, float):  # passed as fp32, never specialized on its value
        return float
    return arg  # int, bool, None: exactly


def launch_signature(args: tuple, constexprs: dict[str, Any], options: dict[str, Any]) -> tuple:
    """The launch's specialization key (see the module docstring)."""
    return (tuple(map(_arg_key, args)), tuple(constexprs.items()), tuple(options.items()))


def launch(kernel: JITFunction, grid: int, args: tuple, constexprs: dict[str, Any],
           options: dict[str, Any], stream: torch.cuda.Stream | None) -> None:
    """``kernel[(grid,)](*args, **constexprs, **options)`` on ``stream`` (the current
    CUDA stream), through the kept compiled kernel when this signature launched before.
    ``constexprs`` name the parameters after ``args``, in any order. Without a stream
    (CPU tensors: the Triton interpreter, which compiles nothing) it is Triton's launch."""
    if stream is None:
        kernel[(grid,)](*args, **constexprs, **options)
        return
    key = (kernel, stream.device_index, launch_signature(args, constexprs, options))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = kernel[(grid,)](*args, **constexprs, **options)
        if len(_COMPILED) >= _MAX_ENTRIES:
            _COMPILED.clear()
        _COMPILED[key] = compiled
        return
    params = (*args, *(constexprs[name] for name in kernel.arg_names[len(args):]))
    raw = stream.cuda_stream
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    metadata = compiled.launch_metadata((grid, 1, 1), raw, *params) if enter else None
    compiled.run(grid, 1, 1, raw, compiled.function, compiled.packed_metadata, metadata,
                 enter, leave, *params)
