"""One model cell (RQ1-RQ5): build the ViT at the cell's resolution, apply its compile
mode, push batches through its pipeline, optionally profile, and report what was applied.

Every setting reaches the run through ``run_model_cell`` and comes back in ``applied``,
read from what actually happened: the input shape and dtype the model's forward saw,
the mode handed to ``torch.compile``, the pipeline's streams and slots, the process's
CPU and memory binding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from sparsevit.characterize import pipeline, profiling
from sparsevit.errors import SparseVitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIM = 64  # heads = dim / 64, as in ViT-S/B/L/H and the seed's configs
# torch.compile modes that capture CUDA graphs: each call must start a new graph step.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_CALLS = 3  # cudagraph trees record on the 2nd/3rd call: all of it is compile time

ModelFactory = Callable[[dict[str, Any]], torch.nn.Module]


def build_model(settings: dict[str, Any]) -> torch.nn.Module:
    """The cell's model through ``sparsevit.models`` at the cell's resolution."""
    try:
        from sparsevit import models
    except ImportError as e:
        raise SparseVitError(f"sparsevit.models is not available ({e})") from None
    res, attn = settings["resolution"], settings["attn"]
    if settings["model"] == "vit":
        from sparsevit.models.vit import VisionTransformer

        dim = settings["dim"]
        if dim % HEAD_DIM:
            raise SparseVitError(f"dim {dim} is not a multiple of the head dim {HEAD_DIM}")
        return VisionTransformer(img_size=res, patch_size=settings["patch"],
                                 depth=settings["depth"], embed_dim=dim,
                                 num_heads=dim // HEAD_DIM, attn=attn)
    return models.create(settings["model"], img_size=res, attn=attn)


def compile_model(model: torch.nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` itself (eager) or ``torch.compile(model, mode=mode)``."""
    if mode == "eager":
        return model
    return torch.compile(model, mode=mode)


def _forward(fn: Callable[[torch.Tensor], torch.Tensor], mode: str, seen: dict[str, Any]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call the pipeline makes; it notes the input the model gets (outside any
    compiled graph, so noting it adds no graph break)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen["model_input_shape"] = list(x.shape)
        seen["model_input_dtype"] = str(x.dtype).replace("torch.", "")
        if mode in CUDAGRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(x)

    return forward


def run_model_cell(settings: dict[str, Any], device: torch.device,
                   model_factory: ModelFactory | None = None) -> dict[str, Any]:
    """The RESULT row of one model cell (status OK); exceptions propagate to the runner."""
    dtype = DTYPES[settings["dtype"]]
    torch.manual_seed(settings["seed"])
    t0 = time.perf_counter()
    with torch.device(device):
        model = (model_factory or build_model)(settings)
    model = model.to(device=device, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    seen: dict[str, Any] = {}
    mode = settings["compile"]
    res, batch = settings["resolution"], settings["batch"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        sample = torch.randn(batch, 3, res, res, device=device).to(dtype)
        # One eager call first: the model builds its attention graphs and plans on first
        # use (host-side numpy work that torch.compile must not trace), and a compiled
        # mode's time below is then compilation alone.
        t0 = time.perf_counter()
        model(sample)
        sync()
        build_s += time.perf_counter() - t0
        forward = _forward(compile_model(model, mode), mode, seen)
        counters = torch._dynamo.utils.counters
        counters.clear()
        t0 = time.perf_counter()
        for _ in range(COMPILE_CALLS if mode != "eager" else 1):
            forward(sample)
        sync()
        first_calls_s = time.perf_counter() - t0
        compiled = {"graphs": int(counters["stats"]["unique_graphs"]),
                    "graph_breaks": int(sum(counters["graph_break"].values()))} \
            if mode != "eager" else {}
        spec = pipeline.PipelineSpec(
            mode=settings["pipeline"], queue_depth=settings["queue_depth"], batch=batch,
            resolution=res, preprocess=settings["preprocess"],
            raw_scale=settings["raw_scale"], dtype=dtype, warmup=settings["warmup"],
            iters=settings["iters"])
        result = pipeline.run(forward, spec, device, seed=settings["seed"])
        if settings["profile"]:
            short = pipeline.PipelineSpec(**{**vars(spec), "warmup": 0,
                                             "iters": settings["profile_iters"]})
            result["profile"] = profiling.profile(
                lambda: pipeline.run(forward, short, device, seed=settings["seed"]), 1, sync)
    result["applied"].update(
        seen, compile=mode, compiled=mode != "eager", **compiled,
        batch=seen["model_input_shape"][0],
        resolution=seen["model_input_shape"][-1], dtype=seen["model_input_dtype"],
        **_model_facts(model))
    return {
        "status": "OK", **result, "build_s": build_s,
        # eager: a warm call; compiled: tracing, codegen, autotuning and graph capture.
        ("compile_s" if mode != "eager" else "first_call_s"): first_calls_s,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def _model_facts(model: torch.nn.Module) -> dict[str, Any]:
    """What the model says about itself, where it says it (attribute names vary)."""
    facts = {}
    for attr in ("img_size", "grid", "n_tokens", "embed_dim"):
        value = getattr(model, attr, None)
        if isinstance(value, (int, str, tuple, list)):
            facts[f"model_{attr}"] = list(value) if isinstance(value, tuple) else value
    return facts
