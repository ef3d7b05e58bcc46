"""Notebook defaults: quiet libraries, PNG figures, readable tables.

nbval compares every cell's stdout, stderr and text/html against the committed outputs, so a notebook must print
the same thing on every run: no timings of its own, no log lines with PIDs or temp paths, no progress bars.

Tables: every DataFrame a notebook shows goes through `tidy` (registered with IPython by `setup`): yes/no for
booleans, "—" for missing values, whole numbers without decimals, no "-0", small numbers as 1e-06 rather than a
column in scientific notation. The functions of analysis and report return plain frames (NaN, bools, floats) for
code and tests; only the display changes.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import matplotlib
import numpy as np
import pandas as pd

from . import analysis

QUIET_LOGGERS = ("hta", "torch._dynamo", "torch._inductor", "torch.utils._sympy", "diffusers", "transformers",
                 "torch._logging")
DECIMALS = 3  # at most, per column; fewer where every value of the column needs fewer
MISSING = "—"


def _is_missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _decimals(v: float, cap: int = DECIMALS) -> int:
    """How many decimals v needs, at most cap (trailing zeros dropped)."""
    text = f"{v:.{cap}f}".rstrip("0")
    return len(text) - text.index(".") - 1


def _number(v: float, decimals: int) -> str:
    if v == 0:
        return "0"
    text = f"{v:.{decimals}f}"
    if float(text) == 0:  # nonzero but below the column's decimals: 1e-06, 5.9e-05
        return f"{v:.2g}"
    return text


def _column(values) -> list[str]:
    """One column as text (see the module docstring)."""
    vals = list(values)
    floats = [float(v) for v in vals if isinstance(v, (float, np.floating)) and not _is_missing(v)
              and math.isfinite(float(v))]
    whole = all(f.is_integer() and abs(f) < 1e15 for f in floats)
    decimals = max((_decimals(f) for f in floats), default=0)
    out = []
    for v in vals:
        if _is_missing(v):
            out.append(MISSING)
        elif isinstance(v, (bool, np.bool_)):
            out.append("yes" if v else "no")
        elif isinstance(v, (int, np.integer)):
            out.append(str(int(v)))
        elif isinstance(v, (float, np.floating)):
            f = float(v)
            if not math.isfinite(f):
                out.append(str(f))
            elif whole:
                out.append(str(int(f)))
            else:
                out.append(_number(f, decimals))
        else:
            out.append(str(v))
    return out


def tidy(data):
    """A DataFrame or Series as the notebooks show it: every cell as text, by the rules of the module docstring."""
    if isinstance(data, pd.Series):
        return pd.Series(_column(data.tolist()), index=data.index, name=data.name, dtype=object)
    out = pd.DataFrame(index=data.index, columns=data.columns, dtype=object)
    for i in range(data.shape[1]):
        out.iloc[:, i] = _column(data.iloc[:, i].tolist())
    return out


def _register_formatters():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    ip = get_ipython()
    if ip is None:
        return
    formatters = ip.display_formatter.formatters
    formatters["text/html"].for_type(pd.DataFrame, lambda df: tidy(df)._repr_html_())
    formatters["text/plain"].for_type(pd.DataFrame, lambda df, p, cycle: p.text(repr(tidy(df))))
    formatters["text/plain"].for_type(pd.Series, lambda s, p, cycle: p.text(repr(tidy(s))))


def setup():
    """Call once at the top of every notebook, before importing diffusers or transformers."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    analysis.quiet()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from tqdm import TqdmWarning

    warnings.filterwarnings("ignore", category=TqdmWarning)  # "IProgress not found", with a site-packages path
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:
        pass
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.max_open_warning": 0})
    pd.set_option("display.max_rows", 120)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", None)  # no truncated text cells
    pd.set_option("display.precision", DECIMALS)
    _register_formatters()
