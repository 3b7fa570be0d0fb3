"""The kinds of method: ``MethodSpec`` and a small subclass per kind (PEFT tuners: peft_methods.py).

An instance is one registry entry (models/methods.py). It holds
the options dataclass (options.py), how it attaches to a classifier, which parameters train, which
tensors it saves (and under which prefixes), how it loads back, whether it folds into the weights
(merging.py), its per-step hooks and extra loss (AdaLoRA), the quantization modes it trains on,
whether it trains at all (zeroshot). The rest of the toolkit asks the entry and never compares a
method name or kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from emoset_peft.errors import EmoSetError
from emoset_peft.models.folder import WEIGHTS_NAME

if TYPE_CHECKING:
    from torch import nn

    from emoset_peft.models.wrapper import EmoSetModel


@dataclass
class Site:
    """Where ``attach`` works: the architecture (role map), the user's targets / layers, the run's
    optimizer steps, and the record it may fill in (``target_modules``)."""

    architecture: object
    targets: list[str] | None
    layers: list[int] | int | None
    total_steps: int | None
    record: dict


class MethodHooks:
    """Per-model, per-step behaviour of a method; the default does nothing."""

    def extra_loss(self, network: nn.Module):
        return 0.0

    def after_optimizer_step(self, network: nn.Module, global_step: int) -> None:
        return None


@dataclass(frozen=True)
class MethodSpec:
    """The base of every kind: the head alone trains (``LinearSpec``, the linear probe, adds
    that it reads the pooled feature); the other kinds subclass it."""

    name: str
    options: type
    summary: str = ""
    kind: str = "linear"  # written to emoset_peft.json, for readers of the folder
    roles: tuple[str, ...] = ()  # default targets (PEFT methods)
    quantize: tuple[str, ...] = ()  # bitsandbytes modes its adapters train on

    trains: ClassVar[bool] = True  # False: evaluated as built, no training run (zeroshot)
    trains_head: ClassVar[bool] = True  # the classifier head's own weights train
    freezes_backbone: ClassVar[bool] = True  # False: every weight trains (full)
    takes_targets: ClassVar[bool] = False  # targets= (roles) applies
    takes_layers: ClassVar[bool] = False  # layers= applies
    needs_total_steps: ClassVar[bool] = False
    text_head: ClassVar[bool] = False  # the head is CLIP's zero-shot text classifier
    # Only the head trains (or nothing does) and it reads the pooled feature: each image's
    # feature is the same in every cell, so it is computed once (engine/features.py).
    head_on_pooled_feature: ClassVar[bool] = False
    folds: ClassVar[bool] = False  # merged_for_inference folds its layers into the base weights
    mergeable: ClassVar[bool] = True  # merge_and_unload gives a plain transformers classifier
    plain_peft: ClassVar[bool] = False  # the folder loads with plain peft (README recipe)
    modules: ClassVar[tuple[str, ...]] = ()  # EmoSetModel submodules it adds, saved under "<name>."
    folder_files: ClassVar[tuple[tuple[str, ...], str]] = (
        (),
        WEIGHTS_NAME,
    )  # (JSON files, weights)

    # -- building ---------------------------------------------------------------------------
    def attach(
        self, network: nn.Module, options, site: Site
    ) -> tuple[nn.Module, dict[str, nn.Module]]:
        """Add the method to ``network`` (frozen as ``freezes_backbone`` / ``trains_head`` say):
        returns the network (possibly wrapped) and the new modules by attribute name."""
        return network, {}

    def hooks(self, network: nn.Module) -> MethodHooks:
        return MethodHooks()

    def forward_kwargs(self, model: EmoSetModel) -> dict:
        """Extra keyword arguments for the network's forward (prefix tuning's key/values)."""
        return {}

    # -- saving and loading ----------------------------------------------------------------
    def saves(self, key: str, head: str) -> bool:
        """Whether state-dict entry ``key`` of the EmoSetModel belongs in the saved weights."""
        return key.startswith((f"network.{head}.", *(f"{name}." for name in self.modules)))

    def save(self, model: EmoSetModel, path) -> None:
        from safetensors.torch import save_file

        save_file(model.saved_state_dict(), str(path / WEIGHTS_NAME), metadata={"format": "pt"})

    def load(self, loading) -> EmoSetModel:
        """Rebuild the model as it was built for training, then load the saved tensors into it."""
        from safetensors.torch import load_file

        model = loading.assemble(loading.classifier())
        file = loading.path / WEIGHTS_NAME
        saved = load_file(str(file))
        expected = model.saved_state_dict()
        if set(saved) != set(expected):
            raise EmoSetError(
                f"{file}: tensors {sorted(set(saved) ^ set(expected))[:6]} do not match "
                f"a {self.name!r} model on {loading.info.source!r}"
            )
        model.load_state_dict(saved, strict=False)
        return model

    def merge_and_unload(self, model: EmoSetModel) -> nn.Module:
        return model.network  # the method's weights are the classifier's own


@dataclass(frozen=True)
class LinearSpec(MethodSpec):
    """The linear probe: the backbone frozen, the head trained on its pooled feature."""

    head_on_pooled_feature: ClassVar[bool] = True


@dataclass(frozen=True)
class FullSpec(MethodSpec):
    kind: str = "full"
    freezes_backbone: ClassVar[bool] = False
    folder_files: ClassVar = (("config.json",), "model.safetensors")

    def save(self, model, path) -> None:
        model.network.save_pretrained(str(path), safe_serialization=True)

    def load(self, loading):
        return loading.wrap(loading.saved_classifier())


@dataclass(frozen=True)
class ZeroShotSpec(MethodSpec):
    kind: str = "zeroshot"
    trains: ClassVar[bool] = False
    trains_head: ClassVar[bool] = False
    text_head: ClassVar[bool] = True
    head_on_pooled_feature: ClassVar[bool] = True


@dataclass(frozen=True)
class BitFitSpec(MethodSpec):
    """BitFit (Ben Zaken et al. 2022): every bias of the encoder (linear and LayerNorm) + the head."""

    kind: str = "bitfit"

    def attach(self, network, options, site):
        for name, param in network.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad = True
        return network, {}

    def saves(self, key, head):
        return key.endswith(".bias") or super().saves(key, head)


@dataclass(frozen=True)
class _AddsComputation(MethodSpec):
    """Methods that add computation beside the weights: nothing to fold, saved as their modules."""

    mergeable: ClassVar[bool] = False

    def merge_and_unload(self, model):
        raise EmoSetError(
            f"method {self.name!r} adds computation beside the weights ({self.summary}) and cannot be "
            "merged into them; save it with save_pretrained and load it with emoset_peft.load_adapter"
        )


@dataclass(frozen=True)
class PrefixSpec(_AddsComputation):
    kind: str = "prefix"
    takes_layers: ClassVar[bool] = True
    modules: ClassVar = ("prefix",)

    def attach(self, network, options, site):
        from emoset_peft.models import prompts, roles

        attention = _attention_modules(network, site.architecture)
        keep = roles.normalize_layers(site.layers, len(attention))
        vision = _vision_config(network)
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
        return network, {"prefix": prefix}

    def forward_kwargs(self, model):
        return {"emoset_prefix": model.prefix()}


@dataclass(frozen=True)
class PromptSpec(_AddsComputation):
    kind: str = "vpt"
    modules: ClassVar = ("prompts",)

    def attach(self, network, options, site):
        from emoset_peft.models import prompts

        arch = site.architecture
        layers = _encoder_layers(network, arch)
        vision = _vision_config(network)
        visual = prompts.VisualPrompts(
            num_layers=len(layers),
            hidden_size=vision.hidden_size,
            num_prompts=options.num_prompts,
            deep=options.deep,
            dropout=options.dropout,
            insert_at=1 if arch.has_cls_token else 0,
            patch_dim=vision.num_channels * vision.patch_size**2,
        )
        visual.attach(layers)
        return network, {"prompts": visual}


@dataclass(frozen=True)
class AdaptFormerSpec(_AddsComputation):
    kind: str = "adaptformer"
    takes_layers: ClassVar[bool] = True
    modules: ClassVar = ("adaptformer",)

    def attach(self, network, options, site):
        from emoset_peft.models.adaptformer import AdaptFormer

        mlps = _mlp_modules(network, site.architecture, site.layers)
        adapter = AdaptFormer(
            len(mlps),
            _vision_config(network).hidden_size,
            options.bottleneck,
            options.scale,
            options.dropout,
        )
        adapter.attach(mlps)
        return network, {"adaptformer": adapter}


# -- locating modules ----------------------------------------------------------------------------
def _vision_config(network):
    config = network.config
    return getattr(config, "vision_config", None) or config


def _encoder_layers(network, arch) -> list:
    from emoset_peft.models import roles

    modules = dict(network.named_modules())
    return [modules[name] for name in roles.layer_names(modules, arch)]


def _parents(network, arch, role: str, layers=None) -> list[str]:
    from emoset_peft.models import roles

    names = [name for name, _ in network.named_modules()]
    return [name.rsplit(".", 1)[0] for name in roles.resolve_targets(names, arch, [role], layers)]


def _attention_modules(network, arch) -> list:
    """Per layer, the module that calls the attention function (the parent of the q projection)."""
    modules = dict(network.named_modules())
    return [modules[name] for name in _parents(network, arch, "q")]


def _mlp_modules(network, arch, layers) -> list:
    """Per chosen layer, the MLP module (the common parent of its mlp_in and mlp_out projections)."""
    inputs, outputs = (
        _parents(network, arch, "mlp_in", layers),
        _parents(network, arch, "mlp_out", layers),
    )
    if inputs != outputs:
        raise EmoSetError(
            f"the MLP of this {arch.name} backbone is not one module ({inputs[0]} / {outputs[0]}); "
            "AdaptFormer hooks the MLP module: use a transformers 5 checkpoint of a supported family"
        )
    modules = dict(network.named_modules())
    return [modules[name] for name in inputs]
