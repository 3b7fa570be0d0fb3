"""``build_model`` and ``load_adapter``: backbone + head + one method (registry in methods.py).

Methods (``METHODS``): eight PEFT tuners (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``, ``oft``,
``vera``, ``adalora``; ``task_type=None``, explicit ``target_modules`` from the role map,
``modules_to_save=["classifier"]``), ``prefix`` and ``vpt`` (built here, see prompts.py),
``linear`` (head only), ``full`` (every weight) and ``zeroshot`` (CLIP text head, nothing trained).
Each method's options are a dataclass; an unknown option is an EmoSetError naming the valid ones.

Loading a saved PEFT-method folder without emoset_peft (``wrapper.plain_peft_snippet`` writes the same
recipe into the folder's README.md)::

    # ViT (and DINOv2 / SigLIP through AutoModelForImageClassification)
    from transformers import ViTForImageClassification
    from peft import PeftModel
    base = ViTForImageClassification.from_pretrained(backbone, num_labels=8, ignore_mismatched_sizes=True)
    # (id2label=... as in emoset_peft.json gives the plain model the emotion names too)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    logits = model(pixel_values=x).logits

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
import json
from pathlib import Path

from torch import nn

from emoset_peft.errors import EmoSetError
from emoset_peft.models import backbones, methods, prompts, quant, roles, zeroshot
from emoset_peft.models.methods import MERGEABLE, METHODS, REGISTRY  # noqa: F401 (public names)
from emoset_peft.models.wrapper import (
    FORMAT_VERSION,
    RECORD_NAME,
    WEIGHTS_NAME,
    EmoSetModel,
    check_adapter_folder,
    log_parameter_counts,
)


# -- assembling ----------------------------------------------------------------------------------
def _module_names(network: nn.Module) -> list[str]:
    return [name for name, _ in network.named_modules()]


def _encoder_layers(network: nn.Module, arch: roles.Architecture) -> list[nn.Module]:
    modules = dict(network.named_modules())
    return [modules[name] for name in roles.layer_names(modules, arch)]


def _attention_modules(network: nn.Module, arch: roles.Architecture) -> list[nn.Module]:
    """Per layer, the module that calls the attention function (the parent of the q projection)."""
    modules = dict(network.named_modules())
    queries = roles.resolve_targets(modules, arch, ["q"])
    return [modules[name.rsplit(".", 1)[0]] for name in queries]


def _vision_config(network: nn.Module):
    config = network.config
    return getattr(config, "vision_config", None) or config


def _enable_checkpointing(network: nn.Module) -> None:
    # Non-reentrant checkpointing: gradients reach the adapters even though the frozen inputs of
    # each layer do not require grad, and keyword arguments (the prefixes) are handled.
    kwargs = {"use_reentrant": False}
    if hasattr(network, "activation_checkpointing_enable"):  # transformers >= 5.x
        network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attach(
    network, spec, options, info, record, *, targets, layers, quantize, gradient_checkpointing, total_steps
):
    """Freeze the classifier and attach ``spec``'s trainable parts; returns the EmoSetModel."""
    arch = info.architecture
    head = getattr(network, arch.head)
    for param in network.parameters():
        param.requires_grad = spec.kind == "full"
    if spec.kind in ("linear", "prefix", "vpt"):
        for param in head.parameters():
            param.requires_grad = True
    prefix = visual = None
    if spec.kind == "peft":
        if quantize:
            network = quant.prepare_for_training(network)
        if gradient_checkpointing:
            _enable_checkpointing(network)
        names = _module_names(network)
        wanted = list(targets) if targets is not None else list(spec.roles)
        target_modules = roles.resolve_targets(names, arch, wanted, layers)
        feedforward = [n for n, role in roles.roles_of(target_modules, arch).items() if role == "mlp_out"]
        config = methods.peft_config(spec, options, target_modules, feedforward, arch.head, total_steps)
        import peft

        network = peft.get_peft_model(network, config)
        record["target_modules"] = target_modules
        record["targets"] = wanted
    else:
        if gradient_checkpointing:
            _enable_checkpointing(network)
        vision = _vision_config(network)
        if spec.kind == "prefix":
            attention = _attention_modules(network, arch)
            keep = roles.normalize_layers(layers, len(attention))
            heads = vision.num_attention_heads
            prefix = prompts.PrefixTuning(
                num_layers=len(keep),
                num_heads=heads,
                head_dim=vision.hidden_size // heads,
                prefix_length=options.prefix_length,
                reparameterize=options.reparameterize,
                reparam_hidden=options.reparam_hidden,
                dropout=options.dropout,
            )
            prompts.attach_prefix([attention[i] for i in keep], network)
        elif spec.kind == "vpt":
            layers_in_order = _encoder_layers(network, arch)
            visual = prompts.VisualPrompts(
                num_layers=len(layers_in_order),
                hidden_size=vision.hidden_size,
                num_prompts=options.num_prompts,
                deep=options.deep,
                dropout=options.dropout,
                insert_at=1 if arch.has_cls_token else 0,
                patch_dim=vision.num_channels * vision.patch_size**2,
            )
            visual.attach(layers_in_order)
    device = next(network.parameters()).device
    return EmoSetModel(
        network,
        record,
        prefix=prefix.to(device) if prefix is not None else None,
        prompts=visual.to(device) if visual is not None else None,
    )


def _check_method_fit(spec, info, *, targets, layers, quantize, head_init, total_steps):
    """EmoSetError for option combinations that do not fit, before any weights are loaded."""
    if spec.name == "adalora" and not total_steps:
        raise EmoSetError("method 'adalora' needs total_steps= (the number of optimizer steps of the run)")
    if targets is not None and spec.kind != "peft":
        raise EmoSetError(f"targets= only applies to the PEFT methods; method {spec.name!r} does not take it")
    if layers is not None and spec.kind not in ("peft", "prefix"):
        raise EmoSetError(
            f"layers= applies to the PEFT methods and prefix; method {spec.name!r} does not take it"
        )
    quant.check_quantizable(spec.name, quantize)
    if head_init not in (None, "text"):
        raise EmoSetError(f"head_init={head_init!r}: use 'text' (CLIP text-embedding head) or leave it out")
    wants_text = spec.kind == "zeroshot" or head_init == "text"
    if wants_text and not info.clip_text_tower:
        what = "method 'zeroshot'" if spec.kind == "zeroshot" else "head_init='text'"
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
    method's options (e.g. r, alpha, dropout, prefix_length, num_prompts, deep).
    """
    spec = methods.get_method(method)
    options = methods.make_options(spec, method_options)
    info, config = backbones.describe_backbone(backbone)
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
    qconfig = quant.quantization_config(quantize) if quantize else None
    network = backbones.load_classifier(info, config, label_map, quantization_config=qconfig)
    if quantize:
        quant.keep_cpu_packing_in_bounds(network)
    if spec.kind == "zeroshot" or head_init == "text":
        templates = options.templates if spec.kind == "zeroshot" else zeroshot.DEFAULT_TEMPLATES
        names = [label_map[i] for i in range(num_labels)]
        text_embeds, scale = zeroshot.class_text_embeddings(info.source, names, templates)
        zeroshot.set_text_head(network.classifier, text_embeds.to(network.classifier.weight.dtype), scale)
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
    model = _attach(
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
    _check_method_fit(
        spec, info, targets=targets, layers=layers, quantize=None, head_init=None, total_steps=total_steps
    )
    label_map, _ = backbones.label_maps(num_labels, id2label)
    network = backbones.classifier_from_config(info, config, label_map)
    record = _new_record(
        spec,
        options,
        info,
        network,
        label_map,
        layers=layers,
        quantize=None,
        head_init=None,
        total_steps=total_steps,
    )
    return _attach(
        network,
        spec,
        options,
        info,
        record,
        targets=targets,
        layers=layers,
        quantize=None,
        gradient_checkpointing=False,
        total_steps=total_steps,
    )


def _new_record(spec, options, info, network, label_map, *, layers, quantize, head_init, total_steps) -> dict:
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
        "layers": [layers] if isinstance(layers, int) else (list(layers) if layers is not None else None),
        "target_modules": None,
        "quantize": quantize,
        "head_init": head_init,
        "total_steps": total_steps,
        "clip_projection": info.clip_projection,
        "input_spec": info.input_spec.to_dict(),
    }


def read_record(path: str | Path) -> dict:
    """The ``emoset_peft.json`` of a saved folder, checked."""
    file = Path(path) / RECORD_NAME
    if not file.is_file():
        hint = (
            "it looks like a plain PEFT folder: load it with peft.PeftModel.from_pretrained(base, folder)"
            if (Path(path) / "adapter_config.json").is_file()
            else "give a folder written by EmoSetModel.save_pretrained"
        )
        raise EmoSetError(f"{path}: no {RECORD_NAME}; {hint}")
    record = json.loads(file.read_text())
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EmoSetError(
            f"{file}: format_version {version!r} is not one this emoset_peft reads "
            f"(<= {FORMAT_VERSION}); upgrade emoset_peft"
        )
    if record.get("method") not in REGISTRY:
        raise EmoSetError(f"{file}: unknown method {record.get('method')!r}; methods: {', '.join(METHODS)}")
    return record


def load_adapter(path: str | Path, backbone=None, *, trainable: bool = False) -> EmoSetModel:
    """Rebuild a model saved by ``EmoSetModel.save_pretrained``, any method, in eval mode.

    backbone: where to load the base weights from; default the backbone recorded in the folder.
    trainable=True keeps the method's parameters trainable (to continue training).
    """
    from safetensors.torch import load_file

    path = Path(path)
    check_adapter_folder(path)
    record = read_record(path)
    spec = methods.get_method(record["method"])
    info, config = backbones.describe_backbone(backbone or record["backbone"])
    if info.model_type != record["model_type"]:
        raise EmoSetError(
            f"{path}: saved on a {record['model_type']!r} backbone, "
            f"but {info.source!r} is {info.model_type!r}"
        )
    record = {**record, "backbone": info.source}
    label_map = {int(k): v for k, v in record["id2label"].items()}
    options = methods.make_options(spec, record["options"])
    quantize = record.get("quantize")
    qconfig = quant.quantization_config(quantize) if quantize else None
    if spec.kind == "full":
        network = _load_full(path, info)
        model = EmoSetModel(network, record)
    elif spec.kind == "peft":
        import peft

        network = backbones.load_classifier(info, config, label_map, quantization_config=qconfig)
        if quantize:
            quant.keep_cpu_packing_in_bounds(network)
        if quantize and trainable:
            network = quant.prepare_for_training(network)
        network = peft.PeftModel.from_pretrained(network, str(path), is_trainable=trainable)
        model = EmoSetModel(network, record)
    else:
        network = backbones.load_classifier(info, config, label_map, quantization_config=qconfig)
        model = _attach(
            network,
            spec,
            options,
            info,
            record,
            targets=None,
            layers=record.get("layers"),
            quantize=None,
            gradient_checkpointing=False,
            total_steps=None,
        )
        saved = load_file(str(path / WEIGHTS_NAME))
        expected = model.saved_state_dict()
        if set(saved) != set(expected):
            raise EmoSetError(
                f"{path / WEIGHTS_NAME}: tensors {sorted(set(saved) ^ set(expected))[:6]} do not match "
                f"a {spec.name!r} model on {info.source!r}"
            )
        model.load_state_dict(saved, strict=False)
    if not trainable:
        for param in model.parameters():
            param.requires_grad = False
    return model.eval()


def _load_full(path: Path, info: backbones.Backbone) -> nn.Module:
    cls = info.architecture.loader.classifier_class()
    with backbones.quiet_transformers():
        return cls.from_pretrained(str(path), trust_remote_code=False, use_safetensors=True)
