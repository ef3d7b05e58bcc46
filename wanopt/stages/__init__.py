"""The optimizations, one function each, applied cumulatively from the reference baseline.

The stage lists below are the one place that fixes the order: the capture command, the notebooks and the tests
read them. Each stage is `apply(pipe, **options) -> pipe`; stage k's pipeline has stages 1..k applied. A stage
that picks among options by measurement (the attention kernel, the GELU epilogue) does so in its `choose`, so the
capture, the notebooks and the tiny-model tests read the same answer for the same context.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import get_workload
from .attention import attention_kernel, best_backend, choose_attention, choose_mg2_attention, mg2_attention_kernels
from .base import Choice, ChoiceContext, Stage
from .cfg import batch_cfg
from .compile import compile_blocks, compile_causal_parts, compile_model, uncompile
from .cuda_graphs import causal_cuda_graphs, cuda_graphs
from .decode import decode_channels_last, decode_compile, decode_cuda_graphs, decode_overlap
from .dtype_hygiene import lean_numerics
from .kv_cache import host_cache_indices, ring_kv_cache
from .mg2_lean import fold_cache_refresh, mg2_lean_numerics
from .offload import no_offload
from .sequence_parallel import sequence_parallel
from .tf32 import enable_tf32


def fuse_kernels(pipe, gelu_epilogue: bool = True):
    from .fusion import fuse_kernels as apply  # imports Triton: only when the stage is used

    return apply(pipe, gelu_epilogue=gelu_epilogue)


def fuse_causal_kernels(pipe, gelu_epilogue: bool = True):
    from .fusion import fuse_causal_kernels as apply

    return apply(pipe, gelu_epilogue=gelu_epilogue)


def choose_fusion(ctx):
    from .fusion import choose_fusion as choose

    return choose(ctx)


# Tolerances, on the relative L2 of one step's guided velocity v_u + g(v_c - v_u) against the baseline's on the
# same inputs (the latents after a step move by only |Δσ|·v, so they would hide almost any error):
#   no_offload 1e-6: the same kernels on the same data; anything above rounding-free zero is a bug.
#   batched CFG and TF32 2e-2: exact math, but bf16 GEMMs of another shape (or TF32 inputs) round differently in
#     every one of 2 × 40 × ~8 GEMMs, and the guidance g(v_c - v_u) with g = 4 amplifies per-eval differences
#     several times.
#   numeric stages 5e-2: bf16 residual and bf16 RoPE round once more per block. The reference itself is ~4e-3
#     from an all-fp32 run on the tiny model and the lean stage ~1e-2 from the reference (notebook
#     t2v/04_dtype_hygiene); at real size the lean stages measured 2.9e-2 (1.3B) and 3.2e-2 (A14B)
#     (traces/*/*/manifest.json). 5e-2 leaves room for depth and width while staying far below the O(1) that a
#     wrong kernel, a dropped term or a swapped pair gives.
# A stage's tolerance is the largest of those applied so far: errors add up along the sequence (tolerance_at).
T2V_STAGES: list[Stage] = [
    Stage("00_baseline", None, "official single-GPU recipe: offload, bf16 weights, two sequential CFG forwards",
          True, 0.0),
    Stage("01_no_offload", no_offload, "both experts resident, T5 released after encoding", True, 1e-6),
    Stage("02_batched_cfg", batch_cfg, "cond + uncond in one forward of batch 2", True, 2e-2),
    Stage("03_tf32", enable_tf32, "TF32 for the fp32 islands", False, 2e-2),
    Stage("04_dtype_hygiene", lean_numerics, "per-sample time, bf16 residual, real RoPE tables, fewer casts",
          False, 5e-2),
    Stage("05_attention", attention_kernel, "fastest attention kernel at the workload's shapes", False, 5e-2,
          choose=choose_attention),
    Stage("06_fusion", fuse_kernels, "fused QKV; Triton norm+modulate and RMSNorm+RoPE; GELU in the GEMM epilogue",
          False, 5e-2, choose=choose_fusion),
    Stage("07_compile", compile_blocks, "torch.compile, regional (per block)", False, 5e-2, compiles=True,
          alternative=("whole_model_compile", compile_model, uncompile)),
    Stage("08_cuda_graphs", cuda_graphs, "CUDA graph of each expert's forward", False, 5e-2, compiles=True),
]

# Matrix-Game-2, on the relative L2 of the x0 of a block made after the window evicted (the runner's metric):
#   host indices 1e-6: the same operations on the same data; anything above rounding-free zero is a bug.
#   ring cache 1e-2: the same keys in another order, so the attention kernel sums in another order; its bf16 output
#     rounds differently in each of 30 layers × 4 evals per block, and the differences carry from block to block
#     through the cache. On the tiny model in fp32 it is ~1e-7 (tests/test_mg2_stages.py); 1e-2 stays well below
#     what a wrong slot or a missing frame gives (O(1), the same tests).
#   numeric stages 5e-2: fp32 RoPE and one-rounding modulation (03), other kernels (04), fused kernels that keep
#     fp32 intermediates (05) and Inductor's fusions (06) each round differently from upstream's bf16 chain, and
#     the differences carry through the cache from block to block. On the tiny model in bf16 stage 03 is ~5e-3
#     from the reference after 5 blocks (tests/test_mg2_stages.py); T2V's numeric stages measured ~3e-2 at real
#     size. 5e-2 is far below the O(1) of a wrong slot, frame or window (the same tests). The graphed and folded
#     stages (07, 08) run the same kernels as 06 (08 on GEMMs of more rows): they stay within it.
MG2_STAGES: list[Stage] = [
    Stage("00_baseline", None, "upstream numerics: bf16, float64 RoPE, GPU end indices read back with .item(), "
          "no compile", True, 0.0),
    Stage("01_host_cache_indices", host_cache_indices, "cache end indices on the host: no .item() syncs", True, 1e-6),
    Stage("02_ring_kv_cache", ring_kv_cache, "a ring of frame slots written by index: no roll, fixed shapes", True,
          1e-2),
    Stage("03_dtype_hygiene", mg2_lean_numerics, "fp32 RoPE rows per block instead of complex128 per call, one-pass "
          "modulation, no packing or casts around attention, action windows sliced once per block", False, 5e-2),
    Stage("04_attention", mg2_attention_kernels, "the fastest attention kernel at each MG2 shape (self, cross, "
          "action)", False, 5e-2, choose=choose_mg2_attention, compiles=True),
    Stage("05_fusion", fuse_causal_kernels, "Triton norm+modulate and RMSNorm+RoPE, one QKV GEMM, the mouse MLP "
          "without its concatenation, GELU in the GEMM epilogue where it pays", False, 5e-2, choose=choose_fusion),
    Stage("06_compile", compile_causal_parts, "torch.compile of each block piece between the cached attentions",
          False, 5e-2, compiles=True),
    Stage("07_cuda_graphs", causal_cuda_graphs, "one CUDA graph per block shape: all evals, re-noising and cache "
          "writes in one replay", False, 5e-2, compiles=True),
    Stage("08_fold_refresh", fold_cache_refresh, "block b's cache refresh folded into block b+1's first eval: one "
          "eval fewer per block", False, 5e-2, compiles=True),
]

FAMILY_STAGES = {"t2v": T2V_STAGES, "mg2": MG2_STAGES}

# Matrix-Game-2 end to end (workloads with `decode`): after the DiT stages, the streaming VAE decode of each block.
# They leave the DiT as it is (tolerance 0 adds nothing to the x0 metric's). Their "decode" part tolerance is on
# the decoded frames of a fixed latent sequence (a first block and two steady ones) against the reference decode of
# the same run (upstream's: eager, fp16), relative L2 (the runner's `decode` error part):
#   channels-last 1e-2: the same convolutions, cuDNN picks other algorithms for the other layout; fp16 sums round
#     differently at every one of ~30 convolutions. The tiny model in fp32 stays within 1e-5 (tests/test_decode.py);
#     1e-2 is far below the O(1) that a stale or misplaced cache frame gives (the same tests).
#   compile, graphs, second stream: Inductor's fused norms and activations round once instead of per op (fp16);
#     the graph and the second stream replay the same kernels.
MG2_DECODE_STAGES: list[Stage] = [
    Stage("09_decode_channels_last", decode_channels_last, "the VAE decoder in channels-last 3-D layout, cuDNN's "
          "algorithm search on", False, 0.0, part_tolerances={"decode": 1e-2}),
    Stage("10_decode_compile", decode_compile, "the steady decode (3 latent frames, cache in and out) compiled at "
          "static shapes",
          False, 0.0, compiles=True, part_tolerances={"decode": 1e-2}),
    Stage("11_decode_cuda_graphs", decode_cuda_graphs, "one CUDA graph per steady block decode (3 latent frames, "
          "the carried cache written in place)", False, 0.0, compiles=True, part_tolerances={"decode": 1e-2}),
    Stage("12_decode_overlap", decode_overlap, "block b's decode on a second stream while block b+1's DiT runs",
          False, 0.0, compiles=True, part_tolerances={"decode": 1e-2}),
]

# Multi-GPU T2V workloads (world_size > 1), after the single-GPU stages; tolerance on the guided velocity as above:
# the same math, attention kernels of other shapes (heads/N over the whole sequence) round differently in bf16.
PARALLEL_STAGES: list[Stage] = [
    Stage("09_sequence_parallel", sequence_parallel, "Ulysses sequence parallel: video tokens sharded across the "
          "ranks, all-to-all around self-attention", False, 5e-2, distributed=True),
]

# Each group of stages that is not a family's own list, and the notebook that shows it.
EXTRA_STAGES: dict[str, list[Stage]] = {"mg2/e2e": MG2_DECODE_STAGES, "parallel/sequence_parallel": PARALLEL_STAGES}

# The order per workload. Names keep their number from the default order (what a stage is does not change);
# A14B applies batched CFG after dtype hygiene: with the reference numerics a batch-2 forward (per-token fp32
# modulation tables, fp32 residual, fp64 RoPE copies) does not fit next to both 14B experts on an 80 GB H100.
# The capture records that attempt (OOM) in the same run; notebook t2v/02_batched_cfg shows it.
A14B_ORDER = ["00_baseline", "01_no_offload", "03_tf32", "04_dtype_hygiene", "02_batched_cfg", "05_attention",
              "06_fusion", "07_compile", "08_cuda_graphs"]
WORKLOAD_ORDER = {name: A14B_ORDER for name in ("t2v-a14b-480p", "t2v-a14b-720p", "t2v-a14b-720p-sp2",
                                                "t2v-a14b-720p-sp4", "t2v-a14b-720p-sp8", "tiny-t2v", "tiny-t2v-sp2")}


def _family(workload: str | None) -> str:
    return get_workload(workload).family if workload is not None else "t2v"


def stage_order(workload: str | None = None) -> list[Stage]:
    """The stages of a workload in the order they are applied (T2V's default order without a workload): its family's
    list, then the decode stages for an end-to-end workload or sequence parallel for a multi-GPU one."""
    by_name = {s.name: s for s in FAMILY_STAGES[_family(workload)]}
    names = WORKLOAD_ORDER.get(workload, list(by_name))
    extra = []
    if workload is not None:
        wl = get_workload(workload)
        extra = (MG2_DECODE_STAGES if wl.decode else []) + (PARALLEL_STAGES if wl.world_size > 1 else [])
    return [by_name[n] for n in names] + extra


def get_stage(name: str, workload: str | None = None) -> Stage:
    order = stage_order(workload)
    for s in order:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}" + (f" for workload {workload!r}" if workload else "")
                   + f"; stages in order: {', '.join(s.name for s in order)}")


def stages_up_to(name: str, workload: str | None = None) -> list[Stage]:
    """The cumulative list baseline..name, in the workload's order."""
    order = stage_order(workload)
    idx = [s.name for s in order].index(get_stage(name, workload).name)
    return order[: idx + 1]


def cumulative_tolerance(stages: list[Stage], name: str) -> float:
    """The tolerance of stage `name` against the baseline when `stages` are applied in this order: the largest of
    those applied up to it (errors add up along the sequence)."""
    names = [s.name for s in stages]
    return max(s.tolerance for s in stages[: names.index(name) + 1])


def cumulative_part_tolerance(stages: list[Stage], name: str, part: str) -> float | None:
    """As cumulative_tolerance for one of a runner's error parts; None where no stage up to `name` sets one."""
    names = [s.name for s in stages]
    given = [s.part_tolerances[part] for s in stages[: names.index(name) + 1] if part in s.part_tolerances]
    return max(given) if given else None


def tolerance_at(name: str, workload: str | None = None) -> float:
    """A stage's tolerance against the baseline in the workload's order."""
    return cumulative_tolerance(stage_order(workload), get_stage(name, workload).name)


@dataclass(frozen=True)
class Plan:
    workload: str
    stages: list[Stage]  # applied in this order: the workload's order up to the last captured stage
    captured: list[str]  # timed, profiled and written, in the workload's order


def plan(workload: str, stages="all") -> Plan:
    """Which stages a capture applies and which it captures. `stages` is "all", a comma-separated string or a list
    of names; unknown names and an empty list are errors that list the stages in order."""
    order = stage_order(workload)
    names = [s.name for s in order]
    if stages in ("all", None):
        wanted = names
    else:
        given = [n.strip() for n in (stages.split(",") if isinstance(stages, str) else stages)]
        given = [n for n in given if n]
        if not given:
            raise ValueError(f"no stage named in {stages!r}: give comma-separated names or 'all'; stages of "
                             f"{workload} in order: {', '.join(names)}")
        for n in given:
            get_stage(n, workload)
        wanted = [n for n in names if n in given]
    last = max(names.index(n) for n in wanted)
    return Plan(workload, order[: last + 1], wanted)


def apply_stage(pipe, stage: Stage, options: dict | None = None):
    """Apply one stage with its options and record it on the pipeline (`pipe.applied_stages`)."""
    if stage.apply is not None:
        pipe = stage.apply(pipe, **(options or {}))
    pipe.applied_stages = [*getattr(pipe, "applied_stages", []), stage.name]
    return pipe


def apply_stages(pipe, names, workload: str | None = None, ctx: ChoiceContext | None = None,
                 options: dict | None = None):
    """Apply the named stages (each once, in the workload's order), each with the options its `choose` gives in
    `ctx` (default: this machine without measurements, what the tiny-model tests and notebooks use), or those
    given per stage in `options` (say, what a capture on this GPU measured and recorded)."""
    wanted = {get_stage(n, workload).name for n in names}
    options = options or {}
    for stage in stage_order(workload):
        if stage.name in wanted and stage.apply is not None:
            pipe = apply_stage(pipe, stage, options[stage.name] if stage.name in options else
                               stage.options(ctx).options)
    return pipe


__all__ = ["T2V_STAGES", "MG2_STAGES", "MG2_DECODE_STAGES", "PARALLEL_STAGES", "EXTRA_STAGES", "Stage", "Choice", "ChoiceContext", "Plan", "plan", "stage_order",
           "WORKLOAD_ORDER", "get_stage", "stages_up_to", "tolerance_at", "cumulative_tolerance", "cumulative_part_tolerance", "apply_stage", "apply_stages",
           "no_offload", "batch_cfg", "enable_tf32", "lean_numerics", "attention_kernel", "best_backend",
           "fuse_kernels", "compile_blocks", "compile_model", "uncompile", "cuda_graphs", "host_cache_indices",
           "ring_kv_cache", "mg2_lean_numerics", "mg2_attention_kernels", "choose_mg2_attention", "fuse_causal_kernels",
           "compile_causal_parts", "causal_cuda_graphs", "fold_cache_refresh", "decode_channels_last", "decode_compile",
           "decode_cuda_graphs", "decode_overlap", "sequence_parallel"]
