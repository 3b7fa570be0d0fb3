"""``emoset-peft export``: a merged, stand-alone folder that stock transformers loads in a fresh
process (no emoset_peft) with the toolkit's logits; the runs it cannot export say so in one line."""

import json
import shutil
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


def _tree(folder):
    """Every file under ``folder`` with its bytes (hidden files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _refused(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_overwrite_replaces_only_an_earlier_export(
    tiny_vit_dir, synthetic_copy, tmp_path, capsys, monkeypatch
):
    runs = tmp_path / "runs"
    run = runs / "a"
    _saved(tiny_vit_dir, "linear", run / "adapter")
    (run / ".emoset-peft-run").write_text("{}")  # a training run's marker
    (run / "metrics.json").write_text("{}")
    shutil.copytree(run, runs / "b")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("important")
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = _tree(tmp_path)

    # A dataset, a folder of notes, another run, the source run, its adapter, a folder inside
    # it, the folder holding it, a file: refused in one line, with and without --overwrite.
    cases = [
        (synthetic_copy, "inside the EmoSet tree"),
        (notes, "nothing in it is touched"),
        (runs / "b", "nothing in it is touched"),
        (run, "which is being exported"),
        (run / "adapter", "lies inside"),
        (run / "new", "lies inside"),
        (runs, "holds"),
        (afile, "is a file, not a folder"),
    ]
    for out, needle in cases:
        for extra in ([], ["--overwrite"]):
            _refused(capsys, ["export", str(run), str(out), *extra], needle)
        _refused(capsys, ["export", str(run / "adapter"), str(out), "--overwrite"])
    monkeypatch.chdir(runs / "b")
    _refused(capsys, ["export", str(run), ".", "--overwrite"], "current folder")
    assert _tree(tmp_path) == before

    # An earlier export is replaced with --overwrite only, and only while it holds just what
    # export wrote.
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    capsys.readouterr()
    marker = json.loads((out / ".emoset-peft-export").read_text())
    assert set(marker["files"]) == {p.name for p in out.iterdir()} - {".emoset-peft-export"}
    _refused(capsys, ["export", str(runs / "b"), str(out)], "earlier export", "--overwrite")
    assert main(["export", str(runs / "b"), str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((out / ".emoset-peft-export").read_text())["source"] == str(runs / "b")
    (out / "mine.txt").write_text("mine")
    _refused(capsys, ["export", str(run), str(out), "--overwrite"], "did not write (mine.txt)")
    assert (out / "mine.txt").read_text() == "mine"

    # An export written before the marker existed: exactly its four files and its card.
    (out / "mine.txt").unlink()
    (out / ".emoset-peft-export").unlink()
    assert main(["export", str(run), str(out), "--overwrite"]) == 0
    assert (out / ".emoset-peft-export").is_file()


def test_an_existing_folder_is_not_replaced_without_overwrite(tiny_vit_dir, tmp_path, capsys):
    folder = _saved(tiny_vit_dir, "linear", tmp_path / "linear")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(folder), str(out)]) == 0  # an empty folder is fine
    card = (out / "README.md").read_text()
    assert "merged into a stand-alone transformers model" in card
    assert 'pipeline("image-classification", model=' in card
