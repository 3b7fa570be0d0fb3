"""A wrong data.root is one line before anything slow: no precision decision, no model build."""

from __future__ import annotations

from fixtures_train import train_two_steps

from emoset_peft.cli import main

SLOW_STEPS = (
    "emoset_peft.engine.precision.decide_precision",
    "emoset_peft.engine.recipe.preflight",  # the model build on the backbone's config
    "emoset_peft.engine.recipe.make_accelerator",
    "emoset_peft.models.load_adapter",
    "emoset_peft.engine.rescore.load_for_scoring",
)


def _slow(*args, **kwargs):
    raise AssertionError("reached a slow step before the data root was checked")


def _forbid_slow_steps(monkeypatch) -> None:
    for target in SLOW_STEPS:
        monkeypatch.setattr(target, _slow)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_train_with_a_wrong_data_root_fails_before_the_model(tmp_path, monkeypatch, capsys):
    _forbid_slow_steps(monkeypatch)
    args = ["train", f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    assert "is not a folder" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_eval_with_a_wrong_data_root_fails_before_the_model(
    training_root, tiny_vit_dir, tmp_path, monkeypatch, capsys
):
    run = train_two_steps(training_root, tiny_vit_dir, tmp_path / "run", 2, 1)
    capsys.readouterr()
    _forbid_slow_steps(monkeypatch)
    assert main(["eval", str(run), f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "is not a folder" in _one_line(capsys)
