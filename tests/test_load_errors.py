"""Loading models from bad input: one EmoSetError line naming the file or key (rc 2 in the CLI),
nothing executed that the checkpoint ships (custom code, pickles)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

import emoset_peft as ep
from emoset_peft.cli import main
from emoset_peft.errors import EmoSetError
from emoset_peft.models import build_model


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


class _PlantedCode:
    """Unpickling this creates ``marker``: the proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ---------------------------------------------------------------------------------------------
# Backbones


@pytest.mark.parametrize("model_type", ["vit", "my_custom_vit"])
def test_backbone_with_custom_code_is_refused_and_its_code_never_runs(
    model_type, tiny_vit_dir, tiny_run, tmp_path, capsys
):
    backbone = Path(shutil.copytree(tiny_vit_dir, tmp_path / "custom"))
    marker = tmp_path / "custom_code_ran"
    (backbone / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((backbone / "config.json").read_text())
    config.update(
        model_type=model_type,
        auto_map={
            "AutoConfig": "modeling_custom.CustomConfig",
            "AutoModelForImageClassification": "modeling_custom.CustomModel",
        },
    )
    (backbone / "config.json").write_text(json.dumps(config))

    with pytest.raises(EmoSetError, match="auto_map.*trust_remote_code"):
        build_model(backbone, "lora")
    assert main(["train", *tiny_run(backbone=backbone)]) == 2
    err = _one_line_error(capsys)
    assert str(backbone) in err and "modeling_custom.CustomModel" in err
    assert "google/vit-base-patch16-224-in21k" in err
    assert not marker.exists()


def test_missing_backbone_folder_says_so_in_one_line(tiny_run, tmp_path, capsys):
    missing = tmp_path / "models" / "my-vit"
    assert main(["train", *tiny_run(backbone=missing)]) == 2
    err = _one_line_error(capsys)
    assert f"the folder {missing} does not exist" in err
    assert "Hub id such as google/vit-base-patch16-224-in21k" in err
    assert "Repo id must be" not in err


# ---------------------------------------------------------------------------------------------
# Saved folders


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_record(folder: Path, change) -> None:
    record = json.loads((folder / "emoset_peft.json").read_text())
    change(record)
    (folder / "emoset_peft.json").write_text(json.dumps(record))


# damage name -> (what it does to a saved LoRA folder, the file the message must name)
DAMAGE = {
    "record_not_json": (
        lambda f: (f / "emoset_peft.json").write_bytes(b"\xff{not json"),
        "emoset_peft.json",
    ),
    "record_not_an_object": (
        lambda f: (f / "emoset_peft.json").write_text("[1, 2]"),
        "emoset_peft.json",
    ),
    "record_without_input_spec": (
        lambda f: _edit_record(f, lambda r: r.pop("input_spec")),
        "emoset_peft.json",
    ),
    "record_id2label_wrong_type": (
        lambda f: _edit_record(f, lambda r: r.update(id2label=3)),
        "emoset_peft.json",
    ),
    "adapter_config_truncated": (
        lambda f: _truncate(f / "adapter_config.json"),
        "adapter_config.json",
    ),
    "weights_missing": (
        lambda f: (f / "adapter_model.safetensors").unlink(),
        "adapter_model.safetensors",
    ),
    "weights_truncated": (
        lambda f: _truncate(f / "adapter_model.safetensors"),
        "adapter_model.safetensors",
    ),
    "weights_empty": (
        lambda f: (f / "adapter_model.safetensors").write_bytes(b""),
        "adapter_model.safetensors",
    ),
}


@pytest.fixture(scope="module")
def saved_lora(tiny_vit_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "lora"
    build_model(tiny_vit_dir, "lora", r=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_run(training_root, tiny_vit_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    overrides = {
        "data.root": training_root,
        "data.per_class": 2,
        "data.selection_per_class": 1,
        "data.test_limit_per_class": 1,
        "model.backbone": tiny_vit_dir,
        "train.batch_size": 8,
        "train.min_steps": 2,
        "train.max_steps": 2,
        "train.eval_every": 2,
        "cpu": "true",
        "output_dir": run,
    }
    assert main(["train", *(f"{k}={v}" for k, v in overrides.items())]) == 0
    return run


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_adapter_folder_one_error_naming_the_file(damage, saved_lora, tmp_path):
    folder = Path(shutil.copytree(saved_lora, tmp_path / "adapter"))
    ep.load_adapter(folder)  # intact: loads
    damage_it, file_name = DAMAGE[damage]
    damage_it(folder)
    with pytest.raises(EmoSetError) as caught:
        ep.load_adapter(folder)
    message = str(caught.value)
    assert str(folder / file_name) in message and "\n" not in message


@pytest.mark.parametrize(
    "method, weights", [("linear", "adapter_model.safetensors"), ("full", "model.safetensors")]
)
def test_truncated_weights_of_other_methods(method, weights, tiny_vit_dir, tmp_path):
    folder = tmp_path / method
    build_model(tiny_vit_dir, method).save_pretrained(folder)
    _truncate(folder / weights)
    with pytest.raises(EmoSetError, match=f"{folder / weights} is not a readable safetensors"):
        ep.load_adapter(folder)


@pytest.mark.parametrize("damage", ["record_not_json", "weights_truncated", "weights_missing"])
def test_eval_of_a_damaged_run_is_one_line_with_status_2(damage, trained_run, tmp_path, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    damage_it, file_name = DAMAGE[damage]
    damage_it(run / "adapter")
    assert main(["eval", str(run), "--out", str(tmp_path / "m.json")]) == 2
    assert str(run / "adapter" / file_name) in _one_line_error(capsys)
    assert not (tmp_path / "m.json").exists()


def test_planted_pickle_is_refused_in_one_line_and_never_unpickled(trained_run, tmp_path, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    marker = tmp_path / "pickle_ran"
    (run / "adapter" / "adapter_model.safetensors").unlink()
    (run / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps(_PlantedCode(marker)))

    assert main(["eval", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "adapter_model.bin" in err and "never loads" in err
    with pytest.raises(EmoSetError, match="adapter_model.bin"):
        ep.load_adapter(run / "adapter")
    assert not marker.exists()
    pickle.loads((run / "adapter" / "adapter_model.bin").read_bytes())  # the pickle is live
    assert marker.exists()


@pytest.mark.parametrize("method", ["lora", "prefix", "linear"])
def test_an_adapter_on_another_size_of_its_backbone_is_one_line(method, tiny_vit_dir, tmp_path):
    from emoset_peft.models.tiny import save_tiny_backbone

    wider = save_tiny_backbone("vit", tmp_path / "vit64", hidden_size=64)
    build_model(tiny_vit_dir, method).save_pretrained(tmp_path / "adapter")
    with pytest.raises(EmoSetError, match="do not fit backbone") as caught:
        ep.load_adapter(tmp_path / "adapter", backbone=wider)
    assert str(tiny_vit_dir) in str(caught.value) and "\n" not in str(caught.value)


def test_an_adapter_whose_recorded_backbone_is_gone_says_how_to_load_it(tiny_vit_dir, tmp_path):
    moved = Path(shutil.copytree(tiny_vit_dir, tmp_path / "backbone"))
    build_model(moved, "linear").save_pretrained(tmp_path / "adapter")
    shutil.rmtree(moved)
    with pytest.raises(EmoSetError, match=r"was saved on backbone .*backbone=") as caught:
        ep.load_adapter(tmp_path / "adapter")
    assert "\n" not in str(caught.value)
    ep.load_adapter(tmp_path / "adapter", backbone=tiny_vit_dir)  # the advice works
