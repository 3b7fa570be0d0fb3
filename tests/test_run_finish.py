"""How a run ends and what it says next: metrics.json is written last, resume=true finishes a run
whose model card has no results without training, and Ctrl-C names the way to continue."""

import json
import shlex

import pytest
from huggingface_hub import metadata_load

from emoset_peft.cli import main
from emoset_peft.deploy.card import write_card
from emoset_peft.engine import recipe
from emoset_peft.engine.trainer import TrainingLoop
from emoset_peft.models.folder import read_record


def card_results(run) -> list:
    """The model-index results of the run's adapter card ([] for a card without results)."""
    metadata = metadata_load(run / "adapter" / "README.md") or {}
    return [result for entry in metadata.get("model-index", []) for result in entry["results"]]


def refuse_training(*_args, **_kwargs):
    raise AssertionError("the run was trained again")


def test_a_kill_while_the_card_is_written_leaves_the_run_unfinished(
    tiny_run, tmp_path, monkeypatch
):
    def killed(*_args):
        raise KeyboardInterrupt

    args = ["train", *tiny_run("run")]
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "write_model_card", killed)
        assert main(args) == 130
    run = tmp_path / "run"
    assert (run / "adapter").is_dir()
    assert not (run / "metrics.json").exists()  # not "finished" with a card that lacks results
    assert main(args) == 0  # nothing finished and no checkpoint: the same command starts over
    assert card_results(run) and (run / "metrics.json").exists()


def test_resume_finishes_a_run_whose_card_has_no_results_without_training(
    tiny_run, tmp_path, monkeypatch, capsys
):
    args = ["train", *tiny_run("run")]
    assert main(args) == 0
    run = tmp_path / "run"
    adapter = run / "adapter"
    metrics, log = (run / "metrics.json").read_text(), (run / "log.jsonl").read_text()
    # What a kill after metrics.json left in earlier versions: save_pretrained's card, no results.
    write_card(adapter, read_record(adapter))
    assert card_results(run) == []

    monkeypatch.setattr(recipe, "load_run_data", refuse_training)
    monkeypatch.setattr(recipe, "fit", refuse_training)
    capsys.readouterr()
    assert main(args + ["resume=true"]) == 0
    assert {result["metrics"][0]["type"] for result in card_results(run)} >= {"accuracy"}
    assert (run / "metrics.json").read_text() == metrics
    assert (run / "log.jsonl").read_text() == log
    assert str(run) in capsys.readouterr().out


def test_a_finished_run_says_what_to_do_instead_of_resume(tiny_run, tmp_path, capsys):
    args = ["train", *tiny_run("run")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a finished run" in err
    assert "another output_dir" in err and "overwrite=true" in err
    assert f"emoset-peft eval {tmp_path / 'run'}" in err
    assert "resume=true" not in err  # resuming a finished run trains nothing


def test_ctrl_c_after_a_checkpoint_names_the_command_that_continues_it(
    tiny_run, tmp_path, monkeypatch, capsys
):
    save = TrainingLoop.checkpoint

    def checkpoint_then_ctrl_c(loop):
        save(loop)
        raise KeyboardInterrupt

    args = tiny_run("run", **{"train.checkpoint_every": 4}) + ["overwrite=true"]
    with monkeypatch.context() as patch:
        patch.setattr(TrainingLoop, "checkpoint", checkpoint_then_ctrl_c)
        assert main(["train", "--no-progress", *args]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "interrupted" in err and "step_00000004" in err
    command = shlex.split(err.split("continue it with: ", 1)[1].split(" (under accelerate")[0])
    assert command[:2] == ["emoset-peft", "train"] and command[-1] == "resume=true"
    assert "overwrite=true" not in command  # it would remove the checkpoint it continues
    assert main(command[1:]) == 0  # the command printed, as printed, resumes the run
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 12


@pytest.mark.parametrize("every", [None, 100])
def test_ctrl_c_before_any_checkpoint_says_there_is_none(
    tiny_run, tmp_path, monkeypatch, capsys, every
):
    def ctrl_c(_loop):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingLoop, "train_step", ctrl_c)
    extra = {"train.checkpoint_every": every} if every else {}
    assert main(["train", "--no-progress", *tiny_run("run", **extra)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err
    assert f"no checkpoint in {tmp_path / 'run'}" in err and "resume=true" not in err
    assert "train.checkpoint_every=" in err
