"""The README's results table is generated from the committed manifests; it must not drift from them."""

from pathlib import Path

from wanopt.profiling.report import readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_results_table_matches_the_manifests():
    text = README.read_text()
    start = text.index("<!-- results-table")
    table = text[text.index("\n", start) + 1: text.index("<!-- /results-table -->")].strip()
    assert table == readme_table(), "README results table is stale: paste the output of `python -m wanopt table`"


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text()
