"""Rank 0 decides about the run folder and tells the others (issue 12, item 5): two real CPU
processes (gloo) under ``accelerate launch``."""

from __future__ import annotations

from pathlib import Path

import pytest
from two_processes import run_two_cpu_processes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_folder_rank_zero_refuses_stops_every_rank_with_its_line(tiny_run, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's file\n")
    result = run_two_cpu_processes("train", *tiny_run("theirs", cpu="true"))
    assert result.returncode != 0
    # Both ranks print rank 0's one line themselves; neither waits in a barrier to be killed.
    assert result.stderr.count("error: ") == 2, result.stderr[-4000:]
    assert result.stderr.count("holds files emoset-peft did not write (notes.txt)") == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_one_process_gets_the_decision_and_rank_zeros_own_exception():
    import torch

    from emoset_peft.engine.solo import SoloAccelerator
    from emoset_peft.utils.dist import decide_on_main
    from emoset_peft.utils.locks import FolderBusy

    accelerator = SoloAccelerator(torch.device("cpu"))
    assert decide_on_main(accelerator, lambda: (Path("out"), None)) == (Path("out"), None)

    def busy():
        raise FolderBusy("out is in use by another emoset-peft run")

    with pytest.raises(FolderBusy):  # rank 0 keeps its exception's type
        decide_on_main(accelerator, busy)
