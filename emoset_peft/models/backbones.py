"""Loading a pretrained vision encoder as an image classifier, from a Hub id or a local folder.

Both go through ``from_pretrained`` (``trust_remote_code=False``, safetensors only), so the tiny
models the tests save to a temporary folder take the same path as ``google/vit-base-patch16-224-in21k``.

The classifier is a plain transformers model with a linear head named ``classifier``:

- ViT, DINOv2, SigLIP: ``AutoModelForImageClassification`` (ViT pools the [CLS] token, DINOv2
  [CLS] + mean patch token, SigLIP the mean token).
- CLIP (``CLIPModel``, ``CLIPVisionModelWithProjection`` or ``CLIPVisionModel`` checkpoints):
  ``EmoSetCLIPForImageClassification`` below: vision tower -> pooled [CLS] -> ``visual_projection``
  (when the checkpoint has one) -> L2-normalised and scaled to unit RMS -> linear head. The head
  therefore lives in CLIP's image-text space, which is what makes the zero-shot head (and
  ``head_init="text"``) an exact fold of CLIP's text embeddings into the head weights. Its module
  names equal those of ``CLIPVisionModelWithProjection``, so a saved adapter loads onto that plain
  transformers class (see ``wrapper.plain_peft_snippet``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
)
from transformers import logging as hf_logging
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel

from emoset_peft.errors import EmoSetError
from emoset_peft.models.roles import Architecture, architecture_for

logger = logging.getLogger(__name__)

# A Hub id: "name" or "owner/name" (letters, digits, - _ .), never a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

# Normalisation statistics when a checkpoint has no preprocessor_config.json.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # google ViT and SigLIP
_OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_FALLBACK_STATS = {"vit": _HALF, "dinov2": _IMAGENET, "clip": _OPENAI_CLIP, "siglip": _HALF}


@dataclass(frozen=True)
class InputSpec:
    """What the data pipeline must feed: square images of ``image_size`` px, normalised by mean/std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: where it loads from and what kind of encoder it is."""

    source: str | None  # Hub id, or absolute path of a local folder (None: built from a config)
    model_type: str  # transformers model_type of the checkpoint ("vit", "clip", ...)
    architecture: Architecture
    clip_projection: bool  # CLIP only: the head sits on the projected image embedding
    clip_text_tower: bool  # CLIP only: the checkpoint has a text tower (zero-shot possible)
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
    text = os.fspath(backbone)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or text.startswith((".", "~")) or ".." in text or not _HUB_ID.fullmatch(text):
        what = f"{path.resolve()} is a file, not a folder" if path.exists() else \
            f"the folder {path.resolve()} does not exist"
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
    return EmoSetError(f"backbone {source!r}: could not load {what} ({type(err).__name__}: {reason}); {hint}")


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


def read_input_spec(source: str | None, config: PretrainedConfig, architecture: Architecture) -> InputSpec:
    """Image size and normalisation from preprocessor_config.json, else from the config and the family."""
    from transformers.image_processing_base import ImageProcessingMixin

    processor = {}
    if source is not None:
        try:
            processor, _ = ImageProcessingMixin.get_image_processor_dict(source)
        except (OSError, ValueError):
            processor = {}
    vision = getattr(config, "vision_config", None) or config
    size = None
    crop = processor.get("crop_size") if processor.get("do_center_crop", False) else None
    for entry in (crop, processor.get("size")):
        if isinstance(entry, dict):
            size = entry.get("height") or entry.get("shortest_edge")
        elif isinstance(entry, int):
            size = entry
        if size:
            break
    size = int(size or vision.image_size)
    default_mean, default_std = _FALLBACK_STATS[architecture.name]
    mean = tuple(float(x) for x in processor.get("image_mean") or default_mean)
    std = tuple(float(x) for x in processor.get("image_std") or default_std)
    return InputSpec(size, mean, std)


def describe_config(config: PretrainedConfig, source: str) -> Backbone:
    """What kind of encoder ``config`` describes (EmoSetError for an unsupported model_type)."""
    architecture = architecture_for(config.model_type)
    architectures = set(getattr(config, "architectures", None) or [])
    is_full_clip = config.model_type == "clip"
    return Backbone(
        source=source,
        model_type=config.model_type,
        architecture=architecture,
        clip_projection=is_full_clip or "CLIPVisionModelWithProjection" in architectures,
        clip_text_tower=is_full_clip,
        input_spec=read_input_spec(source, config, architecture),
    )


def describe_backbone(backbone: str | os.PathLike) -> tuple[Backbone, PretrainedConfig]:
    """Resolve and inspect a backbone (Hub id or folder) without loading its weights."""
    source = resolve_source(backbone)
    config = load_config(source)
    return describe_config(config, source), config


def label_maps(num_labels: int, id2label) -> tuple[dict[int, str], dict[str, int]]:
    """id2label from a dict or a list of names; default: the 8 emotions, or the 2 valences."""
    from emoset_peft.labels import EMOTIONS, VALENCES

    if id2label is None:
        defaults = {len(EMOTIONS): EMOTIONS, len(VALENCES): VALENCES}
        if num_labels not in defaults:
            raise EmoSetError(f"num_labels={num_labels}: give id2label= (the class names in index order)")
        id2label = defaults[num_labels]
    if isinstance(id2label, dict):
        mapping = {int(k): str(v) for k, v in id2label.items()}
    else:
        mapping = dict(enumerate(str(name) for name in id2label))
    if sorted(mapping) != list(range(num_labels)):
        raise EmoSetError(f"id2label must name classes 0..{num_labels - 1}, got indices {sorted(mapping)}")
    return mapping, {name: index for index, name in mapping.items()}


class EmoSetCLIPForImageClassification(CLIPVisionModelWithProjection):
    """CLIP vision tower + ``visual_projection`` + a linear head on the unit-RMS image embedding.

    ``features = normalize(visual_projection(pooled CLS)) * sqrt(dim)``: the image embedding scaled
    to unit root-mean-square, so a randomly initialised head trains at the same pace as on ViT's
    layer-normed [CLS], and the zero-shot head is the text embeddings times
    ``logit_scale / sqrt(dim)``. ``config.emoset_use_projection=False`` (vision-only checkpoints
    without a projection) makes ``visual_projection`` the identity.
    """

    def __init__(self, config: CLIPVisionConfig):
        CLIPPreTrainedModel.__init__(self, config)
        self.vision_model = CLIPVisionModel._from_config(config)
        if getattr(config, "emoset_use_projection", True):
            self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            feature_dim = config.projection_dim
        else:
            self.visual_projection = nn.Identity()
            feature_dim = config.hidden_size
        self.classifier = nn.Linear(feature_dim, config.num_labels)
        self.post_init()

    def image_features(self, pixel_values, interpolate_pos_encoding=False, **kwargs):
        """The unit-RMS image embedding the head reads, and the vision tower's outputs."""
        outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        embeds = self.visual_projection(outputs.pooler_output)
        return F.normalize(embeds, dim=-1) * math.sqrt(embeds.shape[-1]), outputs

    def forward(self, pixel_values=None, labels=None, interpolate_pos_encoding=False, **kwargs):
        features, outputs = self.image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _clip_vision_config(config: PretrainedConfig, info: Backbone) -> CLIPVisionConfig:
    if isinstance(config, CLIPConfig):
        vision = CLIPVisionConfig(**config.vision_config.to_dict())
        # The projection width lives on the top-level config of a full CLIP checkpoint.
        vision.projection_dim = config.projection_dim
    else:
        vision = CLIPVisionConfig(**config.to_dict())
    vision.emoset_use_projection = info.clip_projection
    vision.architectures = [EmoSetCLIPForImageClassification.__name__]
    return vision


def _labels(id2label: dict[int, str]) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


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


def _read_classifier(info: Backbone, config: PretrainedConfig, id2label: dict[int, str], *,
                     quantization_config=None) -> nn.Module:
    kwargs = {"trust_remote_code": False, "use_safetensors": True}
    if quantization_config is not None:
        from emoset_peft.models.quant import kbit_device_map

        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = kbit_device_map()
    try:
        with quiet_transformers():
            if info.architecture.name == "clip":
                vision = _clip_vision_config(config, info)
                vision.update(_labels(id2label))
                return EmoSetCLIPForImageClassification.from_pretrained(info.source, config=vision, **kwargs)
            # A checkpoint that already has a head (e.g. 1000 ImageNet classes) gets a new one.
            return AutoModelForImageClassification.from_pretrained(
                info.source, ignore_mismatched_sizes=True, **_labels(id2label), **kwargs
            )
    except (OSError, ValueError) as err:
        raise _load_failure(info.source, "the weights", err) from err


def classifier_from_config(info: Backbone, config: PretrainedConfig, id2label: dict[int, str]) -> nn.Module:
    """The same classifier with random weights, from a config alone (no download)."""
    if info.architecture.name == "clip":
        vision = _clip_vision_config(config, info)
        vision.update(_labels(id2label))
        return EmoSetCLIPForImageClassification(vision)
    config = copy.deepcopy(config)
    config.update(_labels(id2label))
    return AutoModelForImageClassification.from_config(config)
