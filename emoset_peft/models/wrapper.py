"""``EmoSetModel``: what ``build_model`` and ``load_adapter`` return, and the helpers the trainer uses.

One wrapper for every method, so the training loop sees one interface:
``model(pixel_values=...) -> .logits``, ``model.save_pretrained(dir)``, ``count_parameters``,
``extra_loss`` and ``after_optimizer_step`` (the last two unwrap DDP / accelerate / torch.compile
wrappers). ``model.network`` is the transformers classifier, or the ``peft.PeftModel`` around it.

What differs per method (extra modules, forward arguments, saved tensors, folder layout, merging,
per-step hooks) is asked of the method's registry entry (``model.spec``, models/methods.py).

Saved folder (``save_pretrained``), all methods: ``emoset_peft.json`` (format version, method,
backbone, options, label map, input spec) plus weights in safetensors:
- PEFT methods: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors`` (adapter and
  the trained head), loadable by plain ``peft.PeftModel.from_pretrained``;
- prefix, vpt, adaptformer, bitfit, linear, zeroshot: ``adapter_model.safetensors`` with the
  method's modules (or, for bitfit, the biases) and the head;
- full: a complete transformers checkpoint (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from emoset_peft.errors import EmoSetError
from emoset_peft.models import methods
from emoset_peft.models.families import InputSpec, family_for
from emoset_peft.models.folder import (  # noqa: F401
    FORMAT_VERSION,
    RECORD_NAME,
    check_adapter_folder,
    remove_stale,
    saved_files,
)

logger = logging.getLogger(__name__)


class EmoSetModel(nn.Module):
    """An image classifier with one fine-tuning method attached.

    ``record`` is the JSON-able description written to ``emoset_peft.json`` (method, backbone,
    options, label map, ...). ``modules``: what the method adds beside the network, by attribute
    name (``prefix``, ``prompts``, ``adaptformer``); saved under that name.

    It fits transformers' conventions where they apply to an inference model: ``config`` (with
    ``id2label``/``label2id``), ``device``, ``dtype``, ``main_input_name`` and an
    ``ImageClassifierOutput``, so ``pipeline("image-classification", model=model,
    image_processor=model.image_processor())`` works for every method; ``from_pretrained``
    (a folder or a Hub repo), ``save_pretrained`` (with a model card) and ``push_to_hub``.
    """

    main_input_name = "pixel_values"  # what transformers' pipelines and Trainer feed
    input_modalities = ("image",)

    def __init__(
        self, network: nn.Module, record: dict, modules: dict[str, nn.Module] | None = None
    ):
        super().__init__()
        self.network = network
        for name, module in (modules or {}).items():
            self.add_module(name, module)
        self.record = record
        self.method_hooks = self.spec.hooks(network)  # per-step work and extra loss (AdaLoRA)
        self.source_dir: Path | None = None  # the folder load_adapter read (its run has the card)

    # -- what the rest of the toolkit reads ---------------------------------------------------
    @property
    def method(self) -> str:
        return self.record["method"]

    @property
    def spec(self) -> methods.MethodSpec:
        """The method's registry entry."""
        return methods.get_method(self.record["method"])

    @property
    def classifier_model(self) -> nn.Module:
        """The transformers classifier (inside the PeftModel for PEFT methods)."""
        getter = getattr(self.network, "get_base_model", None)
        return getter() if getter is not None else self.network

    @property
    def config(self):
        return self.classifier_model.config

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.record["id2label"].items()}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.record["input_spec"])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the weights (what pipeline() casts pixel values to)."""
        for param in self.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def can_generate(self) -> bool:
        return False  # transformers' pipelines ask every model

    def image_processor(self):
        """A transformers image processor with this model's eval geometry (shorter side resized
        to ``image_size / crop_ratio``, centre crop, the backbone's mean/std), for
        ``pipeline("image-classification", ...)``: the run's eval pixels within a grey level,
        the crop one pixel over on some image sizes (``deploy.export.image_processor``);
        ``ep.predict`` reproduces them exactly."""
        from emoset_peft.deploy.export import image_processor

        return image_processor(self.record)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | Path,
        backbone=None,
        *,
        trainable: bool = False,
        revision: str | None = None,
        token: str | None = None,
    ) -> EmoSetModel:
        """``load_adapter`` of a saved folder, a run folder, or a Hub repo pushed with
        ``push_to_hub`` (downloaded to the Hugging Face cache first, at ``revision``)."""
        from emoset_peft.deploy.hub import local_folder
        from emoset_peft.models.adapters import load_adapter

        folder = local_folder(path_or_repo, revision=revision, token=token)
        return load_adapter(folder, backbone, trainable=trainable)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
    ) -> str:
        """Save this model with its card to a temporary folder and upload it to ``repo_id``
        (created if missing). The card has the run's results when the model was loaded from a
        run's ``adapter/`` folder. Returns the URL of the commit."""
        from emoset_peft.deploy.hub import push_model

        return push_model(
            self,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
        )

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        """Logits [B, num_labels]; with ``labels``, also cross-entropy + the method's extra loss."""
        kwargs.update(self.spec.forward_kwargs(self))
        outputs = self.network(pixel_values=pixel_values, **kwargs)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(outputs.logits.float(), labels) + extra_loss(self)
        return ImageClassifierOutput(
            loss=loss,
            logits=outputs.logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # -- saving ---------------------------------------------------------------------------------
    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a folder of a non-PEFT method stores (the method's ``saves``): its modules,
        or bitfit's biases, and the head."""
        spec, head = self.spec, self.record["head"]
        return {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if spec.saves(name, head)
        }

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        is_main_process: bool = True,
        safe_serialization: bool = True,
    ) -> None:
        """Write the adapter (or prefix / prompts / full weights), the head and the label map.

        Under accelerate, call it on every process with ``is_main_process=accelerator.is_main_process``
        (or on the main process only); only the main process writes.
        """
        if not safe_serialization:
            raise EmoSetError(
                "save_pretrained writes safetensors only (no pickled weights); drop safe_serialization=False"
            )
        if not is_main_process:
            return
        from emoset_peft.deploy.card import CARD_NAME, is_toolkit_card, write_card

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        previous = saved_files(path)
        own_card = is_toolkit_card(path)
        self.spec.save(self, path)
        trainable = count_parameters(self)
        # kept so that a model loaded frozen for inference still reports what its method trains
        record = {**self.record, "format_version": FORMAT_VERSION, "trainable_params": trainable[0]}
        (path / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        stale = remove_stale(path, previous)
        if stale:
            logger.info("%s: removed %s of the model saved there before", path, ", ".join(stale))
        if not own_card:
            logger.info("%s: kept %s (not a card emoset_peft wrote)", path, CARD_NAME)
            return
        # A finished run rewrites the card with its results.
        write_card(path, record, trainable=trainable if trainable[0] else None)

    def merge_and_unload(self) -> nn.Module:
        """A plain transformers classifier with the adapter merged into its weights (PEFT tuners).

        linear / bitfit / full / zeroshot have nothing to merge and return the classifier itself;
        prefix, vpt and adaptformer add computation beside the weights (EmoSetError).
        """
        return self.spec.merge_and_unload(self)


def unwrap(model: nn.Module) -> nn.Module:
    """The EmoSetModel inside DDP / accelerate / torch.compile wrappers (or ``model`` itself)."""
    while not isinstance(model, EmoSetModel):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their unpacked size.

    A model that ``load_adapter`` froze for inference reports the parameters its method trains
    (its run's metrics.json ``trainable_params``), as saved with it, not the 0 that require a
    gradient now."""
    model = unwrap(model)
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":
            # Two 4-bit values per byte of storage (as peft.PeftModel.get_nb_trainable_parameters).
            storage = getattr(param, "quant_storage", None)
            count *= 2 * (storage.itemsize if storage is not None else 1)
        total += count
        if param.requires_grad:
            trainable += count
    if trainable == 0 and isinstance(model, EmoSetModel):
        trainable = int(model.record.get("trainable_params") or 0)
    return trainable, total


def input_spec(model_or_backbone) -> InputSpec:
    """Image size and normalisation for a built model, or for a backbone (Hub id / folder)."""
    if isinstance(model_or_backbone, nn.Module):
        model = unwrap(model_or_backbone)
        if not isinstance(model, EmoSetModel):
            raise EmoSetError(
                "input_spec: expected a model from build_model/load_adapter, or a backbone id/folder"
            )
        return model.input_spec
    from emoset_peft.models.backbones import describe_backbone

    return describe_backbone(model_or_backbone)[0].input_spec


def extra_loss(model: nn.Module) -> torch.Tensor | float:
    """The method's extra training loss (AdaLoRA's orthogonality regulariser); 0.0 for the others."""
    model = unwrap(model)
    if not isinstance(model, EmoSetModel):
        return 0.0
    return model.method_hooks.extra_loss(model.network)


def after_optimizer_step(model: nn.Module, global_step: int) -> None:
    """Per-step bookkeeping: AdaLoRA's rank budget (``update_and_allocate``); no-op otherwise.

    Call it once per optimizer step, after ``optimizer.step()``, before or after
    ``optimizer.zero_grad()`` (the last gradients are kept for AdaLoRA's importance scores).
    ``global_step`` counts optimizer steps from 0.
    """
    model = unwrap(model)
    if isinstance(model, EmoSetModel):
        model.method_hooks.after_optimizer_step(model.network, global_step)


def log_parameter_counts(model: EmoSetModel) -> None:
    trainable, total = count_parameters(model)
    logger.info(
        "%s on %s: %s trainable of %s parameters (%.4f%%)",
        model.method,
        model.record["backbone"],
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )


_VIT_LIKE_SNIPPET = """\
from transformers import AutoModelForImageClassification
from peft import PeftModel

# ADAPTER_DIR: this folder (or its Hub repo id); pixel_values: [B, 3, H, W] images normalised as in emoset_peft.json "input_spec"
id2label = {id2label}
base = AutoModelForImageClassification.from_pretrained(
    {backbone!r}, num_labels={num_labels}, id2label=id2label, ignore_mismatched_sizes=True
)
model = PeftModel.from_pretrained(base, ADAPTER_DIR).eval()
logits = model(pixel_values=pixel_values).logits
labels = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
"""

_CLIP_SNIPPET = """\
import torch
from transformers import CLIPVisionModelWithProjection
from peft import PeftModel

# ADAPTER_DIR: this folder (or its Hub repo id); pixel_values: [B, 3, H, W] images normalised as in emoset_peft.json "input_spec"
id2label = {id2label}
base = CLIPVisionModelWithProjection.from_pretrained({backbone!r})
{projection}base.classifier = torch.nn.Linear({width}, {num_labels})  # reads the unit-RMS image embedding
model = PeftModel.from_pretrained(base, ADAPTER_DIR).eval()
embeds = model(pixel_values=pixel_values).image_embeds
logits = model.classifier(torch.nn.functional.normalize(embeds, dim=-1) * embeds.shape[-1] ** 0.5)
labels = [id2label[i] for i in logits.argmax(-1).tolist()]
"""


def plain_peft_snippet(record: dict) -> str:
    """Python that loads a saved PEFT-method folder with transformers + peft only (no emoset_peft)."""
    fields = {
        "backbone": record["backbone"],
        "num_labels": record["num_labels"],
        "id2label": {int(k): v for k, v in record["id2label"].items()},
    }
    if not family_for(record["model_type"]).loader.reads_image_embedding:
        return _VIT_LIKE_SNIPPET.format(**fields)
    if record.get("clip_projection"):
        return _CLIP_SNIPPET.format(**fields, projection="", width="base.config.projection_dim")
    # A vision-only checkpoint has no projection: the head reads the pooled [CLS] features.
    identity = "base.visual_projection = torch.nn.Identity()\n"
    return _CLIP_SNIPPET.format(**fields, projection=identity, width="base.config.hidden_size")


class EmoSetConfig(PretrainedConfig):
    """The transformers config type ``EmoSetModel`` is registered under (model_type
    ``emoset_peft``). transformers' pipelines accept the model classes of their task's auto
    mapping; registering there lets ``pipeline("image-classification", model=EmoSetModel)`` run
    without its "not supported" error. The model's own ``config`` is its classifier's."""

    model_type = "emoset_peft"


def _register_with_transformers() -> None:
    from transformers import AutoModelForImageClassification

    AutoModelForImageClassification.register(EmoSetConfig, EmoSetModel, exist_ok=True)


_register_with_transformers()
