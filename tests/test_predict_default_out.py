"""``emoset-peft predict`` without ``--out`` keeps an earlier predictions.csv unless told."""

import pytest
from fixtures_train import train_two_steps

from emoset_peft.cli import main


@pytest.fixture(scope="module")
def run(training_root, tiny_vit_dir, tmp_path_factory):
    return train_two_steps(
        training_root,
        tiny_vit_dir,
        tmp_path_factory.mktemp("default_out") / "run",
        per_class=2,
        selection_per_class=1,
    )


def test_predict_without_out_keeps_an_existing_predictions_csv(
    run, training_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    awe = training_root / "image" / "awe"
    assert main(["predict", str(run), str(awe), "-q"]) == 0
    first = (tmp_path / "predictions.csv").read_text()
    awe_rows = len(first.splitlines()) - 1
    assert awe_rows > 0

    capsys.readouterr()
    assert main(["predict", str(run), str(training_root / "image"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "predictions.csv") in err
    assert "--out PATH" in err and "--overwrite" in err
    assert (tmp_path / "predictions.csv").read_text() == first  # the earlier rows are kept

    assert main(["predict", str(run), str(training_root / "image"), "-q", "--overwrite"]) == 0
    replaced = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(replaced) - 1 > awe_rows  # replaced, because --overwrite asked for it
