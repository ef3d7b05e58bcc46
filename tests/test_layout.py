"""The house: every stage of every family has its notebook, named after it (notebooks/<family>/<stage>), and every
notebook has its executed outputs next to its paired source."""

from pathlib import Path

import pytest

from wanopt.stages import EXTRA_STAGES, FAMILY_STAGES

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("family", list(FAMILY_STAGES))
def test_every_stage_has_its_notebook(family):
    missing = [s.name for s in FAMILY_STAGES[family] if not (NOTEBOOKS / family / f"{s.name}.py").exists()]
    assert not missing, f"stages without notebooks/{family}/<stage>.py: {missing}"


@pytest.mark.parametrize("notebook", list(EXTRA_STAGES))
def test_every_extra_stage_group_has_its_notebook(notebook):
    """The decode stages (end-to-end MG2) and sequence parallel (multi-GPU T2V) each share one notebook."""
    assert (NOTEBOOKS / f"{notebook}.py").exists(), f"notebooks/{notebook}.py is missing: it shows " + ", ".join(
        s.name for s in EXTRA_STAGES[notebook])


def test_every_notebook_source_has_its_executed_notebook():
    sources = [p for p in NOTEBOOKS.rglob("*.py") if ".ipynb_checkpoints" not in p.parts]
    assert sources and not [p for p in sources if not p.with_suffix(".ipynb").exists()]
    orphans = [p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
               and not p.with_suffix(".py").exists()]
    assert not orphans
