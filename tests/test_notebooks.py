"""The course: every notebook is committed clean, ends with a summary and exercises, and runs top to bottom."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "build" / "notebooks"  # the docs site shows these copies, so the course runs once per `make test`
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COURSE = ["00_quickstart", "01_text_encoder", "02_vae_latent_space", "03_forward_diffusion_training", "04_unet_cross_attention",
          "04b_interventions", "05_sampling_loop", "06_classifier_free_guidance", "07_img2img_inpainting", "08_real_stable_diffusion",
          "09_textual_inversion", "10_unet_to_transformer", "11_flow_matching", "12_jumping_to_the_end"]


def test_the_course_has_every_notebook():
    assert [p.stem for p in NOTEBOOKS] == COURSE


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_ends_with_exercises(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before committing"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## What you saw" in text and "## Exercises" in text
    assert nb.cells[0].source.startswith(f"# {path.stem.split('_')[0]} ·"), "the first cell is the numbered title"
    assert any("import illustrated_sd as isd" in c.source for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # no widget state in the copy: with it, the docs page would load the widgets' JavaScript from a CDN
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= (1 if path.stem.startswith("08") else 3), "the notebook shows its pictures"
    assert not uncomputed_numbers(nb), "a number the text states appears in no cell: compute it (or its setting) in a cell"
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED / path.name)


# Figures in the prose (a decimal or a percentage), leaving out maths, inline code and model names ("SD 1.5").
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?:\.\d+)?(?=\s?%))")
NOT_PROSE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\bSD ?\d\.\d\b|\d\.x\b", re.S)


def uncomputed_numbers(nb) -> list[str]:
    """The figures a notebook's text states that none of its cells sets or prints (the course rule: a number a
    notebook states is computed in a cell, so it cannot drift from the model it describes)."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    computed = "\n".join([c.source for c in cells] + [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                                                       for c in cells for o in c.outputs])
    stated = [f for c in nb.cells if c.cell_type == "markdown" for f in FIGURE.findall(NOT_PROSE.sub(" ", c.source))]
    return [f for f in stated if f not in computed]


def test_the_number_check_catches_a_figure_no_cell_computes():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("Recording costs 9% (SD 1.5; `0.4` is code), s = 2.5, x̂₀ 0.22×."),
                                         nbformat.v4.new_code_cell("scale = 2.5")])
    assert uncomputed_numbers(nb) == ["9", "0.22"]
