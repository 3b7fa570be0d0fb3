"""Loading a pretrained vision encoder as an image classifier, from a Hub id or a local folder.

Both go through ``from_pretrained`` (``trust_remote_code=False``, safetensors only), so the tiny
models the tests save to a temporary folder take the same path as ``google/vit-base-patch16-224-in21k``.

The classifier is a transformers model with a linear head named ``classifier``; which class, what
the head reads and the input geometry come from the checkpoint's family (``families.FAMILIES``):
``AutoModelForImageClassification`` for ViT, DINOv2, SigLIP, and
``clip_classifier.EmoSetCLIPForImageClassification`` for CLIP. ``input_spec_for(backbone)`` is
the input geometry both the data pipeline and the model use.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import numbers
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers import logging as hf_logging

from emoset_peft.errors import EmoSetError
from emoset_peft.models.families import Family, InputSpec, family_for

logger = logging.getLogger(__name__)

# A Hub id: "name" or "owner/name" (letters, digits, - _ .), never a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: where it loads from and what kind of encoder it is."""

    source: str | None  # Hub id, or absolute path of a local folder (None: built from a config)
    model_type: str  # transformers model_type of the checkpoint ("vit", "clip", ...)
    architecture: Family  # its family (families.FAMILIES): geometry, loader, role map
    clip_projection: bool | None  # the head sits on CLIP's projected embedding (None: not CLIP)
    clip_text_tower: bool  # the checkpoint has a text tower the zero-shot head can use
    input_spec: InputSpec

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.name
        data["input_spec"] = self.input_spec.to_dict()
        return data


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report and its per-checkpoint progress bar: a text tower or pooler
    the classifier drops is expected, and a bar per cell of a study is noise."""
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_source(backbone: str | os.PathLike) -> str:
    """A local folder -> its absolute path; a plausible Hub id -> itself; anything else -> EmoSetError."""
    if not isinstance(backbone, (str, os.PathLike)):
        hint = ""
        if isinstance(backbone, nn.Module):
            hint = (
                "; for a model in memory, save it with .save_pretrained(folder) and pass the folder"
            )
        raise EmoSetError(
            f"backbone: expected a Hugging Face Hub id or a local folder, got "
            f"{type(backbone).__name__}{hint}"
        )
    text = os.fspath(backbone)
    if not isinstance(text, str):  # a PathLike of bytes
        text = os.fsdecode(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or text.startswith((".", "~")) or ".." in text or not _HUB_ID.fullmatch(text):
        what = (
            f"{path.resolve()} is a file, not a folder"
            if path.exists()
            else f"the folder {path.resolve()} does not exist"
        )
        raise EmoSetError(
            f"backbone {text!r}: no such folder, and not a Hugging Face Hub id (owner/name): "
            f"{what}; give a local folder holding config.json and weights, or a Hub id such as "
            "google/vit-base-patch16-224-in21k"
        )
    return text


def _load_failure(source: str, what: str, err: Exception) -> EmoSetError:
    hint = (
        "check that the folder holds a transformers checkpoint (config.json + *.safetensors)"
        if os.path.isdir(source)
        else "check the Hub id and the network (set HF_HUB_OFFLINE=1 to use only the local cache)"
    )
    reason = " ".join(str(err).split())  # transformers' messages span lines; ours is one
    # A Hub-id-shaped name may have been meant as a folder (model.backbone=my_vit): say both.
    tried = (
        ""
        if os.path.isdir(source)
        else f"no local folder {os.path.abspath(source)}, and as a Hub id: "
    )
    return EmoSetError(
        f"backbone {source!r}: {tried}could not load {what} ({type(err).__name__}: {reason}); "
        f"{hint}"
    )


def load_config(source: str) -> PretrainedConfig:
    """The checkpoint's config, without running remote code (a config asking for it is refused)."""
    try:
        raw, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError, KeyError) as err:
        raise _load_failure(source, "config.json", err) from err
    _refuse_custom_code(source, raw)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise _load_failure(source, "config.json", err) from err


def _refuse_custom_code(source: str, raw: dict) -> None:
    """A config with ``auto_map`` names Python classes shipped inside the checkpoint. We never
    pass trust_remote_code=True (that would run the checkpoint's code), so refuse it up front
    rather than fail inside transformers or quietly build a different, built-in model."""
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    if not auto_map:
        return
    classes = ", ".join(sorted(set(auto_map.values() if isinstance(auto_map, dict) else auto_map)))
    raise EmoSetError(
        f"backbone {source!r}: its config.json has auto_map ({classes}), i.e. model code shipped "
        "with the checkpoint, and emoset_peft never runs such code (trust_remote_code is always "
        "off); use a checkpoint of a built-in transformers model (model_type vit, dinov2, clip, "
        "siglip), e.g. google/vit-base-patch16-224-in21k, or convert it to one"
    )


def read_input_spec(source: str | None, config: PretrainedConfig, family: Family) -> InputSpec:
    """The checkpoint's input geometry: its family's rule applied to config.json and
    preprocessor_config.json (absent or unreadable: the family's fallbacks)."""
    from transformers.image_processing_base import ImageProcessingMixin

    processor = {}
    if source is not None:
        try:
            processor, _ = ImageProcessingMixin.get_image_processor_dict(source)
        except (OSError, ValueError):
            processor = {}
    return family.input_spec(config, processor)


def describe_config(config: PretrainedConfig, source: str) -> Backbone:
    """What kind of encoder ``config`` describes (EmoSetError for an unsupported model_type)."""
    family = family_for(config.model_type)
    return Backbone(
        source=source,
        model_type=config.model_type,
        architecture=family,
        clip_projection=family.loader.projection(config),
        clip_text_tower=family.has_text_tower(config.model_type),
        input_spec=read_input_spec(source, config, family),
    )


def describe_backbone(backbone: str | os.PathLike) -> tuple[Backbone, PretrainedConfig]:
    """Resolve and inspect a backbone (Hub id or folder) without loading its weights."""
    source = resolve_source(backbone)
    config = load_config(source)
    return describe_config(config, source), config


def input_spec_for(backbone: str | os.PathLike) -> InputSpec:
    """The input geometry (size, crop ratio, mean, std) of a backbone, from its config and
    preprocessor alone: the data is decoded with it before the model is built, and the model
    records the same spec (``input_spec(model)``), so training and ``eval`` see the same pixels."""
    return describe_backbone(backbone)[0].input_spec


def label_maps(num_labels: int, id2label) -> tuple[dict[int, str], dict[str, int]]:
    """id2label from a dict or a list of names; default: the 8 emotions, or the 2 valences."""
    from emoset_peft.labels import EMOTIONS, VALENCES

    if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral):
        raise EmoSetError(f"num_labels={num_labels!r} must be an integer (the number of classes)")
    num_labels = int(num_labels)
    if num_labels < 2:
        raise EmoSetError(
            f"num_labels={num_labels} must be >= 2 (a classifier needs at least 2 classes)"
        )
    if id2label is None:
        defaults = {len(EMOTIONS): EMOTIONS, len(VALENCES): VALENCES}
        if num_labels not in defaults:
            raise EmoSetError(
                f"num_labels={num_labels}: give id2label= (the class names in index order)"
            )
        id2label = defaults[num_labels]
    mapping = _id2label(id2label)
    if sorted(mapping) != list(range(num_labels)):
        fix = f"; for these {len(mapping)} names pass num_labels={len(mapping)}" if mapping else ""
        raise EmoSetError(
            f"id2label must name classes 0..{num_labels - 1} (num_labels={num_labels}), got "
            f"indices {sorted(mapping)}{fix}"
        )
    names = list(mapping.values())
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated or "" in names:
        what = f"repeats {repeated}" if repeated else "has an empty name"
        raise EmoSetError(f"id2label {what}; give each class its own name")
    return mapping, {name: index for index, name in mapping.items()}


def _id2label(id2label) -> dict[int, str]:
    """A dict {index: name} or a list of names -> {int index: str name}."""
    if isinstance(id2label, str) or not isinstance(id2label, (dict, list, tuple)):
        raise EmoSetError(
            f"id2label= takes a list of class names or a dict {{index: name}}, got {id2label!r}"
        )
    if isinstance(id2label, (list, tuple)):
        return dict(enumerate(str(name) for name in id2label))
    mapping = {}
    for key, name in id2label.items():
        try:
            mapping[int(key)] = str(name)
        except (TypeError, ValueError):
            raise EmoSetError(
                f"id2label key {key!r} is not a class index; give {{0: name, 1: name, ...}}"
            ) from None
    return mapping


# Set by ``reuse_loaded_backbones()``: (source, labels) -> a loaded classifier that is never
# handed out itself, only copied. None = every build reads the checkpoint again.
_LOADED: dict | None = None


@contextlib.contextmanager
def reuse_loaded_backbones():
    """Within this block each backbone is read from disk once per process; every build gets a
    private deep copy (copying memory is far cheaper than parsing a checkpoint) with a freshly
    initialised head, so no build can see another's weights. Quantized loads are not cached."""
    global _LOADED
    outer, _LOADED = _LOADED, ({} if _LOADED is None else _LOADED)
    try:
        yield _LOADED
    finally:
        _LOADED = outer


def loaded_cache() -> dict | None:
    """The cache of the enclosing ``reuse_loaded_backbones()`` block, None outside one. Keys are
    tuples; other per-process loads (the zero-shot text embeddings) keep their results there too."""
    return _LOADED


def load_classifier(
    info: Backbone,
    config: PretrainedConfig,
    id2label: dict[int, str],
    *,
    quantization_config=None,
) -> nn.Module:
    """The pretrained backbone with a fresh linear head named ``classifier`` (``len(id2label)`` outputs)."""
    if _LOADED is None or quantization_config is not None:
        return _read_classifier(info, config, id2label, quantization_config=quantization_config)
    key = (info.source, tuple(sorted(id2label.items())))
    if key not in _LOADED:
        # Reading draws random numbers (the new head); keep them out of the caller's stream so
        # that a build gives the same model whether or not it was the one that read the disk.
        with torch.random.fork_rng(devices=[]):
            _LOADED[key] = _read_classifier(info, config, id2label)
    network = copy.deepcopy(_LOADED[key])
    # The cached head was initialised once; each build draws its own from the current seed.
    with torch.no_grad():
        network._init_weights(network.classifier)
    return network


def _read_classifier(
    info: Backbone, config: PretrainedConfig, id2label: dict[int, str], *, quantization_config=None
) -> nn.Module:
    kwargs = {"trust_remote_code": False, "use_safetensors": True}
    if quantization_config is not None:
        from emoset_peft.models.quant import kbit_device_map

        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = kbit_device_map()
    try:
        with quiet_transformers():
            return info.architecture.loader.load(
                info.source, config, id2label, info.clip_projection, **kwargs
            )
    except (OSError, ValueError) as err:
        raise _load_failure(info.source, "the weights", err) from err


def classifier_from_config(
    info: Backbone, config: PretrainedConfig, id2label: dict[int, str]
) -> nn.Module:
    """The same classifier with random weights, from a config alone (no download)."""
    return info.architecture.loader.build(config, id2label, info.clip_projection)
