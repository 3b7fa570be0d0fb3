"""``emoset-peft export RUN OUT``: the adapter merged into the weights, saved as a plain
transformers folder (config.json with the emotion names, model.safetensors,
preprocessor_config.json, a model card) that stock ``AutoModelForImageClassification`` and
``pipeline("image-classification", model=OUT)`` load without emoset_peft.

What can be exported, and why the rest cannot:

- Methods that fold into the weights (the peft tuners, bitfit, linear, full): their merged model is
  the very transformers class the toolkit trains (``AutoModelForImageClassification`` for ViT,
  DINOv2, SigLIP), so the exported logits equal the toolkit's.
- prefix, vpt, adaptformer add computation beside the weights (learned key/values, prompt
  tokens, a bottleneck branch); no stock class runs it.
- CLIP: the toolkit's head reads the projected [CLS] embedding scaled to unit RMS
  (``clip_classifier.py``: what makes the zero-shot head exact). transformers'
  ``CLIPForImageClassification`` puts its head on the mean of the patch tokens of the last layer,
  before the final layer norm and without the projection: no choice of its weights reproduces
  the toolkit's logits. The adapter folder (``emoset-peft push``) is the way to share a CLIP run.
- A run trained on a quantized backbone: merging would requantize the weights.
"""

from __future__ import annotations

from pathlib import Path

from emoset_peft.errors import EmoSetError


def image_processor(record: dict):
    """A ``BitImageProcessor`` with a saved model's eval geometry (``record``: its
    emoset_peft.json): RGB, shorter side resized (bilinear) to ``image_size / crop_ratio``,
    centre crop ``image_size``, the backbone's mean and std.

    Its pixels are the toolkit's (data/pipeline.py) within one grey level, except that where the
    resized long side leaves an odd margin whose half rounds up (55 - 32 = 23: 11.5), transformers'
    centre crop starts one pixel earlier than torchvision's (it floors; torchvision rounds half to
    even). transformers offers no setting for that; ``ep.predict`` is the exact path."""
    from transformers import BitImageProcessor

    spec = record["input_spec"]
    size = int(spec["image_size"])
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": int(round(size / float(spec.get("crop_ratio", 0.875))))},
        resample=2,  # PIL.Image.BILINEAR, as the toolkit's decoder
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(spec["mean"]),
        image_std=list(spec["std"]),
        do_convert_rgb=True,
    )


def exportable_methods() -> tuple[str, ...]:
    from emoset_peft.models import methods

    return methods.named(lambda spec: spec.mergeable and not spec.text_head)


def check_exportable(record: dict, where: str | Path) -> None:
    """EmoSetError (one line) when the saved model in ``where`` has no stock transformers form."""
    from emoset_peft.models import methods
    from emoset_peft.models.families import family_for

    spec = methods.get_method(record["method"])
    share = (
        f"share the adapter folder instead (emoset-peft push {where} OWNER/NAME) "
        "and load it with emoset_peft.load_adapter"
    )
    if not spec.mergeable or spec.text_head:
        raise EmoSetError(
            f"{where}: method {spec.name!r} cannot be merged into a stock transformers model "
            f"({spec.summary}); methods that export: {', '.join(exportable_methods())}; {share}"
        )
    if family_for(record["model_type"]).loader.reads_image_embedding:
        raise EmoSetError(
            f"{where}: a CLIP run cannot be exported: its head reads the unit-RMS projected [CLS] "
            "embedding, which transformers' CLIPForImageClassification (mean patch token, no "
            f"projection) cannot reproduce; export works for ViT, DINOv2 and SigLIP runs; {share}"
        )
    if record.get("quantize"):
        raise EmoSetError(
            f"{where}: trained on a {record['quantize']}-quantized backbone, whose merged weights "
            f"would be requantized; {share}"
        )


def export_model(run_or_adapter: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Merge the run's adapter and write a stand-alone transformers folder to ``out``.

    ``overwrite`` replaces only a folder an earlier export wrote (see :func:`check_export_out`)."""
    import torch

    from emoset_peft.deploy.card import adapter_folder, run_info, write_card
    from emoset_peft.models.adapters import load_adapter
    from emoset_peft.models.folder import read_record
    from emoset_peft.utils.io import atomic_write_json
    from emoset_peft.utils.storage import atomic_folder

    adapter = adapter_folder(run_or_adapter)
    record = read_record(adapter)
    check_exportable(record, run_or_adapter)
    out = Path(out)
    check_export_out(run_or_adapter, out, overwrite=overwrite)
    run = run_info(adapter)
    model = load_adapter(adapter)
    with torch.no_grad():
        merged = model.merge_and_unload().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out, "the exported model", "free space and export again") as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        image_processor(record).save_pretrained(str(tmp))
        write_card(tmp, record, run=run, exported=True)
        files = sorted(path.name for path in tmp.iterdir())
        atomic_write_json(
            tmp / EXPORT_MARKER,
            {"source": str(Path(run_or_adapter).resolve()), "files": files},
        )
    return out


# Written last into every exported folder: the names export wrote, so that --overwrite can
# prove a folder is an earlier export before it removes it (as the run folder's marker does).
EXPORT_MARKER = ".emoset-peft-export"
# What exports wrote before the marker existed: such a folder, with exactly these names, counts.
_UNMARKED_FILES = frozenset(
    {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
)


def check_export_out(source: str | Path, out: Path, *, overwrite: bool) -> None:
    """EmoSetError (one line) unless ``out`` is new, empty, or (with ``overwrite``) an earlier
    export holding only what that export wrote. Never a dataset tree, the current folder, the
    source run, a folder inside it or one holding it."""
    from emoset_peft.utils.outputs import check_writable_place, refuse_dataset_output

    if out.exists() and not out.is_dir():
        raise EmoSetError(f"OUT {out} is a file, not a folder; pick a new folder")
    refuse_dataset_output(out, "OUT")
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise EmoSetError(
            f"OUT {out} is the current folder or holds it; pick a new folder, e.g. {out / 'model'}"
        )
    for shown, src in _source_folders(source):
        if target == src:
            where = "is"
        elif src in target.parents:
            where = "lies inside"
        elif target in src.parents:
            where = "holds"
        else:
            continue
        raise EmoSetError(
            f"OUT {out} {where} {shown}, which is being exported; pick a new folder outside it"
        )
    check_writable_place(out, "OUT")
    names = {path.name for path in out.iterdir()} if out.is_dir() else set()
    if not names:
        return
    written = export_files(out)
    if written is None:
        why = f"is not empty and holds no {EXPORT_MARKER} marker of an earlier export"
    elif names - written:
        shown = sorted(names - written)
        why = "holds files export did not write (" + ", ".join(shown[:3])
        why += ", ...)" if len(shown) > 3 else ")"
    elif overwrite:
        return
    else:
        raise EmoSetError(
            f"OUT {out} holds an earlier export; pass --overwrite to replace it, "
            "or pick a new folder"
        )
    raise EmoSetError(
        f"OUT {out} {why}; nothing in it is touched (--overwrite replaces only an earlier "
        "export): pick a new or empty folder, or move those files away"
    )


def _source_folders(source: str | Path) -> list[tuple[Path, Path]]:
    """(as named, resolved) for the source folder and, for an adapter inside a run, that run."""
    from emoset_peft.engine.rescore import is_run_folder

    source = Path(source)
    src = source.resolve()
    if is_run_folder(src.parent):
        return [(source.parent, src.parent), (source, src)]
    return [(source, src)]


def export_files(folder: Path) -> set[str] | None:
    """The names an earlier export wrote in ``folder`` (its marker included), or None when
    ``folder`` is not provably an export."""
    import json

    marker = folder / EXPORT_MARKER
    if not marker.exists():
        names = {path.name for path in folder.iterdir()}
        card = folder / "README.md"
        unmarked = names == _UNMARKED_FILES and card.is_file()
        if unmarked and "merged into a stand-alone transformers model" in _text(card):
            return set(_UNMARKED_FILES)
        return None
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return {*files, EXPORT_MARKER}


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
