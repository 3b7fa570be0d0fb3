"""The scaling notebook executes end to end (its quick setting) and shows its plots inline, and
neither the committed file nor an executed copy stores progress-bar redraws."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "low_data_scaling.ipynb"
# Executed, the notebook prints a line or two per code cell; a progress bar stores an output per
# redraw (160 in the study cell alone, each with "\x1b[A" cursor moves).
MAX_STREAM_OUTPUTS = 12


def _outputs(notebook) -> list:
    return [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ]


def _check_outputs_are_clean(outputs: list) -> None:
    text = "".join(str(out.get("text", "")) for out in outputs)
    assert "\x1b[" not in text and "\r" not in text, text[:500]
    streams = [out for out in outputs if out.get("output_type") == "stream"]
    assert len(streams) <= MAX_STREAM_OUTPUTS, [out.get("text", "")[:80] for out in streams]
    assert not [out for out in streams if out.get("name") == "stderr"], streams


def test_the_committed_notebook_stores_no_progress_bars():
    _check_outputs_are_clean(_outputs(nbformat.read(NOTEBOOK, as_version=4)))


@pytest.mark.slow
def test_notebook_runs_a_study_and_shows_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSET_NOTEBOOK_DIR", str(tmp_path / "nb"))
    monkeypatch.setenv("EMOSET_NOTEBOOK_SMALL", "1")
    # The kernel starts in tmp_path: without this it would import an installed emoset_peft
    # rather than this checkout.
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = _outputs(notebook)
    _check_outputs_are_clean(outputs)
    assert not [out for out in outputs if out.get("output_type") == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2
    text = "".join(out.get("text", "") for out in outputs)
    assert "lora" in text and "k=  8" in text
    assert (tmp_path / "nb" / "study" / "report.md").exists()
