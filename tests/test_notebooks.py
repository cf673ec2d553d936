"""The course's notebooks run top to bottom, their checks can fail, and the files carry their outputs.

Executed with nbclient (the library under `jupyter nbconvert --execute` and nbmake): it runs a notebook in a
real Jupyter kernel from Python, so the same function serves `gpt2 notebooks --execute`, which saves the
outputs, and these tests, which execute a fresh copy in memory and never rewrite the files. nbmake would
add a pytest plugin for what one function call does here, and could not plant bugs.

Planted bugs: tests/notebook_plants/NN_slug.py holds source that breaks the package the notebook NN_slug
teaches (a backward with a wrong term, ...); run as an extra first cell, the notebook must then FAIL, which
proves its checks are real.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from nbclient.exceptions import CellExecutionError

from gpt2cli.commands.notebooks import default_notebooks_dir, execute_notebook, find_notebooks

NOTEBOOKS = find_notebooks(default_notebooks_dir())
PLANTS_DIR = Path(__file__).with_name("notebook_plants")
PLANTS = sorted(PLANTS_DIR.glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
    executed = execute_notebook(path)
    errors = [output for cell in executed.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_saved_with_its_outputs(path):
    """Every code cell that prints or plots when run has its output in the file (run `gpt2 notebooks --execute`)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert code_cells, f"{path.name} has no code"
    unexecuted = [index for index, cell in enumerate(code_cells) if cell.get("execution_count") is None]
    assert not unexecuted, (f"{path.name}: code cells {unexecuted} were never executed; "
                            f"run `gpt2 notebooks --execute {path.stem}`")
    assert sum(bool(cell.get("outputs")) for cell in code_cells) >= len(code_cells) // 2, (
        f"{path.name} shows too few outputs: run `gpt2 notebooks --execute {path.stem}`")


@pytest.mark.parametrize("plant", PLANTS, ids=[plant.stem for plant in PLANTS])
def test_planted_bug_fails_the_notebook(plant):
    notebook = default_notebooks_dir() / f"{plant.stem}.ipynb"
    assert notebook.is_file(), f"{plant.name} plants a bug in {notebook.name}, which does not exist"
    with pytest.raises(CellExecutionError):
        execute_notebook(notebook, prelude=plant.read_text(encoding="utf-8"))


def test_every_chapter_has_a_planted_bug():
    planted = {plant.stem for plant in PLANTS}
    assert planted, "no planted bugs in tests/notebook_plants"
    missing = [path.stem for path in NOTEBOOKS if path.stem not in planted]
    assert not missing, f"notebooks whose checks were never shown to fail: {missing}"


def test_the_course_has_its_ten_chapters_in_order():
    assert [path.stem for path in NOTEBOOKS] == [
        "01_tokens", "02_attention", "03_block", "04_gpt", "05_training", "06_generation", "07_pretrained",
        "08_classification", "09_instruct", "10_llama"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_npgpt_is_imported_before_numpy(path):
    """A Jupyter kernel has other threads, so npgpt imported after NumPy leaves OpenBLAS's idle workers spinning
    (npgpt.speed.blas_threads); a chapter that runs npgpt imports it first in its first code cell."""
    import nbformat

    code_cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    if not any("npgpt" in source for source in code_cells):
        return                                   # a chapter without npgpt (tokens) has nothing to set
    lines = code_cells[0].splitlines()
    first_npgpt = next((i for i, line in enumerate(lines) if line.startswith("import npgpt")), None)
    first_numpy = next(i for i, line in enumerate(lines)
                       if line.startswith(("import numpy", "import matplotlib", "import torch", "from npgpt")))
    assert first_npgpt is not None and first_npgpt < first_numpy, (
        f"{path.name}: put `import npgpt` before NumPy, matplotlib and torch in the first code cell")
