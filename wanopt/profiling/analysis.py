"""Trace analysis on Holistic Trace Analysis (PyPI `traceinsight`, `import hta`), returning pandas DataFrames.

Everything here reads committed traces and manifests; nothing needs a GPU. HTA's own logging goes to stderr with
timings and PIDs, so it is silenced here (the notebooks run under strict nbval). Notebooks call these functions
and never read HTA's internals (its trace frame, its symbol table) themselves.

    run = load_run("t2v-1.3b-480p")                  # capture.json of the run
    m = load_manifest("t2v-1.3b-480p", "00_baseline")
    a = load_trace("t2v-1.3b-480p", "00_baseline")   # an HTA TraceAnalysis
    kernels(a)                                       # one row per GPU kernel / memcpy / memset, with a category
    annotations(a)                                   # the record_function labels on the host
    category_breakdown(a)                            # GEMM, attention, norm/elementwise, cast/copy, memcpy, other

A stage captured on several GPUs (09_sequence_parallel) has one trace per rank in its folder, and load_trace reads
them all: kernels(a, rank), and per rank comm_comp_overlap, rank_kernel_types, all_to_all_share, rank_timelines;
stragglers, sp_comparison and scaling_table read the manifests of the `-sp<N>` runs.

Two capture formats are read: the committed H100 runs (the choices of stages 5 and 6 in `capture.json` →
`ceilings` / `ffn_gelu` and the manifest's `fusion`, whole-model compile in `compile_whole_model`) and the newer
harness (`choice` in each manifest, `choices` and `alternatives` in capture.json). `stage_choice` and
`whole_model_compile` hide the difference.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .records import MANIFEST, RUN_SUMMARY, TRACE_NAME, TRACES

CATEGORIES = ["GEMM", "attention", "norm/elementwise", "cast/copy", "memcpy H2D/D2H", "other"]
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


class MissingTraceError(FileNotFoundError):
    """A manifest, run summary or trace that is not on disk; the message says whether the run captured it and how
    to capture it."""


class UnknownNameError(KeyError):
    """A workload or stage name that does not exist; the message lists the names that do."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def quiet():
    """Silence HTA's INFO logging (timings and PIDs on stderr would break strict nbval)."""
    logging.getLogger("hta").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="hta")


# -- names, folders and what a run captured -------------------------------------------------------------------


def known_workloads() -> list[str]:
    from ..configs import WORKLOADS

    return list(WORKLOADS)


def known_stages(workload: str) -> list[str]:
    """The stage names of a workload, in the order its runs apply them (wanopt.stages)."""
    from ..stages import stage_order

    return [s.name for s in stage_order(check_workload(workload))]


def check_workload(workload: str) -> str:
    if workload not in known_workloads():
        raise UnknownNameError(f"unknown workload {workload!r}; known workloads: {', '.join(known_workloads())}")
    return workload


def check_stage(workload: str, stage: str) -> str:
    stages = known_stages(workload)
    if stage not in stages:
        raise UnknownNameError(f"unknown stage {stage!r} for {workload}; its stages, in order: {', '.join(stages)}")
    return stage


def capture_command(workload: str, stages: str | None = None) -> str:
    return f"python -m wanopt capture --workload {workload}" + (f" --stages {stages}" if stages else "") + \
        " --out traces"


def _folder(workload: str, stage: str | None = None, root=None) -> Path:
    folder = Path(root or TRACES) / workload
    return folder / stage if stage else folder


def captured_stages(workload: str, root=None) -> list[str]:
    """The stages the workload's committed run captured: capture.json's `stages_captured` where the run records
    it, else the stage folders that hold a manifest (in the workload's order)."""
    folder = _folder(workload, None, root)
    summary = folder / RUN_SUMMARY
    if summary.exists():
        listed = json.loads(summary.read_text()).get("stages_captured")
        if listed:
            return list(listed)
    on_disk = {p.parent.name for p in folder.glob(f"*/{MANIFEST}")}
    try:
        order = known_stages(workload)
    except UnknownNameError:
        order = []
    return [s for s in order if s in on_disk] + sorted(on_disk - set(order))


def _missing(path: Path, workload: str, stage: str | None, root=None) -> Exception:
    """The error for a file that is not there, saying why: an unknown name, a stage the run did not capture, or a
    checkout without the traces."""
    try:
        check_workload(workload)
        if stage is not None:
            check_stage(workload, stage)
    except UnknownNameError as err:
        return err
    folder = _folder(workload, None, root)
    if not folder.exists():
        return MissingTraceError(
            f"{workload} has no capture under {folder.parent}: the notebooks read the runs committed under "
            f"traces/ (check out the full repository), or capture it on a GPU with "
            f"`{capture_command(workload, stage)}`.")
    captured = captured_stages(workload, root)
    if stage is not None and stage not in captured:
        run_id = ""
        if (folder / RUN_SUMMARY).exists():
            run_id = f" (run {json.loads((folder / RUN_SUMMARY).read_text()).get('run_id')})"
        return MissingTraceError(
            f"{workload}/{stage} was not captured in that run{run_id}; it captured: "
            f"{', '.join(captured) or 'nothing'}. Capture it on a GPU with `{capture_command(workload, stage)}`.")
    return MissingTraceError(
        f"{path} is missing, though the run captured it: check out the full repository (traces/ is committed), "
        f"or capture it again on a GPU with `{capture_command(workload, stage)}`.")


def load_manifest(workload: str, stage: str, root=None) -> dict:
    path = _folder(workload, stage, root) / MANIFEST
    if not path.exists():
        raise _missing(path, workload, stage, root)
    return json.loads(path.read_text())


def load_run(workload: str, root=None) -> dict:
    """The capture run's summary: ceilings, peers, T5/VAE timings, per-stage rows."""
    path = _folder(workload, None, root) / RUN_SUMMARY
    if not path.exists():
        raise _missing(path, workload, None, root)
    return json.loads(path.read_text())


def _widen_hta_correlation():
    """Work around a bug of HTA (traceinsight 0.6.1) under pandas 3. Its parser downcasts every integer column to
    the smallest type that holds it, then `hta.common.trace.transform_correlation_to_index` starts the column
    `index_correlation` (each launch's kernel row and back) as a copy of `correlation` and writes row numbers into
    it. In a trace with few launches (a CUDA-graph replay: mg2-universal 07_cuda_graphs and 08_fold_refresh) the
    correlation ids fit int16 but the row numbers do not, and pandas 3 refuses the lossy write ("Invalid value
    ... for dtype 'int16'"). Widening `correlation` first changes nothing else: HTA downcasts the result again."""
    import hta.common.trace as hta_trace

    original = hta_trace.transform_correlation_to_index
    if getattr(original, "wanopt_widened", False):
        return

    def transform_correlation_to_index(df, symbol_table):
        if "correlation" in df.columns:
            df["correlation"] = df["correlation"].astype("int64")
        return original(df, symbol_table)

    transform_correlation_to_index.wanopt_widened = True
    hta_trace.transform_correlation_to_index = transform_correlation_to_index


@functools.lru_cache(maxsize=16)
def _load(trace_dir: str):
    quiet()
    _widen_hta_correlation()
    from hta.trace_analysis import TraceAnalysis

    # the profiled steps are the last ones in the file: HTA would drop the last ProfilerStep by default
    return TraceAnalysis(trace_dir=trace_dir, include_last_profiler_step=True)


def trace_path(workload: str, stage: str, root=None) -> Path:
    path = _folder(workload, stage, root) / TRACE_NAME
    if not path.exists():
        raise _missing(path, workload, stage, root)
    return path


def load_trace(workload: str, stage: str, root=None):
    """HTA TraceAnalysis of traces/<workload>/<stage>/ (cached per folder)."""
    folder = trace_path(workload, stage, root).parent
    analysis = _load(str(folder.resolve()))
    analysis.__dict__.setdefault("_wanopt_source", (workload, stage, str(folder.resolve())))
    return analysis


# -- kernel table -------------------------------------------------------------------------------------------------

_ATTENTION = re.compile(r"flash_fwd|fmha|sdpa|attention|flash_attn|flex|fused_attention", re.I)
_GEMM = re.compile(r"nvjet|gemm|cutlass|cublas|xmma|wgmma|splitk|sm90_|sm80_|ampere_|conv|triton_tem_fused_mm|"
                   r"implicit|Kernel2", re.I)
_CAST = re.compile(r"copy|_to_copy|CatArray|cat_|clone|contiguous|convert|\bto\b|fill", re.I)
_ELEMENTWISE = re.compile(r"elementwise|norm|reduce|triton_(poi|per|red)|_kernel$|gelu|softmax|pow|mul|add|rsqrt|"
                          r"mean|silu|exp|sin|cos|where|index|polar", re.I)


def categorize(name: str, cat: str = "kernel") -> str:
    """Category of one GPU event by kernel name (memcpy/memset by their trace category)."""
    if cat == "gpu_memcpy":
        return "cast/copy" if "DtoD" in name else "memcpy H2D/D2H"
    if cat == "gpu_memset":
        return "other"
    if _ATTENTION.search(name):
        return "attention"
    if _GEMM.search(name) and "elementwise" not in name:
        return "GEMM"
    if _CAST.search(name):
        return "cast/copy"
    if _ELEMENTWISE.search(name):
        return "norm/elementwise"
    return "other"


_FUNCTOR = re.compile(r"(\w+(?:Functor|Impl|Kernel|kernel|_cuda)\w*)(?:<([\w:, ]{1,40})>)?")


def short_kernel_name(name: str, limit: int = 96) -> str:
    """A readable kernel name: the functor of ATen elementwise kernels, the head of library kernels."""
    if name.startswith("void at::native::") or name.startswith("void at_cuda_detail"):
        inner = name[name.find("<") + 1:] if "<" in name else name
        hits = [m for m in _FUNCTOR.finditer(inner)
                if m.group(1) not in ("gpu_kernel_impl", "gpu_kernel_impl_nocast", "elementwise_kernel")]
        head = re.match(r"void at::native::(?:\(anonymous namespace\)::)?(\w+)", name)
        if hits:
            m = hits[0]
            label = m.group(1) + (f"<{m.group(2)}>" if m.group(2) else "")
            if "direct_copy" in label or "copy_kernel" in label:
                # the element type is the first typed lambda inside the copy functor (the last one is the index)
                src = re.search(r"copy_kernel_cuda.*?lambda\((\w+)\)", name)
                dst = "→bf16" if "bfloat16_copy" in name else ""
                label = "copy" + (f"({src.group(1)}{dst})" if src else "")
            return label[:limit]
        return (head.group(1) if head else name)[:limit]
    if name.startswith("cudnn_generated") and "sdpa" in name:
        return "cudnn sdpa " + ("fprop" if "fprop" in name else "")
    if "flash_attncute" in name and "flash_fwd" in name:  # FlashAttention-4's CuTe DSL kernel
        return "flash_fwd_sm90 (FA4)" if "sm90" in name else "flash_fwd (FA4)"
    if "flash_fwd" in name:
        return "flash_fwd (FA2)"
    return name.replace("void ", "")[:limit]


def _cached(fn):
    """Build a table once per loaded trace (the trace objects are cached by load_trace)."""
    @functools.wraps(fn)
    def wrapper(analysis, *args):
        store = analysis.__dict__.setdefault("_wanopt_tables", {})
        key = (fn.__name__, *args)
        if key not in store:
            store[key] = fn(analysis, *args)
        return store[key].copy()
    return wrapper


@_cached
def kernels(analysis, rank: int = 0) -> pd.DataFrame:
    """One row per GPU event (kernel, memcpy, memset) of the trace: name, short name, category, times in µs
    relative to the trace's first GPU event, stream, iteration, and the host time of its launch. (Events on the
    host that carry a `stream` argument, such as Inductor's launch ops, are not GPU events and are not here.)
    `rank` picks one trace of a stage captured on several GPUs; `ts` is on a clock common to all ranks."""
    t = analysis.t.get_trace(rank)
    sym = analysis.t.symbol_table.get_sym_table()
    cats = t["cat"].map(lambda i: sym[i])
    gpu = t[(t["stream"] >= 0) & cats.isin(GPU_CATS)].copy()
    gpu["name"] = gpu["name"].map(lambda i: sym[i])
    gpu["cat"] = cats[gpu.index]
    ts_by_index = t.set_index("index")["ts"]  # index_correlation points at the launching runtime event
    gpu["launch_ts"] = ts_by_index.reindex(gpu["index_correlation"]).to_numpy()
    gpu["dur"] = gpu["dur"].clip(lower=0)  # the profiler reports a few memsets/memcpys with dur -1
    pairs = gpu[["name", "cat"]].drop_duplicates()  # classify each distinct name once (MG2: 50k events)
    category = {(n, c): categorize(n, c) for n, c in zip(pairs["name"], pairs["cat"])}
    short = {n: short_kernel_name(n) for n in pairs["name"].unique()}
    gpu["category"] = [category[(n, c)] for n, c in zip(gpu["name"], gpu["cat"])]
    gpu["short_name"] = gpu["name"].map(short)
    t0 = gpu["ts"].min()
    gpu["start_us"] = gpu["ts"] - t0
    gpu["end_us"] = gpu["start_us"] + gpu["dur"]
    cols = ["short_name", "category", "start_us", "dur", "end_us", "stream", "iteration", "ts", "launch_ts", "name",
            "cat", "correlation", "bytes"]
    return gpu[cols].sort_values("ts").reset_index(drop=True)


@_cached
def annotations(analysis, cpu: bool = True, rank: int = 0) -> pd.DataFrame:
    """record_function labels of the trace (CPU side by default): name, ts, end, dur, tid, iteration. `rank` picks
    one trace of a stage captured on several GPUs."""
    t = analysis.t.get_trace(rank)
    sym = analysis.t.symbol_table.get_sym_table()
    cats = t["cat"].map(lambda i: sym[i])
    want = "user_annotation" if cpu else "gpu_user_annotation"
    ann = t[cats == want].copy()
    ann["name"] = ann["name"].map(lambda i: sym[i])
    ann["end"] = ann["ts"] + ann["dur"]  # HTA normalises ts but leaves its own `end` column absolute
    return ann[["name", "ts", "dur", "end", "tid", "iteration"]].sort_values("ts").reset_index(drop=True)


@_cached
def runtime_calls(analysis, pattern: str = ".") -> pd.DataFrame:
    """Host-side CUDA runtime and driver calls whose name matches the regex `pattern` (searched): name, ts, dur,
    end, iteration. E.g. "Synchronize" for host syncs, "Launch" for kernel launches."""
    t = analysis.t.get_trace(0)
    sym = analysis.t.symbol_table.get_sym_table()
    cats = t["cat"].map(lambda i: sym[i])
    calls = t[cats.isin(["cuda_runtime", "cuda_driver"])].copy()
    calls["name"] = calls["name"].map(lambda i: sym[i])
    calls = calls[calls["name"].str.contains(pattern, regex=True)]
    calls["end"] = calls["ts"] + calls["dur"]
    return calls[["name", "ts", "dur", "end", "iteration"]].sort_values("ts").reset_index(drop=True)


def launch_calls(analysis) -> pd.Series:
    """How many times each host launch API was called in the trace (cudaLaunchKernel, cuLaunchKernelEx,
    cudaGraphLaunch, ...), most frequent first."""
    return runtime_calls(analysis, "Launch")["name"].value_counts().rename("calls").rename_axis("launch call")


def kernel_launch_config(workload: str, stage: str, names, root=None) -> pd.DataFrame:
    """The launch configuration the profiler recorded for every call of the named kernels (exact names): threads
    per block, registers per thread, shared memory, the profiler's estimated occupancy, and the call's µs."""
    names = {names} if isinstance(names, str) else set(names)
    with gzip.open(trace_path(workload, stage, root)) as f:
        events = json.load(f)["traceEvents"]
    rows = [{"kernel": e["name"], "threads / block": e["args"]["block"][0],
             "registers / thread": e["args"]["registers per thread"], "shared memory B": e["args"]["shared memory"],
             "est. occupancy %": e["args"].get("est. achieved occupancy %"), "µs": e["dur"]}
            for e in events if e.get("cat") == "kernel" and e.get("name") in names]
    return pd.DataFrame(rows, columns=["kernel", "threads / block", "registers / thread", "shared memory B",
                                       "est. occupancy %", "µs"])


# -- host spans and the GPU work launched inside them -----------------------------------------------------------


def spans(analysis, name: str | None = None, pattern: str | None = None, iteration: int | None = None,
          within: pd.DataFrame | None = None) -> pd.DataFrame:
    """Host spans of record_function labels (rows of annotations()): one label by `name`, or every label whose name
    fully matches the regex `pattern`; optionally of one profiled step (`iteration`) and only those that start
    inside other spans (`within`, e.g. the spans of one eval)."""
    ann = annotations(analysis)
    if name is not None:
        ann = ann[ann["name"] == name]
    if pattern is not None:
        ann = ann[ann["name"].str.fullmatch(pattern)]
    if iteration is not None:
        ann = ann[ann["iteration"] == iteration]
    if within is not None:
        ann = ann[inside(ann["ts"], within)]
    return ann


def inside(times, host_spans: pd.DataFrame) -> np.ndarray:
    """Mask of host `times` (µs, as annotations()' ts) that fall inside one of `host_spans` (rows with ts and end;
    spans of one label, which do not overlap)."""
    s = host_spans.sort_values("ts")
    starts, ends = s["ts"].to_numpy(), s["end"].to_numpy()
    times = np.asarray(times)
    if len(starts) == 0:
        return np.zeros(len(times), dtype=bool)
    i = np.searchsorted(starts, times, side="right") - 1
    return (i >= 0) & (times <= ends[i.clip(0)])


def launched_in(k: pd.DataFrame, host_spans: pd.DataFrame) -> pd.DataFrame:
    """The GPU events of kernels() that the host launched while one of `host_spans` was open (the rule that
    window() and gpu_time_by_label() use)."""
    return k[inside(k["launch_ts"], host_spans)]


def span_window(k: pd.DataFrame, host_spans: pd.DataFrame) -> tuple[float, float]:
    """[start, end) µs of the GPU work launched inside `host_spans`, as window() gives it for one label."""
    w = launched_in(k, host_spans)
    if w.empty:
        raise KeyError("no GPU work was launched inside these spans")
    return float(w["start_us"].min()), float(w["end_us"].max())


def gaps(k: pd.DataFrame) -> pd.DataFrame:
    """The idle gap before each GPU event (µs, 0 when the GPU was still busy) and whether the event was launched
    only after the GPU had run dry (`waits_for_launch`: the gap waits for the host, not for a queued kernel)."""
    k = k.sort_values("start_us")
    prev_end = k["end_us"].cummax().shift()
    gap = (k["start_us"] - prev_end).clip(lower=0).fillna(0)
    prev_end_ts = (k["ts"] + k["dur"]).cummax().shift()
    return pd.DataFrame({"gap_us": gap, "waits_for_launch": (k["launch_ts"] > prev_end_ts) & (gap > 0)})


def idle_summary(k: pd.DataFrame) -> pd.Series:
    """A set of GPU events (one step, one eval): the traced span from the first start to the last end, the kernel
    time in it, the GPU-idle share of the span, and the share of the idle time that waits for a launch."""
    if k.empty:
        return pd.Series({"traced ms": 0.0, "kernel ms": 0.0, "GPU idle %": np.nan,
                          "idle that waits for a launch %": np.nan})
    wall = k["end_us"].max() - k["start_us"].min()
    busy = k["dur"].sum()
    g = gaps(k)
    idle = g["gap_us"].sum()
    return pd.Series({"traced ms": wall / 1e3, "kernel ms": busy / 1e3, "GPU idle %": 100 * (1 - busy / wall),
                      "idle that waits for a launch %":
                          100 * g.loc[g["waits_for_launch"], "gap_us"].sum() / idle if idle else 0.0})


def gap_histogram(k: pd.DataFrame, edges=(0, 5, 10, 20, 50, 100, np.inf)) -> pd.DataFrame:
    """The idle gaps between consecutive GPU events, by length: how many gaps and how much idle time per bin."""
    g = gaps(k)["gap_us"]
    g = g[g > 0]
    bins = pd.cut(g, list(edges), right=True)
    out = pd.DataFrame({"gaps": g.groupby(bins, observed=False).size(),
                        "idle ms": g.groupby(bins, observed=False).sum() / 1e3})
    out.index = [f"{a:g}–{b:g}" if np.isfinite(b) else f"> {a:g}" for a, b in zip(edges[:-1], edges[1:])]
    out.index.name = "gap µs"
    return out.round(1)


def span_table(analysis, pattern: str, iteration: int | None = None) -> pd.DataFrame:
    r"""One row per host span of the labels matching `pattern` (e.g. "denoise_eval|cache_refresh", or
    r"ProfilerStep#\d+"): its step, label, position among that step's spans, the host syncs inside it
    (cudaStreamSynchronize calls and device-to-host copies, one of each per `.item()`), the median wait at a sync,
    the GPU events it launched, their median µs and total ms, the traced span of its GPU work and the GPU-idle
    share of that span."""
    k = kernels(analysis)
    syncs = runtime_calls(analysis, r"^cudaStreamSynchronize$")
    d2h = k[k["name"].str.contains("DtoH")]
    rows = []
    s = spans(analysis, pattern=pattern, iteration=iteration)
    position = s.groupby("iteration").cumcount()
    for (_, span), nth in zip(s.iterrows(), position):
        one = s.loc[[span.name]]
        kk = launched_in(k, one)
        sync = syncs[inside(syncs["ts"], one)]
        idle = idle_summary(kk)
        rows.append({"step": int(span["iteration"]), "label": span["name"], "#": int(nth),
                     "host syncs": len(sync), "D2H copies": len(launched_in(d2h, one)),
                     "sync wait µs (median)": sync["dur"].median() if len(sync) else np.nan,
                     "GPU events": len(kk), "median µs": kk["dur"].median(), "kernel ms": idle["kernel ms"],
                     "traced ms": idle["traced ms"], "GPU idle %": idle["GPU idle %"]})
    return pd.DataFrame(rows).set_index(["step", "label", "#"])


def label_breakdown(analysis, labels, iteration: int | None = None, outside: dict | None = None,
                    within: str | None = None) -> pd.DataFrame:
    r"""GPU time per record_function label, split by kind of kernel: for each label in `labels` (exact names), the
    kernels launched while one of its spans was open: calls (spans), GPU ms and share of the kernel time (of the
    step with `iteration`, else of the trace), GEMM ms, attention ms, small-op ms (everything else), GPU events,
    their median µs, device-to-host copies (syncs) and the spans' total host ms.

    `outside` adds rows of what a parent label launched outside its listed children: {row name: (parent label
    regex, [child label regexes])}, e.g. {"block, outside its modules": (r"block\d\d", ["self_attn", "ffn"])}.
    `within` (a label regex) keeps only the spans and kernels inside that label's spans (e.g. "cache_refresh"); the
    share stays of the whole step's (or trace's) kernel time."""
    k = kernels(analysis)
    ann = spans(analysis, iteration=iteration)
    if iteration is not None:
        k = launched_in(k, spans(analysis, pattern=r"ProfilerStep#\d+", iteration=iteration))
    total = k["dur"].sum()
    if within is not None:
        container = ann[ann["name"].str.fullmatch(within)]
        ann = ann[inside(ann["ts"], container)]
        k = launched_in(k, container)

    def row(kk, n_spans, host_us):
        by_cat = kk.groupby("category")["dur"].sum()
        gemm, attn = by_cat.get("GEMM", 0.0), by_cat.get("attention", 0.0)
        return {"calls": n_spans, "GPU ms": kk["dur"].sum() / 1e3, "share %": 100 * kk["dur"].sum() / total,
                "GEMM ms": gemm / 1e3, "attention ms": attn / 1e3,
                "small-op ms": (kk["dur"].sum() - gemm - attn) / 1e3, "GPU events": len(kk),
                "median µs": kk["dur"].median() if len(kk) else np.nan,
                "syncs": int(kk["name"].str.contains("DtoH").sum()), "host ms": host_us / 1e3}

    rows = {}
    for name in labels:
        s = ann[ann["name"] == name]
        rows[name] = row(launched_in(k, s), len(s), s["dur"].sum())
    for name, (parent, children) in (outside or {}).items():
        p = ann[ann["name"].str.fullmatch(parent)]
        kk = launched_in(k, p)
        for child in children:
            kk = kk[~inside(kk["launch_ts"], ann[ann["name"].str.fullmatch(child)])]
        rows[name] = row(kk, len(p), np.nan)
    out = pd.DataFrame(rows).T
    for c in ("calls", "GPU events", "syncs"):
        out[c] = out[c].astype(int)
    out.index.name = "label"
    return out


# -- breakdowns -------------------------------------------------------------------------------------------------


def temporal_breakdown(analysis) -> pd.DataFrame:
    """HTA's idle / compute / non-compute split of GPU time (ms and %)."""
    df = analysis.get_temporal_breakdown(visualize=False)
    out = pd.DataFrame({
        "ms": [df[c].iloc[0] / 1e3 for c in ("idle_time(us)", "compute_time(us)", "non_compute_time(us)")],
        "percent": [df[c].iloc[0] for c in ("idle_time_pctg", "compute_time_pctg", "non_compute_time_pctg")],
    }, index=pd.Index(["idle", "compute", "non-compute"], name="GPU time"))
    return out.round(2)


def busy_breakdown(k: pd.DataFrame, window: tuple[float, float]) -> pd.DataFrame:
    """HTA's temporal split restricted to one window (a step, a block): time the GPU ran compute kernels, time it
    ran only memory copies/sets, and idle time, as ms and % of the window."""
    start, end = window

    def union_us(rows) -> float:
        spans = sorted(zip(rows["start_us"].clip(lower=start), rows["end_us"].clip(upper=end)))
        total, cur_s, cur_e = 0.0, None, None
        for s_, e_ in spans:
            if cur_e is None or s_ > cur_e:
                total += 0 if cur_e is None else cur_e - cur_s
                cur_s, cur_e = s_, e_
            else:
                cur_e = max(cur_e, e_)
        return total + (0 if cur_e is None else cur_e - cur_s)

    w = k[(k["end_us"] > start) & (k["start_us"] < end)]
    busy = union_us(w)
    compute = union_us(w[w["cat"] == "kernel"])
    ms = {"compute": compute / 1e3, "non-compute": (busy - compute) / 1e3, "idle": (end - start - busy) / 1e3}
    out = pd.DataFrame({"ms": ms, "percent": {n: 100 * v * 1e3 / (end - start) for n, v in ms.items()}})
    out.index.name = "GPU time"
    return out.round(2)


def category_breakdown(source) -> pd.DataFrame:
    """GPU kernel time per category (ms, share of kernel time, kernel count). source: TraceAnalysis or kernels()."""
    k = kernels(source) if not isinstance(source, pd.DataFrame) else source
    g = k.groupby("category")["dur"].agg(["sum", "count"]).reindex(CATEGORIES).fillna(0)
    out = pd.DataFrame({"ms": g["sum"] / 1e3, "share %": 100 * g["sum"] / g["sum"].sum(),
                        "kernels": g["count"].astype(int)})
    out.index.name = "category"
    return out.round(2)


def top_kernels(source, n: int = 10) -> pd.DataFrame:
    """The n kernels (by short name) with the most GPU time."""
    k = kernels(source) if not isinstance(source, pd.DataFrame) else source
    g = k.groupby(["short_name", "category"])["dur"].agg(["sum", "count", "median"]).sort_values("sum",
                                                                                                 ascending=False)
    out = pd.DataFrame({"ms": g["sum"] / 1e3, "calls": g["count"].astype(int), "median µs": g["median"]}).head(n)
    return out.round(2)


def idle_breakdown(analysis) -> pd.DataFrame:
    """HTA's idle-time breakdown of the compute stream: host wait, kernel wait, other (ms and ratio)."""
    df, _ = analysis.get_idle_time_breakdown(ranks=[0], visualize=False, show_idle_interval_stats=False)
    df = df.groupby("idle_category")[["idle_time", "idle_time_ratio"]].sum()
    return pd.DataFrame({"ms": df["idle_time"] / 1e3, "ratio": df["idle_time_ratio"]}).round(3)


def launch_stats(analysis, short_kernel_us: float = 50.0, long_delay_us: float = 100.0) -> pd.DataFrame:
    """CUDA launch statistics from HTA: kernel count, how many are short (and their share of GPU time), median
    CPU launch cost and launch-to-start delay. A deep launch queue (compute-bound) shows as long delays; a
    launch-bound run shows as short kernels and idle gaps."""
    df = analysis.get_cuda_kernel_launch_stats(ranks=[0], runtime_cutoff=short_kernel_us,
                                               launch_delay_cutoff=long_delay_us, visualize=False)[0]
    short = df["gpu_duration"] < short_kernel_us
    rows = {
        "launches": len(df),
        f"kernels < {short_kernel_us:g} µs": int(short.sum()),
        f"share of GPU time in kernels < {short_kernel_us:g} µs, %": round(100 * df.loc[short, "gpu_duration"].sum()
                                                                           / max(df["gpu_duration"].sum(), 1), 2),
        "median kernel µs": round(float(df["gpu_duration"].median()), 2),
        "median CPU launch µs": round(float(df["cpu_duration"].median()), 2),
        "median launch delay µs": round(float(df["launch_delay"].median()), 2),
        f"launches delayed > {long_delay_us:g} µs": int((df["launch_delay"] > long_delay_us).sum()),
    }
    # one column of counts (ints) and rates (floats): kept as objects so that counts stay whole numbers
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)})


def host_syncs(analysis) -> pd.DataFrame:
    """Host-side synchronising CUDA runtime calls (cudaStreamSynchronize, cudaDeviceSynchronize, blocking
    cudaMemcpy) per profiled step (iteration): count and total host time blocked. (The profiler also records
    each one as a "Stream Sync" marker; those are not counted twice.)"""
    sync = runtime_calls(analysis, r"Synchronize|^cudaMemcpy$")
    out = sync.groupby(["iteration", "name"]).agg(count=("dur", "size"), total_ms=("dur", lambda d: d.sum() / 1e3))
    out.index.names = ["step", "sync"]
    return out.round(3)


def gpu_time_by_label(analysis, pattern: str | None = None, iteration: int | None = None) -> pd.DataFrame:
    """GPU time per record_function label: for every label occurrence, the kernels launched while it was open
    on the host (nested labels count their children too). Columns: occurrences, GPU ms (sum of kernel time),
    kernels, and share of the trace's kernel time. iteration picks one profiled step (ProfilerStep#n)."""
    k = kernels(analysis)
    ann = annotations(analysis)
    if pattern:
        ann = ann[ann["name"].str.fullmatch(pattern)]
    if iteration is not None:
        ann = ann[ann["iteration"] == iteration]
        k = k[k["iteration"] == iteration]
    order = np.argsort(k["launch_ts"].to_numpy())
    lts = k["launch_ts"].to_numpy()[order]
    csum = np.concatenate([[0.0], np.cumsum(k["dur"].to_numpy()[order])])
    lo = np.searchsorted(lts, ann["ts"].to_numpy(), side="left")
    hi = np.searchsorted(lts, ann["end"].to_numpy(), side="right")
    ann = ann.assign(gpu_us=csum[hi] - csum[lo], kernels=hi - lo)
    g = ann.groupby("name").agg(occurrences=("gpu_us", "size"), gpu_ms=("gpu_us", lambda x: x.sum() / 1e3),
                                kernels=("kernels", "sum"))
    g["share %"] = 100 * g["gpu_ms"] * 1e3 / k["dur"].sum()
    g.index.name = "label"
    return g.sort_values("gpu_ms", ascending=False).round(2)


def in_window(k: pd.DataFrame, window: tuple[float, float]) -> pd.DataFrame:
    """The GPU events of kernels() that lie inside a window() (e.g. one block, one step)."""
    start, end = window
    return k[(k["start_us"] >= start) & (k["end_us"] <= end)]


def window(analysis, label: str, occurrence: int = 0) -> tuple[float, float]:
    """GPU time window [start, end) in µs (relative, as in kernels()) of the kernels launched inside the
    occurrence-th host span of `label` (e.g. "block05", "denoise_step")."""
    ann = annotations(analysis)
    found = ann[ann["name"] == label]
    if len(found) <= occurrence:
        raise KeyError(f"label {label!r} occurs {len(found)} time(s) in this trace; labels seen: "
                       f"{', '.join(sorted(set(ann['name']))[:30])}")
    try:
        return span_window(kernels(analysis), found.iloc[[occurrence]])
    except KeyError:
        raise KeyError(f"no GPU work was launched inside {label!r} #{occurrence}") from None


def source_breakdown(k: pd.DataFrame, own: dict | None = None) -> pd.DataFrame:
    """GPU events grouped by who wrote the kernel: the hand-written kernels in `own` ({label: [kernel names]}, e.g.
    the stage-6 Triton kernels), Inductor's generated Triton kernels (names starting with `triton_`), and the rest
    by category. Calls and ms per group."""
    own = own or {}
    by_name = {n: label for label, names in own.items() for n in names}
    source = np.where(k["short_name"].isin(list(by_name)), k["short_name"].map(by_name),
                      np.where(k["short_name"].str.startswith("triton_"), "Inductor Triton", k["category"]))
    g = k.groupby(source)["dur"].agg(calls="size", ms="sum")
    g["ms"] = g["ms"] / 1e3
    g.index.name = "kernels"
    return g


# -- comparing two stages ---------------------------------------------------------------------------------------


def first_step(k: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """The GPU events of one profiled step of kernels(): the first by default (an offload baseline's trace also
    holds the expert-switch step; the first is the normal one), or ProfilerStep `step` (a Matrix-Game-2 trace:
    1 the first block, 2 the filling one, 3 the steady state)."""
    steps = k.loc[k["iteration"] > 0, "iteration"]
    if step is not None:
        if step not in set(steps):
            raise KeyError(f"profiled step {step} is not in this trace; it holds steps {sorted(set(steps))}")
        return k[k["iteration"] == step]
    return k[k["iteration"] == steps.min()] if len(steps) else k


def kernel_counts(k: pd.DataFrame) -> pd.DataFrame:
    """Calls and total ms per short kernel name of a set of GPU events."""
    g = k.groupby("short_name")["dur"].agg(calls="size", ms="sum")
    g["ms"] = g["ms"] / 1e3
    return g


def trace_diff(workload: str, before: str, after: str, root=None, top: int = 12,
               step: int | None = None) -> pd.DataFrame:
    """The GPU kernels (and memcpys, memsets) of one profiled step (the first, or `step`) of two stages, by short
    kernel name:
    calls and total ms before and after, sorted by the size of the change in time.

    Computed from kernels() of each trace rather than with HTA's TraceDiff: HTA counts every event with a `stream`
    argument as a GPU event, and Inductor's host-side launch ops carry one, named after their kernel, so each
    Inductor kernel would count twice (and the profiler's `Stream Sync` markers would show as kernels)."""
    a, b = (first_step(kernels(load_trace(workload, s, root)), step) for s in (before, after))
    d = pd.concat({before: kernel_counts(a), after: kernel_counts(b)}, axis=1).fillna(0)
    d.columns = [f"{s} {c}" for s, c in d.columns]
    for s in (before, after):
        d[f"{s} calls"] = d[f"{s} calls"].astype(int)
    d["Δ ms"] = d[f"{after} ms"] - d[f"{before} ms"]
    d = d.reindex(d["Δ ms"].abs().sort_values(ascending=False, kind="stable").index).head(top)
    d.index.name = "kernel"
    return _no_negative_zero(d.round(2))


def category_diff(workload: str, before: str, after: str, root=None, step: int | None = None) -> pd.DataFrame:
    """GPU kernel time per category in one profiled step (the first, or `step`) of each of two stages, and the
    difference (ms)."""
    a, b = (category_breakdown(first_step(kernels(load_trace(workload, s, root)), step))["ms"]
            for s in (before, after))
    out = pd.DataFrame({before: a, after: b})
    out["Δ ms"] = out[after] - out[before]
    out.loc["total"] = out.sum()
    return _no_negative_zero(out.round(1))


def _no_negative_zero(df: pd.DataFrame) -> pd.DataFrame:
    """-0.0 (a rounded small negative) shown as 0.0."""
    num = df.select_dtypes("float").columns
    df[num] = df[num] + 0.0
    return df


# -- manifests as tables ----------------------------------------------------------------------------------------


def stage_table(workload: str, stages=None, root=None) -> pd.DataFrame:
    """One row per captured stage of a workload: step time, speedups, MFU, kernel-floor ratio, peak memory,
    error against the baseline, compile time."""
    folder = _folder(workload, None, root)
    if not folder.exists():
        raise _missing(folder, workload, None, root)
    names = stages or [p.name for p in folder.iterdir() if (p / MANIFEST).exists()]
    manifests = {name: load_manifest(workload, name, root) for name in names}
    if not stages:  # in the order the run applied them (it differs per workload)
        names = sorted(names, key=lambda n: len(manifests[n]["stages_applied"]))
    rows = []
    for name in names:
        m = manifests[name]
        rows.append({"stage": name, "step ms": m["timing"]["median"], "n": m["timing"]["n"],
                     "vs baseline ×": m["speedup_vs_baseline"] or 1.0, "vs previous ×": m["speedup_vs_previous"],
                     "MFU": m["mfu"], "floor ×": m["kernel_floor_ratio"], "peak GiB": m["peak_memory_gib"],
                     "error": m["error_vs_baseline"]["value"], "tolerance": m["error_vs_baseline"]["tolerance"],
                     "compile s": m["compile_s"]})
    df = pd.DataFrame(rows).set_index("stage")
    return df.round({"step ms": 1, "vs baseline ×": 2, "vs previous ×": 2, "MFU": 3, "floor ×": 2,
                     "peak GiB": 2, "compile s": 1})


def best_stage(workload: str, root=None) -> str:
    """The fastest captured stage of the workload's run (the one the README quotes)."""
    return str(stage_table(workload, root=root)["step ms"].idxmin())


def peers(run: dict) -> dict:
    """The diffusers peers timed in a T2V run (label -> record with `timing`), none for other runs."""
    return {k: v for k, v in run.get("peers", {}).items() if isinstance(v, dict) and "timing" in v}


def best_peer(run: dict) -> str | None:
    """The label of the run's fastest diffusers peer, None without peers."""
    p = peers(run)
    return min(p, key=lambda k: p[k]["timing"]["median"]) if p else None


def commit_of(manifest: dict, run: dict | None = None) -> str:
    """The git commit a record was captured from, or "not recorded"."""
    return ((manifest.get("versions") or {}).get("git_commit") or ((run or {}).get("env") or {}).get("git_commit")
            or "not recorded")


def provenance(manifest: dict, width: int = 108) -> str:
    """Where a number comes from, as a short block of lines (none longer than `width`, never cut mid-word):
    workload and stage, run and commit; device and versions; what was timed and how."""
    v = manifest.get("versions") or {}
    lines = [f"{manifest['workload']} · {manifest['stage']} · run {manifest['run_id']} · commit "
             f"{commit_of(manifest)}",
             f"{manifest['device']} · torch {v.get('torch')} · CUDA {v.get('cuda')} · driver "
             f"{' '.join(dict.fromkeys(str(v.get('driver')).split()))}",  # a 2-GPU run recorded one line per GPU
             f"timed: {manifest['step']}; median of {manifest['timing']['n']} with CUDA events"]
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False)
                     for line in lines)


# -- the measured choices of the stages, in both capture formats ------------------------------------------------


def stage_choice(workload: str, stage: str, root=None) -> dict:
    """What a stage with a measured choice picked in the workload's run, and from what: {"options", "evidence",
    "recorded"}. Newer runs record it (`choice` in the manifest, `choices` in capture.json); for the older H100
    runs it is rebuilt from their fields: stage 05's kernel from capture.json's `ceilings` (the rates per kernel at
    the self- and cross-attention shapes), stage 06's GELU epilogue from the manifest's `fusion` and capture.json's
    `ffn_gelu`. `recorded` says which: "choice", "older fields", or "not measured" (a run from before the stage
    measured its choice: the options are what that run's stage did)."""
    run = load_run(workload, root)
    try:
        m = load_manifest(workload, stage, root)
    except MissingTraceError:  # applied on the way but not captured (720p's stage 5): the run may still record it
        check_stage(workload, stage)
        m = {}
    new = m.get("choice") or (run.get("choices") or {}).get(stage)
    if new is not None:
        return {"options": dict(new.get("options", {})), "evidence": dict(new.get("evidence", {})),
                "recorded": "choice"}
    if stage == "05_attention":
        ceil = run.get("ceilings") or {}
        forced = run.get("attention_backend_forced")
        if forced:
            return {"options": {"backend": forced}, "evidence": {"forced": True}, "recorded": "older fields"}
        rates = {shape: dict(ceil[key]) for shape, key in (("self", "attention"), ("cross", "attention_cross"))
                 if key in ceil}
        return {"options": {"backend": ceil.get("attention_backend")},
                "evidence": {"measured": True, "tflops": rates, "cross_share": ceil.get("attention_cross_share", 0.0)},
                "recorded": "older fields"}
    if stage == "06_fusion":
        fusion = m.get("fusion")
        if fusion is not None and "gelu_epilogue" in fusion and "ffn_gelu" in run:
            return {"options": {"gelu_epilogue": bool(fusion["gelu_epilogue"])},
                    "evidence": {"measured": True, "ffn_gelu": dict(run["ffn_gelu"])}, "recorded": "older fields"}
        return {"options": {"gelu_epilogue": False}, "evidence": {"measured": False}, "recorded": "not measured"}
    from ..stages import get_stage

    if get_stage(check_stage(workload, stage), workload).choose is None:
        raise ValueError(f"stage {stage} makes no choice: it has no options to pick")
    return {"options": {}, "evidence": {}, "recorded": "not measured"}


def attention_choice(workload: str, root=None) -> str | None:
    """The attention kernel stage 05 picked in the workload's run."""
    return stage_choice(workload, "05_attention", root)["options"].get("backend")


def gelu_choice(workload: str, root=None) -> dict:
    """Stage 06's GELU-epilogue choice in the workload's run: used (bool), measured (bool) and, where measured, the
    timings at the FFN shape (separate_ms, epilogue_ms, shape, relative_l2)."""
    c = stage_choice(workload, "06_fusion", root)
    timing = c["evidence"].get("ffn_gelu") or {}
    return {"used": bool(c["options"].get("gelu_epilogue")), "measured": bool(timing),
            "separate_ms": timing.get("separate_ms"), "epilogue_ms": timing.get("epilogue_ms"),
            "shape": timing.get("shape"), "relative_l2": timing.get("relative_l2")}


def choices_table(workloads, root=None) -> pd.DataFrame:
    """Per workload: the attention kernel stage 05 picked and whether stage 06 put GELU in the GEMM epilogue
    (with the two timings at the FFN shape where the run measured them)."""
    rows = []
    for w in workloads:
        g = gelu_choice(w, root)
        rows.append({"workload": w, "attention kernel (05)": attention_choice(w, root),
                     "GELU epilogue (06)": g["used"] if g["measured"] else "not measured (older run)",
                     "GEMM then GELU ms": g["separate_ms"], "GEMM with GELU epilogue ms": g["epilogue_ms"]})
    return pd.DataFrame(rows).set_index("workload").round(2)


def whole_model_compile(run: dict) -> dict | None:
    """The whole-model compile timed in the same run as stage 07's regional compile, or None: {"timing",
    "compile_s", "warmup_ms"} from capture.json's `alternatives` (newer runs) or `compile_whole_model` (older)."""
    alt = (run.get("alternatives") or {}).get("07_compile")
    if alt is not None and alt.get("label", "whole_model_compile") == "whole_model_compile":
        return {k: alt.get(k) for k in ("timing", "compile_s", "warmup_ms")}
    old = run.get("compile_whole_model")
    if old is not None:
        return {k: old.get(k) for k in ("timing", "compile_s", "warmup_ms")}
    return None


def first_block_vs_steady(manifest: dict) -> float | None:
    """A Matrix-Game-2 manifest's first block over its steady block (recorded by newer runs, computed for older)."""
    first = manifest.get("first_block")
    if not first:
        return None
    return first.get("vs_steady_block") or first["timing"]["median"] / manifest["timing"]["median"]


# -- several GPUs: a stage captured on every rank (sequence parallel) ----------------------------------------------

ALL_TO_ALL = re.compile(r"AllToAll|all_to_all|alltoall|SendRecv", re.I)  # NCCL runs all-to-all as grouped send/recv
KERNEL_TYPES = ["COMPUTATION", "COMMUNICATION", "MEMORY"]


def trace_ranks(analysis) -> list[int]:
    """The ranks whose traces a loaded stage folder holds (HTA reads the rank from each file's distributedInfo)."""
    return sorted(analysis.t.get_all_traces())


def kernel_type(name: str, cat: str = "kernel") -> str:
    """HTA's kernel type of one GPU event: COMMUNICATION (NCCL), MEMORY (memcpy, memset) or COMPUTATION."""
    from hta.utils.utils import get_kernel_type

    if cat in ("gpu_memcpy", "gpu_memset"):
        return "MEMORY"
    kind = get_kernel_type(name)
    return kind if kind in KERNEL_TYPES else "COMPUTATION"


def rank_kernel_types(analysis) -> pd.DataFrame:
    """Per rank, GPU time by HTA's kernel type: communication, computation and memory kernels, ms and % of the rank's
    kernel time (sums of kernel durations; overlapping kernels count in full)."""
    rows = {}
    for r in trace_ranks(analysis):
        k = kernels(analysis, r)
        types = [kernel_type(n, c) for n, c in zip(k["name"], k["cat"])]
        ms = k["dur"].groupby(pd.Series(types, index=k.index, dtype=object)).sum().reindex(KERNEL_TYPES).fillna(0) / 1e3
        total = ms.sum()
        rows[r] = {**{f"{t.lower()} ms": ms[t] for t in KERNEL_TYPES},
                   **{f"{t.lower()} %": 100 * ms[t] / total if total else np.nan for t in KERNEL_TYPES}}
    out = pd.DataFrame(rows).T
    out.index.name = "rank"
    return out.round(2)


def comm_comp_overlap(analysis) -> pd.DataFrame:
    """HTA's communication/computation overlap per rank: the share of communication-kernel time during which a
    computation kernel ran too (NaN for a rank without communication kernels, e.g. a CPU capture)."""
    rows = {}
    for r in trace_ranks(analysis):
        if not len(kernels(analysis, r)):
            rows[r] = np.nan
    if len(rows) < len(trace_ranks(analysis)):
        with warnings.catch_warnings():  # 0/0 on a rank without communication kernels; HTA's pandas deprecations
            warnings.simplefilter("ignore")
            df = analysis.get_comm_comp_overlap(visualize=False)
        rows.update({int(r): v for r, v in zip(df["rank"], df["comp_comm_overlap_pctg"]) if int(r) not in rows})
    out = pd.DataFrame({"comm/comp overlap %": pd.Series(rows, dtype=float)}).sort_index()
    out.index.name = "rank"
    return out


def step_windows(analysis, iteration: int | None = None) -> pd.DataFrame:
    """Per rank, the GPU span of one profiled step (the first, or `iteration`): the kernels launched inside its
    ProfilerStep, from the first start to the last end, in µs on the clock common to all ranks (`ts`)."""
    rows = {}
    for r in trace_ranks(analysis):
        k = kernels(analysis, r)
        ann = annotations(analysis, True, r)
        steps = ann[ann["name"].str.fullmatch(r"ProfilerStep#\d+")]
        if iteration is not None:
            steps = steps[steps["iteration"] == iteration]
        steps = steps.head(1)
        w = k[inside(k["launch_ts"], steps)] if len(steps) else k.iloc[:0]
        rows[r] = {"start_ts": w["ts"].min() if len(w) else np.nan,
                   "end_ts": (w["ts"] + w["dur"]).max() if len(w) else np.nan, "kernels": len(w)}
    out = pd.DataFrame(rows).T
    out.index.name = "rank"
    return out


def all_to_all_share(analysis, iteration: int | None = None) -> pd.DataFrame:
    """Per rank, one profiled step: its GPU span, the all-to-all kernels' time in it (NCCL's AllToAll or grouped
    SendRecv kernels), the other communication (the output's all-gather), computation, and the all-to-all share
    of the span. A communication kernel runs from its launch until every rank has arrived, so a rank that waits
    for a slower one shows the wait inside its all-to-all time."""
    windows = step_windows(analysis, iteration)
    rows = {}
    for r in trace_ranks(analysis):
        k = kernels(analysis, r)
        start, end = windows.loc[r, "start_ts"], windows.loc[r, "end_ts"]
        w = k[(k["ts"] >= start) & (k["ts"] + k["dur"] <= end)]
        comm = np.array([kernel_type(n, c) == "COMMUNICATION" for n, c in zip(w["name"], w["cat"])], dtype=bool)
        a2a = comm & w["name"].astype(str).str.contains(ALL_TO_ALL).to_numpy(dtype=bool)
        span = end - start
        rows[r] = {"step span ms": span / 1e3, "all-to-all ms": w.loc[a2a, "dur"].sum() / 1e3,
                   "other communication ms": w.loc[comm & ~a2a, "dur"].sum() / 1e3,
                   "computation and memory ms": w.loc[~comm, "dur"].sum() / 1e3,
                   "all-to-all calls": int(a2a.sum()),
                   "all-to-all % of step": 100 * w.loc[a2a, "dur"].sum() / span if span > 0 else np.nan}
    out = pd.DataFrame(rows).T
    out["all-to-all calls"] = out["all-to-all calls"].astype(int)
    out.index.name = "rank"
    return out.round(2)


def rank_timelines(analysis, iteration: int | None = None) -> dict[int, tuple[pd.DataFrame, tuple[float, float]]]:
    """Per rank, its kernels and its step's window on one time axis (µs from the earliest rank's step start), for
    plots.rank_timelines. The kernels carry `category` (GEMM, attention, ...) and `kernel_type`."""
    windows = step_windows(analysis, iteration)
    t0 = windows["start_ts"].min()
    out = {}
    for r in trace_ranks(analysis):
        k = kernels(analysis, r).copy()
        k["start_us"], k["end_us"] = k["ts"] - t0, k["ts"] + k["dur"] - t0
        k["kernel_type"] = [kernel_type(n, c) for n, c in zip(k["name"], k["cat"])]
        out[r] = (k, (windows.loc[r, "start_ts"] - t0, windows.loc[r, "end_ts"] - t0))
    return out


class _NcclKernelNames:
    """HTA's symbol table with NCCL's kernel names as HTA's straggler analysis expects them: it looks for
    `ncclKernel*` (NCCL before 2.19), and newer NCCL names the same kernels `ncclDevKernel*`."""

    def __init__(self, table):
        self.table = table

    @staticmethod
    def _old(name: str) -> str:
        return re.sub(r"^ncclDevKernel", "ncclKernel", name)

    def get_sym_table(self):
        return [self._old(s) for s in self.table.get_sym_table()]

    def get_sym_id_map(self):
        return {self._old(s): i for s, i in self.table.get_sym_id_map().items()}


def _late_start_nccl(df, symbol_table, n_stragglers, visualize=False):
    """HTA's default straggler metric (the latest start of the dominant collective) over either NCCL naming."""
    from hta.analyzers.straggler import find_stragglers_with_late_start_comm_kernels

    return find_stragglers_with_late_start_comm_kernels(df, _NcclKernelNames(symbol_table), n_stragglers, visualize)


def stragglers(workload: str, stage: str, root=None) -> pd.DataFrame:
    """Per rank: its step time (median, CUDA events) and whether it is the slowest, from the manifest; and whether
    HTA names it a potential straggler (the rank whose last long NCCL kernel of a step starts latest, i.e. arrives
    last at the collective). HTA counts only collectives of at least 1 % of a step: where there is none (a CPU
    capture has no NCCL kernel; Ulysses' all-to-alls are many and short), its column says "no candidate"."""
    m = load_manifest(workload, stage, root)
    if "rank_step_ms" not in m:
        raise ValueError(f"{workload}/{stage} was captured on one GPU: no ranks to compare (a stage captured on "
                         f"every rank, such as 09_sequence_parallel, has them)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = set(load_trace(workload, stage, root).get_potential_stragglers(
                num_candidates=1, straggler_identification_impl=_late_start_nccl))
    except (ValueError, KeyError, IndexError):
        found = None
    rows = {r: {"step ms": ms, "slowest (manifest)": r == m["slowest_rank"],
                "HTA potential straggler": "no candidate" if not found else r in found}
            for r, ms in enumerate(m["rank_step_ms"])}
    out = pd.DataFrame(rows).T
    out["step ms"] = out["step ms"].astype(float).round(1)
    out.index.name = "rank"
    return out


def sp_workloads(base: str, root=None) -> dict[int, str]:
    """The captured sequence-parallel runs of a workload ({GPUs: name}, e.g. {2: "t2v-a14b-720p-sp2"}): the
    `<base>-sp<N>` workloads that have a capture under root."""
    from ..configs import WORKLOADS

    found = {}
    for name, w in WORKLOADS.items():
        if name == f"{base}-sp{w.world_size}" and (_folder(name, None, root) / RUN_SUMMARY).exists():
            found[w.world_size] = name
    return dict(sorted(found.items()))


def scaling_table(base: str, stage: str = "09_sequence_parallel", root=None, official: dict | None = None
                  ) -> pd.DataFrame:
    """Step time against GPU count for a workload, from whichever `<base>-sp<N>` runs are captured: one row for one
    GPU (the single-GPU stage that the smallest run captured beside the parallel one) and one per run. Columns: the
    run, step ms (the slowest rank's), speedup over one GPU of the same run, parallel efficiency (speedup / GPUs),
    the projected video (T5 + every step + VAE, s), and an outside time for the same GPU count where `official`
    ({GPUs: s}, e.g. wanopt.targets.REFERENCE's Wan2.2 table) has one. Each run's speedup is over its own
    single-GPU stage."""
    runs = sp_workloads(base, root)
    if not runs:
        raise MissingTraceError(f"no sequence-parallel run of {base} under {Path(root or TRACES)}: capture one with "
                                f"`torchrun --nproc-per-node 2 -m wanopt capture --workload {base}-sp2 --stages "
                                f"08_cuda_graphs,{stage}`")
    official = official or {}
    rows = []
    for n, name in runs.items():
        m = load_manifest(name, stage, root)
        if not rows and m.get("single_gpu"):
            one = load_manifest(name, m["single_gpu"]["stage"], root)
            rows.append({"GPUs": 1, "run": f"{name} · {one['stage']}", "step ms": one["timing"]["median"],
                         "speedup ×": 1.0, "efficiency": 1.0,
                         "video s (projected)": (one.get("projection") or {}).get("total_s"),
                         "official Wan2.2 s": official.get(1)})
        speedup = m.get("speedup_vs_single_gpu")
        rows.append({"GPUs": n, "run": f"{name} · {stage}", "step ms": m["timing"]["median"], "speedup ×": speedup,
                     "efficiency": speedup / n if speedup else np.nan,
                     "video s (projected)": (m.get("projection") or {}).get("total_s"),
                     "official Wan2.2 s": official.get(n)})
    out = pd.DataFrame(rows).set_index("GPUs")
    return out.astype({"step ms": float, "speedup ×": float, "efficiency": float, "video s (projected)": float,
                       "official Wan2.2 s": float}).round({"step ms": 1, "speedup ×": 2, "efficiency": 2,
                                                           "video s (projected)": 1, "official Wan2.2 s": 1})


def sp_comparison(workloads, stage: str = "09_sequence_parallel", root=None) -> pd.DataFrame:
    """One row per sequence-parallel run: the single-GPU stage captured in the same run and its step time, the
    GPUs, the step time on them (the slowest rank's) and every rank's, the slowest rank, the speedup, the parallel
    efficiency (speedup / GPUs), the error of the outputs against the single-GPU stage's with its tolerance, and
    the largest peak memory of a rank."""
    rows = []
    for w in workloads:
        m = load_manifest(w, stage, root)
        one, err = m.get("single_gpu") or {}, m["error_vs_single_gpu"]
        n, speedup = m["world_size"], m.get("speedup_vs_single_gpu")
        rows.append({"workload": w, "run": m["run_id"], "single-GPU stage": one.get("stage"),
                     "1 GPU ms": one.get("step_ms"), "GPUs": n, f"{stage} ms": m["timing"]["median"],
                     "ms per rank": ", ".join(f"{t:.1f}" for t in m["rank_step_ms"]),
                     "slowest rank": m["slowest_rank"], "speedup ×": speedup,
                     "efficiency": speedup / n if speedup else np.nan, "error vs 1 GPU": err["value"],
                     "tolerance": err["tolerance"], "peak GiB (max rank)": m["peak_memory_gib"]})
    return pd.DataFrame(rows).set_index("workload").round({"1 GPU ms": 1, f"{stage} ms": 1, "speedup ×": 2,
                                                          "efficiency": 2, "peak GiB (max rank)": 2})
