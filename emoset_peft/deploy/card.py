"""Model cards: the README.md of every saved adapter folder (and of an exported model), built with
``huggingface_hub.ModelCard`` so that the Hub and ``huggingface_hub.metadata_load`` read its metadata.

A card says what was done: the base model (its Hub id; a local folder is named as local, with its
family), the method and its options, the trainable parameters, and, once a run has finished
(``write_model_card`` from ``engine.recipe.run_training``), the EmoSet images per class and seeds,
the validation protocol and the test accuracy / macro-F1 / valence accuracy as ``model-index``
eval results. It ends with the exact loading code (emoset_peft, transformers' pipeline, and plain
peft where the folder allows it).

``save_pretrained`` writes the card without results (nothing is measured yet); the run rewrites it
with results beside the adapter; ``push`` renders it again with the repo id in the loading code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from emoset_peft.errors import EmoSetError

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
# Card metadata key that marks a README this toolkit wrote: save_pretrained rewrites only those and
# keeps any other README.md (a user's project notes) as it is, like plain peft does.
MARKER = "emoset_peft_card"
# The weights derive from the base model (its own license) and from EmoSet, which its authors
# release for non-commercial research; "other" makes the Hub show the License section below.
LICENSE = "other"
LICENSE_NAME = "emoset-research-and-base-model"
EMOSET_URL = "https://vcc.tech/EmoSet"
TOOLKIT_URL = "https://github.com/emoset-peft/emoset-peft"
_METRICS = (  # metrics.json key, card name; the first three are the model-index results
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro F1"),
    ("valence_accuracy", "Valence accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
)


def is_local_backbone(backbone: str) -> bool:
    """A local folder (recorded as an absolute path), not a Hub id."""
    return os.path.isabs(backbone) or Path(backbone).expanduser().is_dir()


def hub_id(backbone: str) -> str | None:
    """The backbone's Hub id: itself, or the repo of a Hugging Face cache snapshot
    (``.../models--owner--name/snapshots/<commit>``); None for any other local folder."""
    if not is_local_backbone(backbone):
        return backbone
    for part in reversed(Path(backbone).parts):
        if part.startswith("models--") and len(part) > len("models--"):
            return part[len("models--") :].replace("--", "/")  # huggingface_hub's folder name
    return None


def adapter_folder(run_or_adapter: str | Path) -> Path:
    """A run folder -> its ``adapter/``; an adapter folder -> itself; else one-line EmoSetError."""
    from emoset_peft.models.folder import RECORD_NAME, check_adapter_folder

    path = Path(run_or_adapter)
    if (path / "adapter" / RECORD_NAME).is_file():
        path = path / "adapter"
    elif not (path / RECORD_NAME).is_file():
        raise EmoSetError(
            f"{path}: neither a run folder (with adapter/) nor an adapter folder (with "
            f"{RECORD_NAME}); give a folder written by emoset-peft train or save_pretrained"
        )
    check_adapter_folder(path)
    return path


def run_info(adapter_dir: str | Path) -> dict | None:
    """The finished run around a run's ``adapter/`` folder: {"config": dict, "metrics": dict},
    or None when the folder is not inside a finished run."""
    run = Path(adapter_dir).parent
    if not ((run / "metrics.json").is_file() and (run / "config.yaml").is_file()):
        return None
    import yaml

    try:
        metrics = json.loads((run / "metrics.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise EmoSetError(
            f"{run}: metrics.json or config.yaml is unreadable ({err}); train the run again"
        ) from None
    return {"config": config, "metrics": metrics, "per_class": _trained_per_class(run)}


def _trained_per_class(run: Path) -> list[int] | None:
    """The images per class the run trained on (its ``train_manifest.json``): the recipe's
    ``data.per_class`` is not it when a manifest or ``allow_fewer`` chose the images."""
    try:
        manifest = json.loads((run / "train_manifest.json").read_text())
        return sorted(int(n) for n in manifest["per_class_counts"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_model_card(out_dir: str | Path, config, metrics: dict) -> None:
    """Rewrite ``out_dir/adapter/README.md`` with the finished run's results (run_training's last
    step). The run is done by then: a card that cannot be written is a warning, not a failure."""
    from emoset_peft.models.folder import read_record

    adapter = Path(out_dir) / "adapter"
    try:
        record = read_record(adapter)
        run = {
            "config": config.to_dict(),
            "metrics": metrics,
            "per_class": _trained_per_class(Path(out_dir)),
        }
        write_card(adapter, record, run=run)
    except (OSError, EmoSetError) as err:
        log.warning("%s: the model card was not written (%s)", adapter / CARD_NAME, err)


def is_toolkit_card(folder: str | Path) -> bool:
    """Whether ``folder/README.md`` is missing or a card this toolkit wrote (its ``MARKER``)."""
    from huggingface_hub import metadata_load

    path = Path(folder) / CARD_NAME
    if not path.exists():
        return True
    try:
        metadata = metadata_load(path)
    except Exception:  # noqa: BLE001 (unreadable or not YAML: not a card of ours)
        return False
    return isinstance(metadata, dict) and metadata.get(MARKER) is True


def write_card(folder: str | Path, record: dict, **kwargs) -> Path:
    """Write ``folder/README.md`` (atomically) from ``card_text(record, **kwargs)``."""
    from emoset_peft.utils.io import atomic_write_text

    path = Path(folder) / CARD_NAME
    atomic_write_text(path, card_text(record, **kwargs))
    return path


def card_text(
    record: dict,
    *,
    run: dict | None = None,
    repo_id: str | None = None,
    trainable: tuple[int, int] | None = None,
    exported: bool = False,
) -> str:
    """The card of a saved folder described by ``record`` (its emoset_peft.json).

    run: {"config", "metrics"} of the finished run, for the data, protocol and results.
    repo_id: where the folder is (or will be) on the Hub, for the loading code.
    trainable: (trainable, total) parameters when no run says it. exported: the card of a merged,
    stand-alone transformers folder (``emoset-peft export``) rather than of an adapter.
    """
    from huggingface_hub import ModelCard

    data = _card_data(record, run, repo_id, exported)
    sections = [
        _title(record, exported),
        _model_section(record, run, trainable, exported),
        _training_section(run),
        _results_section(run),
        _usage_section(record, repo_id, exported),
        _license_section(record),
    ]
    body = "\n\n".join(section for section in sections if section) + "\n"
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _card_data(record, run, repo_id, exported):
    from huggingface_hub import EvalResult, ModelCardData

    backbone, spec = record["backbone"], _spec(record)
    if exported or not spec.freezes_backbone:  # a full fine-tune saves a whole transformers model
        library = "transformers"
    else:
        library = "peft" if spec.plain_peft else "emoset-peft"
    results = []
    metrics = (run or {}).get("metrics") or {}
    for key, name in _METRICS[:3]:
        value = (metrics.get("test") or {}).get(key)
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Visual emotion recognition",
                dataset_type="emoset",
                dataset_name="EmoSet-118K",
                dataset_split="test",
                metric_type=key,
                metric_name=name,
                metric_value=float(value),
            )
        )
    return ModelCardData(
        model_name=repo_id or _model_name(record),
        base_model=hub_id(backbone),
        library_name=library,
        pipeline_tag="image-classification",
        license=LICENSE,
        license_name=LICENSE_NAME,
        tags=["emoset-peft", "emotion-recognition", "emoset", spec.name],
        eval_results=results or None,
        **{MARKER: True},
    )


def _spec(record):
    from emoset_peft.models.methods import get_method

    return get_method(record["method"])


def _family(record) -> str:
    from emoset_peft.models.families import family_for

    return family_for(record["model_type"]).name


def _base_name(record) -> str:
    backbone = record["backbone"]
    return hub_id(backbone) or f"a local {_family(record)} checkpoint ({Path(backbone).name})"


def _model_name(record) -> str:
    base = (hub_id(record["backbone"]) or record["backbone"]).rstrip("/").split("/")[-1]
    return f"{record['method']}-{base}-emoset"


def _title(record, exported) -> str:
    spec = _spec(record)
    what = "merged into a stand-alone transformers model" if exported else "adapter"
    labels = ", ".join(record["id2label"][str(i)] for i in range(record["num_labels"]))
    return (
        f"# {record['method']} on {_base_name(record)} for EmoSet emotion recognition ({what})\n\n"
        f"Fine-tuned with [emoset-peft]({TOOLKIT_URL}) ({spec.name}: {spec.summary}) on "
        f"[EmoSet]({EMOSET_URL}) images. It scores an image against {record['num_labels']} "
        f"classes, in this order: {labels}."
    )


def _model_section(record, run, trainable, exported) -> str:
    backbone, repo = record["backbone"], hub_id(record["backbone"])
    if repo is None:
        base = (
            f"a local folder, not a Hub id: a `{record['model_type']}` checkpoint of the "
            f"{_family(record)} family (`{backbone}` on the machine that trained it)"
        )
    else:
        base = f"[`{repo}`](https://huggingface.co/{repo})"
    rows = [
        ("Base model", base),
        ("Method", f"`{record['method']}`: {_spec(record).summary}"),
        ("Options", _options(record)),
    ]
    metrics = (run or {}).get("metrics") or {}
    if "trainable_params" in metrics:
        trainable = (metrics["trainable_params"], metrics.get("total_params") or 0)
    if trainable is not None:
        count, total = trainable
        share = f" of {total:,} ({100.0 * count / total:.3f}%)" if total else ""
        rows.append(("Trainable parameters", f"{count:,}{share}"))
    spec = record["input_spec"]
    resize = round(spec["image_size"] / spec.get("crop_ratio", 0.875))
    rows.append(
        (
            "Input",
            f"RGB, shorter side resized to {resize} px, centre crop {spec['image_size']} px, "
            f"normalised with mean {_floats(spec['mean'])} and std {_floats(spec['std'])}",
        )
    )
    if exported:
        rows.append(("Format", "the adapter merged into the weights: a plain transformers model"))
    return "## Model\n\n" + _table(rows)


def _options(record) -> str:
    parts = [f"{key}={value}" for key, value in sorted(record["options"].items())]
    for key in ("target_modules", "layers", "quantize", "head_init"):
        value = record.get(key)
        if value:
            parts.append(f"{key}={value}")
    return ", ".join(f"`{part}`" for part in parts) or "none"


def _training_section(run) -> str:
    if not run:
        return ""
    config, metrics = run["config"], run["metrics"]
    data, train = config.get("data", {}), config.get("train", {})
    counts = run.get("per_class")
    if data.get("fraction") is not None:
        amount = f"{data['fraction']:.0%} of each class"
    elif counts:  # what was trained on, not what the recipe asked for
        low, high = counts[0], counts[-1]
        amount = f"{low} per class" if low == high else f"{low}-{high} per class"
    else:
        amount = f"{data.get('per_class')} per class"
    rows = [
        ("EmoSet training images", f"{amount} ({metrics.get('train_images', 0):,} images)"),
        (
            "Seeds",
            f"data seed {data.get('data_seed')} (which images), train seed {train.get('seed')}",
        ),
        ("Validation protocol", _protocol(metrics.get("selection") or {})),
        ("Steps", f"{metrics.get('steps')} optimizer steps, kept step {metrics.get('best_step')}"),
        (
            "Schedule",
            f"lr {train.get('lr')}, batch {train.get('batch_size')}, "
            f"mixed precision {metrics.get('mixed_precision', train.get('mixed_precision'))}",
        ),
    ]
    return "## Training\n\n" + _table(rows)


def _protocol(selection: dict) -> str:
    mode = selection.get("mode")
    if mode == "none":
        return "`none`: no validation images; the last step of the fixed budget is kept"
    per_class = selection.get("images_per_class")
    amount = (
        "all validation images" if per_class is None else f"{per_class} validation images per class"
    )
    return (
        f"`{mode}`: {amount} ({selection.get('images', 0)} images) scored "
        f"{selection.get('evaluations', 0)} times; the best step was kept. The test split was "
        "scored once, after selection"
    )


def _results_section(run) -> str:
    test = ((run or {}).get("metrics") or {}).get("test") or {}
    if not test:
        return ""
    rows = [(name, f"{test[key]:.4f}") for key, name in _METRICS if test.get(key) is not None]
    images = test.get("num_images") or test.get("images")
    where = f" ({images:,} images)" if isinstance(images, int) else ""
    return f"## Results on the EmoSet-118K test split{where}\n\n" + _table(rows)


def _usage_section(record, repo_id, exported) -> str:
    where = repo_id or "path/to/this/folder"
    if exported:
        return (
            "## How to use\n\n```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model={where!r})\n'
            'classifier("photo.jpg")  # [{"label": "awe", "score": ...}, ...]\n```'
        )
    backbone = ""
    if is_local_backbone(record["backbone"]):  # the recorded path is this machine's
        repo = hub_id(record["backbone"])
        backbone = f', backbone="{repo or f"path/to/the/{_family(record)}/checkpoint"}"'
    text = (
        "## How to use\n\n```python\nimport emoset_peft as ep\nfrom transformers import pipeline\n\n"
        f"model = ep.load_adapter({where!r}{backbone})  # = ep.EmoSetModel.from_pretrained(...)\n"
        'classifier = pipeline("image-classification", model=model, '
        "image_processor=model.image_processor())\n"
        'classifier("photo.jpg")  # [{"label": "awe", "score": ...}, ...]\n```'
    )
    if _spec(record).plain_peft:
        from emoset_peft.models.wrapper import plain_peft_snippet

        text += (
            "\n\n## Loading without emoset_peft\n\n```python\n" + plain_peft_snippet(record) + "```"
        )
    return text


def _license_section(record) -> str:
    return (
        "## License\n\nThese weights derive from the base model "
        f"({_base_name(record)}: its license applies) and were trained on EmoSet, which its "
        "authors release for non-commercial research use only."
    )


def _table(rows) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _floats(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
