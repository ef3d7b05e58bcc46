"""Trace analysis on Holistic Trace Analysis (PyPI `traceinsight`, `import hta`), returning pandas DataFrames.

Everything here reads committed traces and manifests; nothing needs a GPU. HTA's own logging goes to stderr with
timings and PIDs, so it is silenced here (the notebooks run under strict nbval).

    run = load_run("t2v-1.3b-480p")                  # capture.json of the run
    m = load_manifest("t2v-1.3b-480p", "00_baseline")
    a = load_trace("t2v-1.3b-480p", "00_baseline")   # an HTA TraceAnalysis
    kernels(a)                                       # one row per GPU kernel / memcpy / memset, with a category
    category_breakdown(a)                            # GEMM, attention, norm/elementwise, cast/copy, memcpy, other
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

TRACES = Path(__file__).resolve().parents[2] / "traces"
TRACE_NAME = "rank0.pt.trace.json.gz"
CATEGORIES = ["GEMM", "attention", "norm/elementwise", "cast/copy", "memcpy H2D/D2H", "other"]


class MissingTraceError(FileNotFoundError):
    pass


def quiet():
    """Silence HTA's INFO logging (timings and PIDs on stderr would break strict nbval)."""
    logging.getLogger("hta").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="hta")


def _folder(workload: str, stage: str | None = None, root=None) -> Path:
    folder = Path(root or TRACES) / workload
    return folder / stage if stage else folder


def _missing(path: Path, workload: str, stage: str | None) -> MissingTraceError:
    stages = f" --stages {stage}" if stage else ""
    return MissingTraceError(
        f"{path} is missing. The notebooks read traces captured on an H100 and committed under traces/; "
        f"check out the full repository, or capture it on a GPU with "
        f"`python -m wanopt capture --workload {workload}{stages} --out traces`.")


def load_manifest(workload: str, stage: str, root=None) -> dict:
    path = _folder(workload, stage, root) / "manifest.json"
    if not path.exists():
        raise _missing(path, workload, stage)
    return json.loads(path.read_text())


def load_run(workload: str, root=None) -> dict:
    """The capture run's summary: ceilings, peers, T5/VAE timings, per-stage rows."""
    path = _folder(workload, None, root) / "capture.json"
    if not path.exists():
        raise _missing(path, workload, None)
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=16)
def _load(trace_dir: str):
    quiet()
    from hta.trace_analysis import TraceAnalysis

    # the profiled steps are the last ones in the file: HTA would drop the last ProfilerStep by default
    return TraceAnalysis(trace_dir=trace_dir, include_last_profiler_step=True)


def load_trace(workload: str, stage: str, root=None):
    """HTA TraceAnalysis of traces/<workload>/<stage>/ (cached per folder)."""
    folder = _folder(workload, stage, root)
    if not (folder / TRACE_NAME).exists():
        raise _missing(folder / TRACE_NAME, workload, stage)
    return _load(str(folder.resolve()))


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


def short_kernel_name(name: str, limit: int = 60) -> str:
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
def kernels(analysis) -> pd.DataFrame:
    """One row per GPU event (kernel, memcpy, memset) of the trace: name, short name, category, times in µs
    relative to the trace's first GPU event, stream, iteration, and the host time of its launch."""
    t = analysis.t.get_trace(0)
    sym = analysis.t.symbol_table.get_sym_table()
    cats = t["cat"].map(lambda i: sym[i])
    gpu = t[(t["stream"] >= 0) & cats.isin(["kernel", "gpu_memcpy", "gpu_memset"])].copy()
    gpu["name"] = gpu["name"].map(lambda i: sym[i])
    gpu["cat"] = cats[gpu.index]
    ts_by_index = t.set_index("index")["ts"]  # index_correlation points at the launching runtime event
    gpu["launch_ts"] = ts_by_index.reindex(gpu["index_correlation"]).to_numpy()
    gpu["dur"] = gpu["dur"].clip(lower=0)  # the profiler reports a few memsets/memcpys with dur -1
    gpu["category"] = [categorize(n, c) for n, c in zip(gpu["name"], gpu["cat"])]
    gpu["short_name"] = gpu["name"].map(short_kernel_name)
    t0 = gpu["ts"].min()
    gpu["start_us"] = gpu["ts"] - t0
    gpu["end_us"] = gpu["start_us"] + gpu["dur"]
    cols = ["short_name", "category", "start_us", "dur", "end_us", "stream", "iteration", "ts", "launch_ts", "name",
            "cat", "correlation", "bytes"]
    return gpu[cols].sort_values("ts").reset_index(drop=True)


@_cached
def annotations(analysis, cpu: bool = True) -> pd.DataFrame:
    """record_function labels of the trace (CPU side by default): name, ts, end, dur, tid, iteration."""
    t = analysis.t.get_trace(0)
    sym = analysis.t.symbol_table.get_sym_table()
    cats = t["cat"].map(lambda i: sym[i])
    want = "user_annotation" if cpu else "gpu_user_annotation"
    ann = t[cats == want].copy()
    ann["name"] = ann["name"].map(lambda i: sym[i])
    ann["end"] = ann["ts"] + ann["dur"]  # HTA normalises ts but leaves its own `end` column absolute
    return ann[["name", "ts", "dur", "end", "tid", "iteration"]].sort_values("ts").reset_index(drop=True)


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
        f"share of GPU time in kernels < {short_kernel_us:g} µs, %": 100 * df.loc[short, "gpu_duration"].sum()
        / max(df["gpu_duration"].sum(), 1),
        "median kernel µs": float(df["gpu_duration"].median()),
        "median CPU launch µs": float(df["cpu_duration"].median()),
        "median launch delay µs": float(df["launch_delay"].median()),
        f"launches delayed > {long_delay_us:g} µs": int((df["launch_delay"] > long_delay_us).sum()),
    }
    return pd.DataFrame({"value": rows}).round(2)


def host_syncs(analysis) -> pd.DataFrame:
    """Host-side synchronising CUDA runtime calls (cudaStreamSynchronize, cudaDeviceSynchronize, blocking
    cudaMemcpy) per profiled step (iteration): count and total host time blocked. (The profiler also records
    each one as a "Stream Sync" marker; those are not counted twice.)"""
    t = analysis.t.get_trace(0)
    sym = analysis.t.symbol_table.get_sym_table()
    names = t["name"].map(lambda i: sym[i])
    cats = t["cat"].map(lambda i: sym[i])
    sync = t[(cats == "cuda_runtime") & names.str.contains(r"Synchronize|^cudaMemcpy$", regex=True)]
    sync = sync.assign(name=names[sync.index])
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
    k = kernels(analysis)
    ann = annotations(analysis)
    spans = ann[ann["name"] == label]
    if len(spans) <= occurrence:
        raise KeyError(f"label {label!r} occurs {len(spans)} time(s) in this trace; labels seen: "
                       f"{', '.join(sorted(set(ann['name']))[:30])}")
    span = spans.iloc[occurrence]
    inside = k[(k["launch_ts"] >= span["ts"]) & (k["launch_ts"] <= span["end"])]
    if inside.empty:
        raise KeyError(f"no GPU work was launched inside {label!r} #{occurrence}")
    return float(inside["start_us"].min()), float(inside["end_us"].max())


# -- comparing two stages ---------------------------------------------------------------------------------------


def trace_diff(workload: str, before: str, after: str, root=None, top: int = 12) -> pd.DataFrame:
    """HTA TraceDiff of GPU kernels between two stages (one profiled step each), by short kernel name:
    counts and total µs before and after, sorted by the change in time."""
    quiet()
    from hta.trace_diff import DeviceType, LabeledTrace, TraceDiff

    dirs = []
    for stage in (before, after):
        folder = _folder(workload, stage, root)
        if not (folder / TRACE_NAME).exists():
            raise _missing(folder / TRACE_NAME, workload, stage)
        dirs.append(str(folder.resolve()))
    df = TraceDiff.compare_traces(LabeledTrace(before, trace_dir=dirs[0]), LabeledTrace(after, trace_dir=dirs[1]),
                                  device_type=DeviceType.GPU, use_short_name=True)
    df = df[[f"{before}_counts", f"{before}_total_duration", f"{after}_counts", f"{after}_total_duration",
             "diff_duration"]].copy()
    df.columns = [f"{before} calls", f"{before} ms", f"{after} calls", f"{after} ms", "Δ ms"]
    for c in (f"{before} ms", f"{after} ms", "Δ ms"):
        df[c] = df[c] / 1e3
    df = df.reindex(df["Δ ms"].abs().sort_values(ascending=False).index).head(top)
    df.index = [str(i)[:60] for i in df.index]
    df.index.name = "kernel"
    return df.round(2)


def category_diff(workload: str, before: str, after: str, root=None) -> pd.DataFrame:
    """GPU kernel time per category in the first profiled step of each of two stages, and the difference (ms).
    (An offload baseline's trace also holds the expert-switch step; the first step is the normal one.)"""
    def first_step(stage):
        k = kernels(load_trace(workload, stage, root))
        return category_breakdown(k[k["iteration"] == k.loc[k["iteration"] > 0, "iteration"].min()])["ms"]

    a, b = first_step(before), first_step(after)
    out = pd.DataFrame({before: a, after: b})
    out["Δ ms"] = out[after] - out[before]
    out.loc["total"] = out.sum()
    return out.round(1)


# -- manifests as tables ----------------------------------------------------------------------------------------


def stage_table(workload: str, stages=None, root=None) -> pd.DataFrame:
    """One row per captured stage of a workload: step time, speedups, MFU, kernel-floor ratio, peak memory,
    error against the baseline, compile time."""
    folder = _folder(workload, None, root)
    if not folder.exists():
        raise _missing(folder, workload, None)
    names = stages or [p.name for p in folder.iterdir() if (p / "manifest.json").exists()]
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


def provenance(manifest: dict) -> str:
    """One line: where a number comes from."""
    v = manifest["versions"]
    return (f"{manifest['device']}, torch {v['torch']}, CUDA {v['cuda']}, driver {v['driver']}, run "
            f"{manifest['run_id']}; timed: {manifest['step']}; median of {manifest['timing']['n']} with CUDA events")
