"""The README's results table is generated from the committed manifests; it must not drift from them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wanopt.profiling.results import COLUMNS, readme_table, result_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_results_table_matches_the_manifests():
    text = README.read_text()
    start = text.index("<!-- results-table")
    table = text[text.index("\n", start) + 1: text.index("<!-- /results-table -->")].strip()
    assert table == readme_table(), "README results table is stale: paste the output of `python -m wanopt table`"


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()


def test_table_json_holds_every_row_of_the_readme_table():
    out = subprocess.run([sys.executable, "-m", "wanopt", "table", "--format", "json"], capture_output=True,
                         text=True, check=True)
    rows = json.loads(out.stdout)
    assert rows == result_rows() and len(rows) == len(readme_table().splitlines()) - 2
    assert all(set(r) == set(COLUMNS) for r in rows)
    for r in rows:  # every speedup is against the same run's baseline, and every row names its device and run
        assert r["device"] and r["run_id"] and r["median_ms"] > 0 and r["speedup_vs_baseline"] > 0
    # each workload's rows come from one run: its first row's (the baseline, or a multi-GPU run's single-GPU stage)
    first = {}
    for r in rows:
        first.setdefault(r["workload"], r)
    assert all(first[r["workload"]]["run_id"] == r["run_id"] for r in rows)
    parallel = [r for r in rows if (r["gpus"] or 1) > 1]  # a peer row has no GPU count
    for r in parallel:  # the sequence-parallel row's speedup is over the single-GPU row of the same call
        single = first[r["workload"]]
        assert single["gpus"] == 1 and r["speedup_vs_baseline"] == pytest.approx(single["median_ms"] / r["median_ms"],
                                                                                  rel=1e-6)
