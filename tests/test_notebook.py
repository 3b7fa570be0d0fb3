"""The scaling notebook executes end to end (its quick setting) and shows its plots inline."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "low_data_scaling.ipynb"
pytestmark = pytest.mark.slow


def test_notebook_runs_a_study_and_shows_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSET_NOTEBOOK_DIR", str(tmp_path / "nb"))
    monkeypatch.setenv("EMOSET_NOTEBOOK_SMALL", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2
    text = "".join(out.get("text", "") for out in outputs)
    assert "lora" in text and "k=  8" in text
    assert (tmp_path / "nb" / "study" / "report.md").exists()
