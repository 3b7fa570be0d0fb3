"""``build_model`` and ``load_adapter``: backbone + head + one method (registry in methods.py).

Methods (``METHODS``): eight PEFT tuners (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``, ``oft``,
``vera``, ``adalora``; ``task_type=None``, explicit ``target_modules`` from the role map,
``modules_to_save=["classifier"]``), ``prefix`` and ``vpt`` (prompts.py), ``adaptformer``
(adaptformer.py), ``bitfit`` (biases), ``linear`` (head only), ``full`` (every weight) and
``zeroshot`` (CLIP text head, nothing trained). What each does is its registry entry
(models/methods.py); this module only assembles: backbone -> freeze -> the entry's ``attach``.
Each method's options are a dataclass; an unknown option is an EmoSetError naming the valid ones.

Loading a saved PEFT-method folder without emoset_peft (``wrapper.plain_peft_snippet`` writes the same
recipe into the folder's README.md)::

    # ViT (and DINOv2 / SigLIP through AutoModelForImageClassification)
    from transformers import ViTForImageClassification
    from peft import PeftModel
    id2label = dict(enumerate(ep.EMOTIONS))  # as in emoset_peft.json: the emotion names
    base = ViTForImageClassification.from_pretrained(
        backbone, num_labels=8, id2label=id2label, ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    logits = model(pixel_values=x).logits  # model.config.id2label[i] names class i

    # CLIP: the adapter's module names are those of CLIPVisionModelWithProjection; add the head
    import torch
    from transformers import CLIPVisionModelWithProjection
    base = CLIPVisionModelWithProjection.from_pretrained(backbone)
    # vision-only checkpoint without a projection: base.visual_projection = torch.nn.Identity()
    base.classifier = torch.nn.Linear(base.config.projection_dim, 8)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    embeds = model(pixel_values=x).image_embeds
    logits = model.classifier(torch.nn.functional.normalize(embeds, dim=-1) * embeds.shape[-1] ** 0.5)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from emoset_peft.errors import EmoSetError
from emoset_peft.models import backbones, methods, quant, roles, zeroshot
from emoset_peft.models.folder import FORMAT_VERSION, check_adapter_folder, read_record
from emoset_peft.models.kinds import Site
from emoset_peft.models.methods import MERGEABLE, METHODS, REGISTRY  # noqa: F401 (public names)
from emoset_peft.models.wrapper import EmoSetModel, log_parameter_counts


# -- assembling ----------------------------------------------------------------------------------
def _enable_checkpointing(network: nn.Module) -> None:
    # Non-reentrant checkpointing: gradients reach the adapters even though the frozen inputs of
    # each layer do not require grad, and keyword arguments (the prefixes) are handled.
    kwargs = {"use_reentrant": False}
    if hasattr(network, "activation_checkpointing_enable"):  # transformers >= 5.x
        network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _assemble(
    network,
    spec,
    options,
    info,
    record,
    *,
    targets,
    layers,
    quantize,
    gradient_checkpointing,
    total_steps,
) -> EmoSetModel:
    """Freeze what ``spec`` does not train and attach its trainable parts; returns the EmoSetModel."""
    head = getattr(network, info.architecture.head)
    for param in network.parameters():
        param.requires_grad = not spec.freezes_backbone
    for param in head.parameters():
        param.requires_grad = spec.trains_head or not spec.freezes_backbone
    if quantize:
        network = quant.prepare_for_training(network)
    if gradient_checkpointing:
        _enable_checkpointing(network)
    site = Site(info.architecture, targets, layers, total_steps, record)
    network, modules = spec.attach(network, options, site)
    device = next(network.parameters()).device
    return EmoSetModel(
        network, record, {name: module.to(device) for name, module in modules.items()}
    )


def _check_method_fit(spec, info, *, targets, layers, quantize, head_init, total_steps):
    """EmoSetError for option combinations that do not fit, before any weights are loaded."""
    if spec.needs_total_steps and not total_steps:
        raise EmoSetError(
            f"method {spec.name!r} needs total_steps= (the number of optimizer steps of the run)"
        )
    if targets is not None and not spec.takes_targets:
        raise EmoSetError(
            f"targets= only applies to the PEFT methods ({', '.join(methods.named(lambda s: s.takes_targets))}); "
            f"method {spec.name!r} does not take it"
        )
    if layers is not None and not spec.takes_layers:
        raise EmoSetError(
            f"layers= applies to {', '.join(methods.named(lambda s: s.takes_layers))}; "
            f"method {spec.name!r} does not take it"
        )
    quant.check_quantizable(spec, quantize)
    if head_init not in (None, "text"):
        raise EmoSetError(
            f"head_init={head_init!r}: use 'text' (CLIP text-embedding head) or leave it out"
        )
    wants_text = spec.text_head or head_init == "text"
    if wants_text and not info.clip_text_tower:
        what = f"method {spec.name!r}" if spec.text_head else "head_init='text'"
        raise EmoSetError(
            f"{what} needs a full CLIP checkpoint (text tower + tokenizer); backbone {info.source!r} "
            f"is model_type {info.model_type!r}"
        )


def build_model(
    backbone,
    method: str,
    num_labels: int = 8,
    *,
    id2label=None,
    targets=None,
    layers=None,
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    total_steps: int | None = None,
    head_init: str | None = None,
    **method_options,
) -> EmoSetModel:
    """A pretrained encoder (Hub id or local folder) + linear head + ``method``, ready to train.

    targets: roles ("q", "k", "v", "out", "mlp_in", "mlp_out") for PEFT methods (defaults per
    method: LoRA q, v; IA3 k, v, mlp_out). layers: restrict depth (indices, negative from the end).
    quantize: "8bit" | "4bit" (lora, ia3, adalora; dora 4-bit only). total_steps: needed by adalora
    (the number of optimizer steps), ignored by the other methods.
    head_init="text": start a CLIP head from the zero-shot text embeddings. method_options: the
    method's options (e.g. r, alpha, dropout, prefix_length, num_prompts, deep, bottleneck, scale).
    """
    spec = methods.get_method(method)
    options = methods.make_options(spec, method_options)
    info, config = backbones.describe_backbone(backbone)
    model = _build(
        spec,
        options,
        info,
        config,
        num_labels,
        id2label=id2label,
        targets=targets,
        layers=layers,
        quantize=quantize,
        gradient_checkpointing=gradient_checkpointing,
        total_steps=total_steps,
        head_init=head_init,
    )
    log_parameter_counts(model)
    return model


def build_model_from_config(
    config,
    method: str,
    num_labels: int = 8,
    *,
    id2label=None,
    targets=None,
    layers=None,
    total_steps: int | None = None,
    **method_options,
) -> EmoSetModel:
    """``build_model`` on a random-init backbone from a transformers config (no download, no weights).

    Build under ``with torch.device("meta"):`` to count the parameters of a large model without
    allocating it (what benchmarks/count_params.py does). The zero-shot head stays random here.
    """
    spec = methods.get_method(method)
    options = methods.make_options(spec, method_options)
    info = backbones.describe_config(config, None)
    where = dict(id2label=id2label, targets=targets, layers=layers, total_steps=total_steps)
    model = _build(spec, options, info, config, num_labels, **where)
    log_parameter_counts(model)
    return model


def check_build(
    backbone,
    method: str,
    num_labels: int = 8,
    *,
    targets=None,
    layers=None,
    quantize: str | None = None,
    total_steps: int | None = None,
    head_init: str | None = None,
    **method_options,
) -> None:
    """Every check ``build_model`` makes, on the backbone's config alone: the network is built on
    the meta device (no weights read, nothing allocated), so a bad target role, layer,
    method/backbone pairing or quantization is an ``EmoSetError`` before any image is decoded."""
    import torch

    spec = methods.get_method(method)
    options = methods.make_options(spec, method_options)
    info, config = backbones.describe_backbone(backbone)
    fit = dict(targets=targets, layers=layers, head_init=head_init, total_steps=total_steps)
    _check_method_fit(spec, info, quantize=quantize, **fit)
    with torch.device("meta"):  # quantization is checked above; bitsandbytes needs real weights
        _build(spec, options, backbones.describe_config(config, None), config, num_labels, **fit)


def _build(
    spec,
    options,
    info,
    config,
    num_labels,
    *,
    id2label=None,
    targets=None,
    layers=None,
    quantize=None,
    gradient_checkpointing=False,
    total_steps=None,
    head_init=None,
) -> EmoSetModel:
    """The one build path; ``info.source`` None means random weights from ``config`` alone."""
    targets = roles.as_roles(targets)
    _check_method_fit(
        spec,
        info,
        targets=targets,
        layers=layers,
        quantize=quantize,
        head_init=head_init,
        total_steps=total_steps,
    )
    label_map, _ = backbones.label_maps(num_labels, id2label)
    network = _base_network(info, config, label_map, quantize)
    if info.source is not None and (spec.text_head or head_init == "text"):
        templates = options.templates if spec.text_head else zeroshot.DEFAULT_TEMPLATES
        names = [label_map[i] for i in range(num_labels)]
        text_embeds, scale = zeroshot.class_text_embeddings(info.source, names, templates)
        zeroshot.set_text_head(
            network.classifier, text_embeds.to(network.classifier.weight.dtype), scale
        )
    record = _new_record(
        spec,
        options,
        info,
        network,
        label_map,
        layers=layers,
        quantize=quantize,
        head_init=head_init,
        total_steps=total_steps,
    )
    return _assemble(
        network,
        spec,
        options,
        info,
        record,
        targets=targets,
        layers=layers,
        quantize=quantize,
        gradient_checkpointing=gradient_checkpointing,
        total_steps=total_steps,
    )


def _base_network(info, config, label_map, quantize) -> nn.Module:
    """The backbone with a fresh head: pretrained (quantized if asked), or random from the config."""
    if info.source is None:
        return backbones.classifier_from_config(info, config, label_map)
    qconfig = quant.quantization_config(quantize) if quantize else None
    network = backbones.load_classifier(info, config, label_map, quantization_config=qconfig)
    if quantize:
        quant.keep_cpu_packing_in_bounds(network)
    return network


def _new_record(
    spec, options, info, network, label_map, *, layers, quantize, head_init, total_steps
) -> dict:
    """What ``emoset_peft.json`` says about a model (targets are filled in by ``_attach``)."""
    return {
        "library": "emoset_peft",
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "kind": spec.kind,
        "backbone": info.source,
        "model_type": info.model_type,
        "classifier_class": type(network).__name__,
        "head": info.architecture.head,
        "num_labels": len(label_map),
        "id2label": {str(i): name for i, name in label_map.items()},
        "options": dataclasses.asdict(options),
        "targets": None,
        "layers": [layers]
        if isinstance(layers, int)
        else (list(layers) if layers is not None else None),
        "target_modules": None,
        "quantize": quantize,
        "head_init": head_init,
        "total_steps": total_steps,
        "clip_projection": info.clip_projection,
        "input_spec": info.input_spec.to_dict(),
    }


@dataclass
class Loading:
    """What a method's ``load`` (models/kinds.py) gets: the folder, the backbone, and how to build."""

    path: Path
    info: backbones.Backbone
    config: object
    record: dict
    options: object
    trainable: bool

    def classifier(self) -> nn.Module:
        """The backbone with a fresh head, quantized as recorded (prepared when training goes on)."""
        quantize = self.record.get("quantize")
        network = _base_network(self.info, self.config, self.label_map, quantize)
        return quant.prepare_for_training(network) if quantize and self.trainable else network

    def saved_classifier(self) -> nn.Module:
        """The complete classifier saved in the folder (full fine-tuning)."""
        return _load_full(self.path, self.info)

    def assemble(self, network: nn.Module) -> EmoSetModel:
        """``network`` with the method attached as ``build_model`` did, before training."""
        spec = methods.get_method(self.record["method"])
        return _assemble(
            network,
            spec,
            self.options,
            self.info,
            self.record,
            targets=None,
            layers=self.record.get("layers"),
            quantize=None,
            gradient_checkpointing=False,
            total_steps=None,
        )

    def wrap(self, network: nn.Module) -> EmoSetModel:
        return EmoSetModel(network, self.record)

    @property
    def label_map(self) -> dict[int, str]:
        return {int(k): v for k, v in self.record["id2label"].items()}


def load_adapter(path: str | Path, backbone=None, *, trainable: bool = False) -> EmoSetModel:
    """Rebuild a model saved by ``EmoSetModel.save_pretrained``, any method, in eval mode.

    path: the saved folder, a run folder (its ``adapter/``), or a Hub repo id (``push``).
    backbone: where to load the base weights from; default the backbone recorded in the folder.
    trainable=True keeps the method's parameters trainable (to continue training).
    """
    from emoset_peft.deploy.hub import local_folder

    path = local_folder(path)
    check_adapter_folder(path)
    record = read_record(path)
    spec = methods.get_method(record["method"])
    saved_on = record["backbone"]
    try:
        info, config = backbones.describe_backbone(backbone or saved_on)
    except EmoSetError as err:
        if backbone is not None:
            raise
        raise EmoSetError(
            f"{path} was saved on backbone {saved_on!r}, which cannot be loaded ({err}); pass "
            "load_adapter(..., backbone=<that model's folder or Hub id>)"
        ) from err
    if info.model_type != record["model_type"]:
        raise EmoSetError(
            f"{path}: saved on a {record['model_type']!r} backbone, "
            f"but {info.source!r} is {info.model_type!r}"
        )
    record = {**record, "backbone": info.source}
    options = methods.make_options(spec, record["options"])
    try:
        model = spec.load(Loading(path, info, config, record, options, trainable))
    except RuntimeError as err:
        if "size mismatch" not in str(err):  # torch's message for weights of another shape
            raise
        raise EmoSetError(
            f"{path}: its weights do not fit backbone {info.source!r} (another size of "
            f"{info.model_type!r}); load it on the backbone it was trained on, "
            f"{saved_on!r} when saved"
        ) from err
    if not trainable:
        for param in model.parameters():
            param.requires_grad = False
    model.source_dir = path.resolve()
    return model.eval()


def _load_full(path: Path, info: backbones.Backbone) -> nn.Module:
    cls = info.architecture.loader.classifier_class()
    with backbones.quiet_transformers():
        return cls.from_pretrained(str(path), trust_remote_code=False, use_safetensors=True)
