"""``emoset-peft export``: a merged, stand-alone folder that stock transformers loads in a fresh
process (no emoset_peft) with the toolkit's logits; the runs it cannot export say so in one line."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import emoset_peft as ep
from emoset_peft.cli import main
from emoset_peft.deploy.export import exportable_methods


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    from emoset_peft.models.tiny import save_tiny_backbone

    return save_tiny_backbone("dinov2", tmp_path_factory.mktemp("tiny_dinov2"), processor_size=32)


def _saved(backbone, method, folder):
    """A saved folder of ``method`` with random trained weights (a zero-initialised adapter would
    merge into the unchanged base model and hide a merge that does nothing)."""
    torch.manual_seed(0)
    model = ep.build_model(backbone, method)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


STOCK_CHECK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    for folder in sys.argv[1:]:
        folder = Path(folder)
        data = load_file(str(folder.parent / (folder.name + ".check.safetensors")))
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(pixel_values=data["pixel_values"]).logits
        diff = (logits - data["logits"]).abs().max().item()
        assert diff <= 1e-4, (folder.name, diff)
        processor = AutoImageProcessor.from_pretrained(folder)
        image = (data["photo"].numpy()).astype("uint8")
        from PIL import Image
        labels = [r["label"] for r in pipeline("image-classification", model=str(folder))(Image.fromarray(image), top_k=8)]
        print(folder.name, type(model).__name__, type(processor).__name__, diff, ",".join(sorted(labels)))
    assert not any(name.startswith("emoset_peft") for name in sys.modules), "emoset_peft was imported"
    """
)


def test_exported_folders_load_with_stock_transformers(
    tiny_vit_dir, tiny_dinov2_dir, tmp_path, capsys
):
    cases = [
        ("lora", "vit", tiny_vit_dir),
        ("oft", "vit", tiny_vit_dir),
        ("full", "vit", tiny_vit_dir),
        ("lora", "dinov2", tiny_dinov2_dir),
    ]
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    photo = torch.randint(0, 256, (45, 38, 3), generator=generator, dtype=torch.uint8)
    outs = []
    for method, family, backbone in cases:
        run = tmp_path / f"{method}-{family}"
        _saved(backbone, method, run / "adapter")  # RUN/adapter, as a training run lays it out
        out = tmp_path / "exports" / f"{method}-{family}"
        assert main(["export", str(run), str(out)]) == 0
        assert str(out) in capsys.readouterr().out
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
            p.name for p in out.iterdir()
        }
        config = json.loads((out / "config.json").read_text())
        assert config["id2label"] == {str(i): name for i, name in enumerate(ep.EMOTIONS)}
        with torch.no_grad():
            logits = ep.load_adapter(run / "adapter")(pixel_values=pixel_values).logits
        save_file(
            {"pixel_values": pixel_values, "logits": logits, "photo": photo},
            str(out.parent / f"{out.name}.check.safetensors"),
        )
        outs.append(str(out))
    result = subprocess.run(
        [sys.executable, "-c", STOCK_CHECK, *outs],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(cases)
    assert all(line.endswith(",".join(sorted(ep.EMOTIONS))) for line in lines)
    assert "Dinov2ForImageClassification BitImageProcessor" in result.stdout


def test_clip_runs_are_refused_with_what_to_use(tiny_clip_dir, tmp_path, capsys):
    folder = _saved(tiny_clip_dir, "lora", tmp_path / "clip-lora")
    assert main(["export", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CLIPForImageClassification" in err
    assert "emoset-peft push" in err and "load_adapter" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["prefix", "vpt", "adaptformer"])
def test_methods_that_do_not_fold_are_refused(method, tiny_vit_dir, tmp_path, capsys):
    folder = _saved(tiny_vit_dir, method, tmp_path / method)
    assert main(["export", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"method {method!r} cannot be merged" in err
    assert f"methods that export: {', '.join(exportable_methods())}" in err
    assert "lora" in exportable_methods() and method not in exportable_methods()
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_not_replaced_without_overwrite(tiny_vit_dir, tmp_path, capsys):
    folder = _saved(tiny_vit_dir, "linear", tmp_path / "linear")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(folder), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(folder), str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    card = (out / "README.md").read_text()
    assert "merged into a stand-alone transformers model" in card
    assert 'pipeline("image-classification", model=' in card
