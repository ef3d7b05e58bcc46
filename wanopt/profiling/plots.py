"""Matplotlib figures for the notebooks: kernel timelines, category bars, speedup waterfalls.

PNG only (nbval never compares PNG bytes but does compare SVG text), fixed sizes and dpi, colours fixed per
kernel category so that every notebook reads the same way.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from .analysis import CATEGORIES

COLORS = {"GEMM": "#4C72B0", "attention": "#DD8452", "norm/elementwise": "#55A868", "cast/copy": "#C44E52",
          "memcpy H2D/D2H": "#8172B3", "other": "#937860"}
DPI = 100


def _legend(ax, categories=CATEGORIES, **kw):
    ax.legend(handles=[Patch(color=COLORS[c], label=c) for c in categories], ncol=len(categories), fontsize=8,
              frameon=False, **kw)


def kernel_timeline(k: pd.DataFrame, window: tuple[float, float], title: str = "", ax=None, x_unit: str = "ms"):
    """Gantt chart of the GPU events in [start, end) µs, one row per stream, coloured by category."""
    start, end = window
    w = k[(k["end_us"] > start) & (k["start_us"] < end)]
    streams = sorted(w["stream"].unique())
    scale = 1e3 if x_unit == "ms" else 1.0
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 1.2 + 0.5 * max(len(streams), 1)), dpi=DPI)
    for row, stream in enumerate(streams):
        s = w[w["stream"] == stream]
        for cat, g in s.groupby("category"):
            spans = [((a - start) / scale, max(d, 0.5) / scale) for a, d in zip(g["start_us"], g["dur"])]
            ax.broken_barh(spans, (row - 0.4, 0.8), color=COLORS[cat], linewidth=0)
    ax.set_yticks(range(len(streams)), [f"stream {s}" for s in streams])
    ax.set_xlim(0, (end - start) / scale)
    ax.set_xlabel(f"time ({x_unit}) from the start of the window")
    ax.set_title(title, fontsize=10, loc="left")
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.45 if len(streams) < 2 else -0.3))
    return ax


def timelines(panels: list[tuple[pd.DataFrame, tuple[float, float], str]], x_unit: str = "ms"):
    """Several timelines stacked on one time axis (e.g. the same block before and after a stage)."""
    longest = max(end - start for _, (start, end), _ in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 1.1 + 1.0 * len(panels)), dpi=DPI, sharex=True,
                             squeeze=False)
    scale = 1e3 if x_unit == "ms" else 1.0
    for ax, (k, (start, end), title) in zip(axes[:, 0], panels):
        w = k[(k["end_us"] > start) & (k["start_us"] < end)]
        for cat, g in w.groupby("category"):
            spans = [((a - start) / scale, max(d, 0.5) / scale) for a, d in zip(g["start_us"], g["dur"])]
            ax.broken_barh(spans, (-0.4, 0.8), color=COLORS[cat], linewidth=0)
        ax.set_yticks([])
        ax.set_title(f"{title}: {(end - start) / scale:.1f} {x_unit}", fontsize=9, loc="left")
        ax.set_xlim(0, longest / scale)
    axes[-1, 0].set_xlabel(f"time ({x_unit}) from the start of the window")
    _legend(axes[-1, 0], loc="upper center", bbox_to_anchor=(0.5, -0.6))
    fig.tight_layout()
    return fig


def category_bars(breakdowns: dict[str, pd.DataFrame], title: str = "", unit: str = "ms"):
    """Stacked horizontal bars, one per stage, of GPU time per category (category_breakdown() frames)."""
    labels = list(breakdowns)
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.42 * len(labels)), dpi=DPI)
    left = [0.0] * len(labels)
    for cat in CATEGORIES:
        vals = [float(breakdowns[s].loc[cat, unit]) if cat in breakdowns[s].index else 0.0 for s in labels]
        ax.barh(labels, vals, left=left, color=COLORS[cat], label=cat)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel(f"GPU kernel time per profiled step ({unit})")
    ax.set_title(title, fontsize=10, loc="left")
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(labels) > 3 else -0.5))
    fig.tight_layout()
    return fig


def waterfall(step_ms: pd.Series, title: str = "", unit: str = "ms"):
    """Step time from the first stage to the last: each stage's change as a floating bar (green: faster)."""
    names = list(step_ms.index)
    vals = [float(v) for v in step_ms.values]
    fig, ax = plt.subplots(figsize=(11, 3.6), dpi=DPI)
    ax.bar(0, vals[0], color="#777777")
    ax.text(0, vals[0], f"{vals[0]:.0f}", ha="center", va="bottom", fontsize=8)
    for i in range(1, len(vals)):
        lo, hi = sorted((vals[i - 1], vals[i]))
        faster = vals[i] <= vals[i - 1]
        ax.bar(i, hi - lo, bottom=lo, color="#55A868" if faster else "#C44E52")
        ax.text(i, hi, f"{vals[i - 1] / vals[i]:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.bar(len(vals), vals[-1], color="#4C72B0")
    ax.text(len(vals), vals[-1], f"{vals[-1]:.0f}\n{vals[0] / vals[-1]:.2f}× total", ha="center", va="bottom",
            fontsize=8)
    ax.set_xticks(range(len(vals) + 1), names + ["final"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"step time ({unit})")
    ax.set_ylim(0, max(vals) * 1.18)
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig
