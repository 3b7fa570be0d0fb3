"""Backbone families: what the toolkit knows about one kind of vision encoder, in one entry.

Like timm's pretrained cfg, a ``Family`` holds every fact that differs between encoders:

- ``model_types``: the transformers ``model_type`` values it covers;
- input geometry: normalisation to use when a checkpoint has no preprocessor_config.json, the
  eval crop ratio, and whether the encoder interpolates its position embeddings (then the input
  size is the preprocessor's, else the one the config was built for);
- ``loader``: how a checkpoint becomes a classifier with a linear head named ``classifier``, and
  ``pooled_feature``: what that head reads;
- ``text_tower_types``: the model types whose checkpoints carry a text tower the zero-shot head
  (``method="zeroshot"``, ``head_init="text"``) can use;
- the role map (``layer_pattern``, ``role_suffixes``): where adapters go (see roles.py).

Adding a family is one entry in ``FAMILIES`` (and a tiny checkpoint kind in tiny.py, so the tests
cover it). This module imports no torch or transformers: the data side reads ``InputSpec`` and
the crop ratio from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emoset_peft.errors import EmoSetError

# EmoSet's eval protocol: Resize(size / 0.875) + CenterCrop(size), i.e. 256 -> 224.
DEFAULT_EVAL_CROP_RATIO = 0.875

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # google ViT and SigLIP
OPENAI_CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class InputSpec:
    """What the data pipeline must feed: images decoded to squares of ``image_size / crop_ratio``
    px, centre-cropped (eval) or random-resized-cropped (train) to ``image_size``, normalised."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_ratio: float = DEFAULT_EVAL_CROP_RATIO

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_ratio": self.crop_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        # Folders saved before crop_ratio was recorded were all decoded at the default.
        return cls(
            int(data["image_size"]),
            tuple(data["mean"]),
            tuple(data["std"]),
            float(data.get("crop_ratio", DEFAULT_EVAL_CROP_RATIO)),
        )


def _labels(id2label: dict[int, str]) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


class AutoClassifierLoader:
    """transformers' own ``AutoModelForImageClassification`` (ViT, DINOv2, SigLIP, ...)."""

    reads_image_embedding = False  # the head reads the encoder's pooled output

    def projection(self, config) -> bool | None:
        """Whether the head sits on a projected image embedding (None: no such choice here)."""
        return None

    def classifier_class(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def load(self, source: str, config, id2label: dict[int, str], projection, **kwargs):
        # A checkpoint that already has a head (e.g. 1000 ImageNet classes) gets a new one.
        return self.classifier_class().from_pretrained(
            source, ignore_mismatched_sizes=True, **_labels(id2label), **kwargs
        )

    def build(self, config, id2label: dict[int, str], projection):
        """The same classifier with random weights, from the config alone."""
        import copy

        config = copy.deepcopy(config)
        config.update(_labels(id2label))
        return self.classifier_class().from_config(config)


class CLIPClassifierLoader(AutoClassifierLoader):
    """``clip_classifier.EmoSetCLIPForImageClassification``: vision tower -> projection -> head on
    the unit-RMS image embedding (CLIPModel, CLIPVisionModel[WithProjection] checkpoints)."""

    reads_image_embedding = True

    def projection(self, config) -> bool:
        # A full CLIPModel has visual_projection; of the vision-only ones, only "...WithProjection".
        architectures = set(getattr(config, "architectures", None) or [])
        return config.model_type == "clip" or "CLIPVisionModelWithProjection" in architectures

    def classifier_class(self):
        from emoset_peft.models.clip_classifier import EmoSetCLIPForImageClassification

        return EmoSetCLIPForImageClassification

    def _config(self, config, id2label, projection):
        from emoset_peft.models.clip_classifier import clip_vision_config

        vision = clip_vision_config(config, projection)
        vision.update(_labels(id2label))
        return vision

    def load(self, source: str, config, id2label: dict[int, str], projection, **kwargs):
        return self.classifier_class().from_pretrained(
            source, config=self._config(config, id2label, projection), **kwargs
        )

    def build(self, config, id2label: dict[int, str], projection):
        return self.classifier_class()(self._config(config, id2label, projection))


# Suffixes inside one encoder layer, transformers 5.x first, then 4.x.
_VIT_LIKE = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "out": ("attention.o_proj", "attention.output.dense"),
    "mlp_in": ("mlp.fc1", "intermediate.dense"),
    "mlp_out": ("mlp.fc2", "output.dense"),
}
_CLIP_LIKE = {
    "q": ("self_attn.q_proj",),
    "k": ("self_attn.k_proj",),
    "v": ("self_attn.v_proj",),
    "out": ("self_attn.out_proj",),
    "mlp_in": ("mlp.fc1",),
    "mlp_out": ("mlp.fc2",),
}


@dataclass(frozen=True)
class Family:
    """One family of vision encoders: its geometry, its classifier and where its adapters go."""

    name: str
    model_types: tuple[str, ...]
    # Full-matches the module name of encoder layer N (group 1 = N), and nothing outside the
    # vision tower. Optional prefixes cover the classifier wrapper and the 4.x nesting.
    layer_pattern: str
    role_suffixes: dict[str, tuple[str, ...]] = field(hash=False)
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] = IMAGENET_STATS
    pooled_feature: str = "[CLS] token"
    loader: AutoClassifierLoader = field(
        default_factory=AutoClassifierLoader, hash=False, compare=False
    )
    text_tower_types: tuple[str, ...] = ()
    interpolates_positions: bool = False  # False: input size = the config's image_size
    eval_crop_ratio: float = DEFAULT_EVAL_CROP_RATIO
    has_cls_token: bool = True
    head: str = "classifier"

    def has_text_tower(self, model_type: str) -> bool:
        return model_type in self.text_tower_types

    def input_spec(self, config, processor: dict) -> InputSpec:
        """The input geometry of one checkpoint from its config and preprocessor_config.json
        (``{}`` when it has none). The one place the input size is worked out."""
        vision = getattr(config, "vision_config", None) or config
        size = int(vision.image_size)
        if self.interpolates_positions:
            # e.g. facebook/dinov2-base: config 518 (pretraining), preprocessor crop 224.
            size = _processor_size(processor) or size
        mean, std = self.stats
        return InputSpec(
            size,
            tuple(float(x) for x in processor.get("image_mean") or mean),
            tuple(float(x) for x in processor.get("image_std") or std),
            self.eval_crop_ratio,
        )


def _processor_size(processor: dict) -> int | None:
    """The size an image processor hands the model: its crop, else its resize target."""
    crop = processor.get("crop_size") if processor.get("do_center_crop", False) else None
    for entry in (crop, processor.get("size")):
        if isinstance(entry, dict):
            size = entry.get("height") or entry.get("shortest_edge")
        else:
            size = entry if isinstance(entry, int) else None
        if size:
            return int(size)
    return None


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "vit",
            ("vit",),
            r"(?:vit\.)?(?:layers|encoder\.layer)\.(\d+)",
            _VIT_LIKE,
            stats=HALF_STATS,
            pooled_feature="[CLS] token after the final layer norm",
        ),
        Family(
            "dinov2",
            ("dinov2",),
            r"(?:dinov2\.)?encoder\.layer\.(\d+)",
            {
                **_VIT_LIKE,
                "mlp_in": ("mlp.fc1", "mlp.weights_in"),
                "mlp_out": ("mlp.fc2", "mlp.weights_out"),
            },
            pooled_feature="[CLS] token concatenated with the mean patch token",
            interpolates_positions=True,
        ),
        # 5.x CLIPVisionModel has no ``vision_model.`` level; CLIPModel and 4.x do.
        Family(
            "clip",
            ("clip", "clip_vision_model"),
            r"(?:vision_model\.)?encoder\.layers\.(\d+)",
            _CLIP_LIKE,
            stats=OPENAI_CLIP_STATS,
            pooled_feature="[CLS] token -> visual_projection (if any) -> unit-RMS embedding",
            loader=CLIPClassifierLoader(),
            text_tower_types=("clip",),
        ),
        Family(
            "siglip",
            ("siglip",),
            r"(?:vision_model\.)?encoder\.layers\.(\d+)",
            _CLIP_LIKE,
            stats=HALF_STATS,
            pooled_feature="mean of the patch tokens",
            has_cls_token=False,
        ),
    )
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES.values() for t in f.model_types)


def family_for(model_type: str) -> Family:
    """The family of a transformers ``model_type``; EmoSetError naming the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise EmoSetError(
        f"unsupported backbone architecture: model_type {model_type!r}; "
        f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
