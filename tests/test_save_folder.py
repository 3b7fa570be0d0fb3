"""What ``EmoSetModel.save_pretrained`` does to a folder that already holds files: a README.md
the toolkit did not write stays as it is, and a previous save's files that the new method does
not write are removed (only those: the user's other files stay)."""

import json

import pytest
import torch
from huggingface_hub import metadata_load

import emoset_peft as ep
from emoset_peft.deploy.card import MARKER


def test_a_readme_the_toolkit_did_not_write_is_kept(tiny_vit_dir, tmp_path):
    notes = "# My project notes\n\nKeep me.\n"
    broken = "---\n: [not yaml\n---\nnotes with broken metadata\n"
    for method, text in (("lora", notes), ("prefix", notes), ("full", notes), ("lora", broken)):
        folder = tmp_path / f"{method}-{len(text)}"
        folder.mkdir()
        (folder / "README.md").write_text(text)
        ep.build_model(tiny_vit_dir, method).save_pretrained(folder)
        assert (folder / "README.md").read_text() == text, method
        assert ep.load_adapter(folder).method == method


def test_the_toolkit_card_is_rewritten_on_the_next_save(tiny_vit_dir, tmp_path):
    ep.build_model(tiny_vit_dir, "lora").save_pretrained(tmp_path)
    meta = metadata_load(tmp_path / "README.md")
    assert meta[MARKER] is True and "lora" in meta["tags"]
    ep.build_model(tiny_vit_dir, "ia3").save_pretrained(tmp_path)
    meta = metadata_load(tmp_path / "README.md")
    assert meta[MARKER] is True and "ia3" in meta["tags"] and "lora" not in meta["tags"]


@pytest.mark.parametrize(
    ("first", "second", "gone"),
    [
        ("full", "lora", {"config.json", "model.safetensors"}),
        ("lora", "prefix", {"adapter_config.json"}),
        ("lora", "full", {"adapter_config.json", "adapter_model.safetensors"}),
    ],
)
def test_another_method_removes_the_files_of_the_first(tiny_vit_dir, tmp_path, first, second, gone):
    (tmp_path / "notes.txt").write_text("mine\n")
    ep.build_model(tiny_vit_dir, first).save_pretrained(tmp_path)
    assert all((tmp_path / name).is_file() for name in gone)
    torch.manual_seed(1)
    model = ep.build_model(tiny_vit_dir, second).eval()
    model.save_pretrained(tmp_path)
    assert not any((tmp_path / name).exists() for name in gone)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert json.loads((tmp_path / "emoset_peft.json").read_text())["method"] == second
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ep.load_adapter(tmp_path).eval()(pixels).logits, model(pixels).logits
        )


def test_files_the_toolkit_did_not_save_stay(tiny_vit_dir, tmp_path):
    """A config.json + model.safetensors with no emoset_peft.json beside them are the user's."""
    (tmp_path / "config.json").write_text("{}\n")
    (tmp_path / "model.safetensors").write_bytes(b"user bytes")
    ep.build_model(tiny_vit_dir, "lora").save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}\n"
    assert (tmp_path / "model.safetensors").read_bytes() == b"user bytes"
