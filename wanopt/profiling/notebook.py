"""Notebook defaults: quiet libraries, PNG figures, readable tables.

nbval compares every cell's stdout, stderr and text/html against the committed outputs, so a notebook must print
the same thing on every run: no timings of its own, no log lines with PIDs or temp paths, no progress bars.
"""

from __future__ import annotations

import logging
import os
import warnings

import matplotlib
import pandas as pd

from . import analysis

QUIET_LOGGERS = ("hta", "torch._dynamo", "torch._inductor", "torch.utils._sympy", "diffusers", "transformers",
                 "torch._logging")


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
    pd.set_option("display.max_rows", 40)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.width", 160)
    pd.set_option("display.precision", 3)
