"""Matplotlib figures for the notebooks: kernel timelines, category bars, speedup waterfalls, time budgets.

PNG only (nbval never compares PNG bytes but does compare SVG text), fixed sizes and dpi, colours fixed per
kernel category so that every notebook reads the same way. Figures use matplotlib's constrained layout, and the
category legend sits outside the axes, below everything (never over a tick label or the axis label).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from .analysis import CATEGORIES

COLORS = {"GEMM": "#4C72B0", "attention": "#DD8452", "norm/elementwise": "#55A868", "cast/copy": "#C44E52",
          "memcpy H2D/D2H": "#8172B3", "other": "#937860", "communication": "#222222"}
DPI = 100
WIDTH = 11.0


def _figure(height: float, rows: int = 1, **kw):
    return plt.subplots(rows, 1, figsize=(WIDTH, height), dpi=DPI, layout="constrained", squeeze=False, **kw)


def _legend(fig, categories=CATEGORIES, extra=()):
    """The category legend, outside the axes at the bottom of the figure."""
    handles = [Patch(color=COLORS[c], label=c) for c in categories] + list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)


def _bars(ax, k: pd.DataFrame, window: tuple[float, float], row: float, scale: float):
    start, end = window
    w = k[(k["end_us"] > start) & (k["start_us"] < end)]
    for cat, g in w.groupby("category"):
        spans = [((a - start) / scale, max(d, 0.5) / scale) for a, d in zip(g["start_us"], g["dur"])]
        ax.broken_barh(spans, (row - 0.4, 0.8), color=COLORS[cat], linewidth=0)


def kernel_timeline(k: pd.DataFrame, window: tuple[float, float], title: str = "", x_unit: str = "ms",
                    spans: dict | None = None, marks=None, marks_label: str = ""):
    """Gantt chart of the GPU events in [start, end) µs, one row per stream, coloured by category. Optional:
    `spans` {name: (start_us, end_us)} shaded and named in a band above the kernels (e.g. the modules of a block),
    `marks` (start µs of events to tick in black, e.g. device-to-host copies). Returns the axes."""
    start, end = window
    w = k[(k["end_us"] > start) & (k["start_us"] < end)]
    streams = sorted(w["stream"].unique()) or [0]
    scale = 1e3 if x_unit == "ms" else 1.0
    fig, axes = _figure(2.2 + 0.5 * len(streams) + (0.5 if spans else 0.0))
    ax = axes[0, 0]
    for row, stream in enumerate(streams):
        _bars(ax, w[w["stream"] == stream], window, row, scale)
    top = len(streams) - 0.5
    if spans:
        for i, (name, (lo, hi)) in enumerate(spans.items()):
            ax.axvspan((lo - start) / scale, (hi - start) / scale, ymin=0.0, ymax=1.0, color="#EEEEEE" if i % 2 else
                       "#DDDDDD", zorder=0, linewidth=0)
            ax.text((lo + hi) / 2 / scale - start / scale, top + 0.35, name, ha="center", va="center", fontsize=8)
        top += 0.7
    extra = []
    if marks is not None and len(marks):
        ax.vlines([(m - start) / scale for m in marks], -0.5, len(streams) - 0.5, color="black", lw=0.6)
        extra = [plt.Line2D([], [], color="black", lw=0.8, label=marks_label or "marks")]
    ax.set_ylim(-0.5, top)
    ax.set_yticks(range(len(streams)), [f"stream {s}" for s in streams])
    ax.set_xlim(0, (end - start) / scale)
    ax.set_xlabel(f"time ({x_unit}) from the start of the window")
    ax.set_title(title, fontsize=10, loc="left")
    _legend(fig, extra=extra)
    return ax


def timelines(panels: list[tuple[pd.DataFrame, tuple[float, float], str]], x_unit: str = "ms", title: str = ""):
    """Several timelines stacked on one time axis (e.g. the same block before and after a stage)."""
    longest = max(end - start for _, (start, end), _ in panels)
    fig, axes = _figure(1.6 + 1.0 * len(panels) + (0.3 if title else 0.0), rows=len(panels), sharex=True)
    scale = 1e3 if x_unit == "ms" else 1.0
    for ax, (k, (start, end), label) in zip(axes[:, 0], panels):
        _bars(ax, k, (start, end), 0, scale)
        ax.set_yticks([])
        ax.set_title(f"{label}: {(end - start) / scale:.1f} {x_unit}", fontsize=9, loc="left")
        ax.set_xlim(0, longest / scale)
    axes[-1, 0].set_xlabel(f"time ({x_unit}) from the start of the window")
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    _legend(fig)
    return fig


def category_bars(breakdowns: dict[str, pd.DataFrame], title: str = "", unit: str = "ms"):
    """Stacked horizontal bars, one per label, of GPU time per category (category_breakdown() frames)."""
    labels = list(breakdowns)
    fig, axes = _figure(1.9 + 0.42 * len(labels))
    ax = axes[0, 0]
    left = [0.0] * len(labels)
    for cat in CATEGORIES:
        vals = [float(breakdowns[s].loc[cat, unit]) if cat in breakdowns[s].index else 0.0 for s in labels]
        ax.barh(labels, vals, left=left, color=COLORS[cat], label=cat)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel(f"GPU kernel time ({unit})")
    ax.set_title(title, fontsize=10, loc="left")
    _legend(fig)
    return fig


def waterfall(step_ms: pd.Series, title: str = "", unit: str = "ms", final: str | None = None,
              labels: dict | None = None):
    """Step time from the first stage on: the first bar whole, each later stage's change as a floating bar (green:
    faster, red: slower) with its speedup over the bar before, and a last bar for `final` (default: the fastest
    stage) with its speedup over the first. `labels` renames tick labels (e.g. to say that a bar spans several
    stages)."""
    names = list(step_ms.index)
    vals = [float(v) for v in step_ms.values]
    final = final if final is not None else str(step_ms.idxmin())
    f = float(step_ms[final])
    fig, axes = _figure(3.9)
    ax = axes[0, 0]
    ax.bar(0, vals[0], color="#777777")
    ax.text(0, vals[0], f"{vals[0]:.0f}", ha="center", va="bottom", fontsize=8)
    for i in range(1, len(vals)):
        lo, hi = sorted((vals[i - 1], vals[i]))
        faster = vals[i] <= vals[i - 1]
        ax.bar(i, max(hi - lo, vals[0] * 0.002), bottom=lo, color="#55A868" if faster else "#C44E52")
        ax.text(i, hi, f"{vals[i - 1] / vals[i]:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.bar(len(vals), f, color="#4C72B0")
    ax.text(len(vals), f, f"{f:.0f}\n{vals[0] / f:.2f}× total", ha="center", va="bottom", fontsize=8)
    ticks = [(labels or {}).get(n, n) for n in names] + [f"final: {final}\n(fastest)" if final == step_ms.idxmin()
                                                         else f"final: {final}"]
    ax.set_xticks(range(len(vals) + 1), ticks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"step time ({unit})")
    ax.set_ylim(0, max(vals) * 1.2)
    ax.set_title(title, fontsize=10, loc="left")
    return fig


def budget_bar(parts: pd.Series, colors: list[str], markers: dict | None = None, title: str = "",
               xlabel: str = "ms", row_label: str = "", xmax: float | None = None):
    """One horizontal bar split into named parts (e.g. where a block's milliseconds go), with dashed vertical
    markers {label: x} (a floor, a target, a claim) and a legend of the parts below the axes."""
    fig, axes = _figure(3.2)
    ax = axes[0, 0]
    left = 0.0
    for (name, v), colour in zip(parts.items(), colors):
        ax.barh(0, v, height=0.5, left=left, color=colour, label=f"{name}: {v:.0f}")
        left += v
    right = xmax or max([left, *(markers or {}).values()]) * 1.02
    for i, (label, x) in enumerate((markers or {}).items()):
        ax.axvline(x, color="black", ls="--", lw=0.8)
        near_edge = x > 0.8 * right  # label on the inner side of the line, inside the axes
        ax.text(x, 0.36 + 0.1 * (i % 2), f"{label} " if near_edge else f" {label}", ha="right" if near_edge else "left",
                va="center", fontsize=8)
    ax.set_ylim(-0.45, 0.6)
    ax.set_yticks([0], [row_label])
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, right)
    ax.set_title(title, fontsize=10, loc="left")
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def rank_timelines(per_rank: dict, title: str = "", x_unit: str = "ms"):
    """The ranks of one sequence-parallel step on one time axis, a row per rank (analysis.rank_timelines: each
    rank's kernels and its step window, µs from the earliest rank's start), each rank with two lanes: its
    communication kernels (NCCL, black) under every other kernel (all streams, by category). Where one rank's
    all-to-all starts early and runs long, it waits for the other rank."""
    ranks = sorted(per_rank)
    start = min(w[0] for _, w in per_rank.values())
    end = max(w[1] for _, w in per_rank.values())
    if not end > start:  # no GPU kernel in any rank's step (a capture on CPUs): empty rows, said so
        start, end = 0.0, 1.0
        title = (title + " " if title else "") + "(no GPU kernels in these traces: a CPU capture)"
    scale = 1e3 if x_unit == "ms" else 1.0
    fig, axes = _figure(1.6 + 1.1 * len(ranks) + (0.3 if title else 0.0), rows=len(ranks), sharex=True)
    for ax, r in zip(axes[:, 0], ranks):
        k, (lo, hi) = per_rank[r]
        comm = k["kernel_type"] == "COMMUNICATION"
        _bars(ax, k[~comm], (start, end), 1, scale)
        _bars(ax, k[comm].assign(category="communication"), (start, end), 0, scale)
        ax.set_ylim(-0.5, 1.5)
        ax.set_yticks([0, 1], ["NCCL", "other kernels"], fontsize=8)
        ax.set_title(f"rank {r}: step {(hi - lo) / scale:.1f} {x_unit}", fontsize=9, loc="left")
        ax.set_xlim(0, (end - start) / scale)
    axes[-1, 0].set_xlabel(f"time ({x_unit}) from the first rank's start of the step")
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    _legend(fig, categories=[*CATEGORIES, "communication"])
    return fig
