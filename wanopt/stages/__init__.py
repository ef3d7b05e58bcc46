"""The optimizations, one function each, applied cumulatively from the official baseline.

T2V_STAGES is the one place that fixes their order: the capture command, the notebooks and the tests read it.
Each stage is `function(pipe, **options) -> pipe`; stage k's pipeline has stages 1..k applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .attention import attention_kernel, best_backend
from .cfg import batch_cfg
from .compile import compile_blocks, compile_model, uncompile
from .cuda_graphs import cuda_graphs
from .dtype_hygiene import lean_numerics
from .offload import no_offload
from .tf32 import enable_tf32


def fuse_kernels(pipe, gelu_epilogue: bool = True):
    from .fusion import fuse_kernels as apply  # imports Triton: only when the stage is used

    return apply(pipe, gelu_epilogue=gelu_epilogue)


@dataclass(frozen=True)
class Stage:
    name: str  # traces/<workload>/<name>/
    apply: Callable | None
    title: str
    exact: bool  # math unchanged (fp32-level differences only)
    tolerance: float  # relative L2 of one step's latents against the baseline, on the GPU at real size
    notebook: str = ""
    options: dict = field(default_factory=dict)


# Tolerances, on the relative L2 of one step's guided velocity v_u + g(v_c - v_u) against the baseline's on the
# same inputs (the latents after a step move by only |Δσ|·v, so they would hide almost any error):
#   no_offload 1e-6: the same kernels on the same data; anything above rounding-free zero is a bug.
#   batched CFG and TF32 2e-2: exact math, but bf16 GEMMs of another shape (or TF32 inputs) round differently in
#     every one of 2 × 40 × ~8 GEMMs, and the guidance g(v_c - v_u) with g = 4 amplifies per-eval differences
#     several times.
#   numeric stages 5e-2: bf16 residual and bf16 RoPE round once more per block. The reference itself is ~4e-3
#     from an all-fp32 run on the tiny model and the lean stage ~1e-2 from the reference (notebook 05); at real size
#     the lean stages measured 2.9e-2 (1.3B) and 3.2e-2 (A14B) (traces/*/*/manifest.json). 5e-2 leaves room
#     for depth and width while staying far below the O(1) that a wrong kernel, a dropped term or a swapped pair
#     gives.
# A stage's tolerance is the largest of those applied so far: errors add up along the sequence.
T2V_STAGES: list[Stage] = [
    Stage("00_baseline", None, "official single-GPU recipe: offload, bf16 weights, two sequential CFG forwards",
          True, 0.0, "01_baseline_t2v"),
    Stage("01_no_offload", no_offload, "both experts resident, T5 released after encoding", True, 1e-6,
          "02_no_offload"),
    Stage("02_batched_cfg", batch_cfg, "cond + uncond in one forward of batch 2", True, 2e-2, "03_batched_cfg"),
    Stage("03_tf32", enable_tf32, "TF32 for the fp32 islands", False, 2e-2, "04_tf32"),
    Stage("04_dtype_hygiene", lean_numerics, "per-sample time, bf16 residual, real RoPE tables, fewer casts",
          False, 5e-2, "05_dtype_hygiene"),
    Stage("05_attention", attention_kernel, "fastest attention kernel at the workload's shape", False, 5e-2,
          "06_attention"),
    Stage("06_fusion", fuse_kernels, "fused QKV; Triton norm+modulate and RMSNorm+RoPE; GELU in the GEMM epilogue",
          False, 5e-2, "07_fusion"),
    Stage("07_compile", compile_blocks, "torch.compile, regional (per block)", False, 5e-2, "08_compile"),
    Stage("08_cuda_graphs", cuda_graphs, "CUDA graph of each expert's forward", False, 5e-2, "09_cuda_graphs"),
]

STAGES_BY_NAME = {s.name: s for s in T2V_STAGES}

# The order per workload. Names keep their number from the default order (what a stage is does not change);
# A14B applies batched CFG after dtype hygiene: with the reference numerics a batch-2 forward (per-token fp32
# modulation tables, fp32 residual, fp64 RoPE copies) does not fit next to both 14B experts on an 80 GB H100.
# The capture records that attempt (OOM) in the same run; notebook 03_batched_cfg shows it.
DEFAULT_ORDER = [s.name for s in T2V_STAGES]
A14B_ORDER = ["00_baseline", "01_no_offload", "03_tf32", "04_dtype_hygiene", "02_batched_cfg", "05_attention",
              "06_fusion", "07_compile", "08_cuda_graphs"]
WORKLOAD_ORDER = {"t2v-a14b-480p": A14B_ORDER, "t2v-a14b-720p": A14B_ORDER, "tiny-t2v": A14B_ORDER}


def stage_order(workload: str | None = None) -> list[Stage]:
    """The stages of a workload in the order they are applied."""
    return [STAGES_BY_NAME[n] for n in WORKLOAD_ORDER.get(workload, DEFAULT_ORDER)]


def get_stage(name: str) -> Stage:
    try:
        return STAGES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages in order: {', '.join(STAGES_BY_NAME)}") from None


def stages_up_to(name: str, workload: str | None = None) -> list[Stage]:
    """The cumulative list baseline..name, in the workload's order."""
    order = stage_order(workload)
    idx = [s.name for s in order].index(get_stage(name).name)
    return order[: idx + 1]


def apply_stages(pipe, names, options: dict | None = None, workload: str | None = None):
    """Apply the named stages (each once, in the workload's order) to a pipeline; options[name] are kwargs."""
    options = options or {}
    wanted = {get_stage(n).name for n in names}
    for stage in stage_order(workload):
        if stage.name in wanted and stage.apply is not None:
            pipe = stage.apply(pipe, **options.get(stage.name, {}))
            pipe.applied_stages = [*getattr(pipe, "applied_stages", []), stage.name]
    return pipe


__all__ = ["T2V_STAGES", "Stage", "stage_order", "WORKLOAD_ORDER", "get_stage", "stages_up_to", "apply_stages", "no_offload", "batch_cfg",
           "enable_tf32", "lean_numerics", "attention_kernel", "best_backend", "fuse_kernels", "compile_blocks",
           "compile_model", "uncompile", "cuda_graphs"]
