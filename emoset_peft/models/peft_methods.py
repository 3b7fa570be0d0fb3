"""The PEFT tuners as registry entries (models/methods.py): their peft configs, and AdaLoRA's hooks.

PEFT tuners get ``task_type=None``, explicit ``target_modules`` (resolved from roles) and
``modules_to_save=[head]``; the folder is peft's own (``adapter_config.json`` +
``adapter_model.safetensors``), loadable by plain ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from emoset_peft.errors import EmoSetError
from emoset_peft.models import options as opts
from emoset_peft.models.folder import WEIGHTS_NAME
from emoset_peft.models.kinds import MethodHooks, MethodSpec

BOTH = ("8bit", "4bit")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeftSpec(MethodSpec):
    kind: str = "peft"
    # (options, common peft kwargs, total_steps) -> the peft config
    config: Callable | None = None
    # bitsandbytes modes peft folds this method into (merge_and_unload; rounded to the mode)
    merges_quantized: tuple[str, ...] = ()

    trains_head: ClassVar[bool] = False  # peft trains a copy of the head (modules_to_save)
    takes_targets: ClassVar[bool] = True
    takes_layers: ClassVar[bool] = True
    folds: ClassVar[bool] = True
    plain_peft: ClassVar[bool] = True
    folder_files: ClassVar = (("adapter_config.json",), WEIGHTS_NAME)

    def attach(self, network, options, site):
        import peft

        from emoset_peft.models import roles

        arch = site.architecture
        names = [name for name, _ in network.named_modules()]
        wanted = list(site.targets) if site.targets is not None else list(self.roles)
        target_modules = roles.resolve_targets(names, arch, wanted, site.layers)
        feedforward = [
            n for n, role in roles.roles_of(target_modules, arch).items() if role == "mlp_out"
        ]
        common = {
            "target_modules": target_modules,
            "modules_to_save": [arch.head],
            "task_type": None,
            "feedforward_modules": feedforward,
        }
        self.check_targets(network, target_modules, options)
        config = self.peft_config(options, common, site.total_steps)
        site.record.update(target_modules=target_modules, targets=wanted)
        return peft.get_peft_model(network, config), {}

    def check_targets(self, network, target_modules: list[str], options) -> None:
        """EmoSetError when ``options`` cannot apply to these layers as given (peft would
        quietly change them)."""

    def peft_config(self, options, common: dict, total_steps):
        """The method's peft config; peft's own refusals become one EmoSetError line."""
        try:
            return self.config(options, common, total_steps)
        except (ValueError, TypeError) as err:
            if isinstance(err, EmoSetError):
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            names = ", ".join(f.name for f in dataclasses.fields(options)) or "none"
            raise EmoSetError(
                f"model.options for method {self.name!r} rejected by peft: {reason} "
                f"(its options: {names})"
            ) from None

    def save(self, model, path) -> None:
        network = model.network
        # The toolkit writes the card (EmoSetModel.save_pretrained); peft's own would edit a
        # README.md the user keeps in the folder, and fails on one whose metadata is not YAML.
        network.create_or_update_model_card = lambda output_dir: None
        try:
            network.save_pretrained(str(path), safe_serialization=True)
        finally:
            del network.create_or_update_model_card

    def load(self, loading):
        import peft

        network = peft.PeftModel.from_pretrained(
            loading.classifier(), str(loading.path), is_trainable=loading.trainable
        )
        return loading.wrap(network)

    def merge_and_unload(self, model):
        mode = model.record.get("quantize")
        if mode and mode not in self.merges_quantized:
            # Checked before peft starts: it raises at the first layer, after folding none.
            fits = [s.name for s in PEFT_SPECS if mode in s.merges_quantized]
            raise EmoSetError(
                f"method {self.name!r} cannot be merged into a backbone loaded with "
                f"quantize={mode!r} (peft merges only {', '.join(fits)} into {mode} layers); use it unmerged "
                "(save_pretrained, emoset_peft.load_adapter), or merge the saved adapter on the "
                "unquantized backbone with plain peft (its card's code, then merge_and_unload())"
            )
        return model.network.merge_and_unload()


@dataclass(frozen=True)
class OftSpec(PeftSpec):
    def check_targets(self, network, target_modules, options):
        """peft's OFT splits each layer's input into blocks of block_size; one that does not
        divide the width is replaced by a nearby divisor with only a warning, so the folder and
        the card would record a block size that was not used."""
        modules = dict(network.named_modules())
        widths = sorted({modules[name].in_features for name in target_modules})
        size = options.block_size
        if all(width % size == 0 for width in widths):
            return
        fits = [d for d in range(2, widths[0] + 1) if all(w % d == 0 for w in widths)]
        raise EmoSetError(
            f"model.options.block_size={size} (method 'oft') must divide the input width of every "
            f"targeted layer ({', '.join(map(str, widths))}); block sizes that fit: "
            f"{', '.join(map(str, fits)) or 'none'}"
        )


class AdaLoraHooks(MethodHooks):
    """AdaLoRA's orthogonality regulariser and rank budget (``update_and_allocate``).

    AdaLoRA scores ranks from the gradients after optimizer.step(); a reference to each adapter
    gradient is kept, so a zero_grad(set_to_none=True) before after_optimizer_step is harmless.
    """

    def __init__(self, network):
        self.last_grads: dict[torch.nn.Parameter, torch.Tensor] = {}
        for name, param in network.named_parameters():
            if "lora_" in name and param.requires_grad:
                param.register_post_accumulate_grad_hook(self._keep_grad)

    def _keep_grad(self, param) -> None:
        self.last_grads[param] = param.grad

    @contextlib.contextmanager
    def _gradients_back(self):
        restored = [p for p in self.last_grads if p.grad is None]
        for param in restored:
            param.grad = self.last_grads[param]
        try:
            yield
        finally:
            for param in restored:
                param.grad = None

    def extra_loss(self, network):
        """Mirrors ``peft.tuners.adalora.AdaLoraModel.forward``, which only adds it when the model
        itself returns a loss: R = w * mean over lora_A / lora_B of ||P P^T - I||_F (A) or
        ||P^T P - I||_F (B)."""
        adapter = network.base_model.trainable_adapter_name
        weight = network.peft_config[adapter].orth_reg_weight
        terms = []
        for name, param in network.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and adapter in name:
                cov = param @ param.T if "lora_A" in name else param.T @ param
                eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
                terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
        return weight * torch.stack(terms).mean() if terms else 0.0

    def after_optimizer_step(self, network, global_step: int) -> None:
        config = network.peft_config[network.base_model.trainable_adapter_name]
        if global_step <= config.total_step - config.tfinal and not self.last_grads:
            raise EmoSetError(
                "after_optimizer_step: AdaLoRA scores ranks from the gradients, but there has been "
                "no backward pass yet; call it after loss.backward() and optimizer.step()"
            )
        with self._gradients_back():
            network.base_model.update_and_allocate(global_step)


@dataclass(frozen=True)
class AdaLoraSpec(PeftSpec):
    needs_total_steps: ClassVar[bool] = True

    def hooks(self, network):
        return AdaLoraHooks(network)


# -- peft configs (common: target_modules, modules_to_save, task_type, feedforward_modules) ------
def _without_feedforward(common: dict) -> dict:
    return {k: v for k, v in common.items() if k != "feedforward_modules"}


def _lora(o, common, total_steps, *, dora: bool):
    import peft

    return peft.LoraConfig(
        r=o.r,
        lora_alpha=o.alpha,
        lora_dropout=o.dropout,
        use_rslora=o.rslora,
        use_dora=dora,
        bias="none",
        **_without_feedforward(common),
    )


def adalora_schedule(o, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) for a run of ``total_steps`` optimizer steps, counted from 0 as the trainer
    passes them to ``update_and_allocate``.

    peft warms up for steps <= tinit, prunes until step total_step - tfinal, where it fixes the
    final budget (r ranks per module on average), then keeps it. Defaults: 10% / 20% of the run,
    with tfinal >= 1 so that final step is one the run takes (tfinal=0 would put it at step
    total_steps, one past the last), and clamped so tinit + tfinal <= total_steps - 1 (peft: a
    pruning phase of at least one step). A 1-step run only warms up. Given values are kept.
    """
    last = total_steps - 1
    tinit = o.tinit if o.tinit is not None else total_steps // 10
    tfinal = o.tfinal if o.tfinal is not None else max(1, total_steps // 5)
    if o.tfinal is None:
        tfinal = max(0, min(tfinal, last - tinit))
    if o.tinit is None:
        tinit = max(0, min(tinit, last - tfinal))
    if tinit + tfinal > last:
        given = [f"model.options.{k}={getattr(o, k)}" for k in ("tinit", "tfinal") if getattr(o, k)]
        raise EmoSetError(
            f"{' and '.join(given)} (method 'adalora'): its schedule needs at least "
            f"tinit + tfinal + 1 = {tinit + tfinal + 1} optimizer steps, but this run has "
            f"{total_steps}; lower them or leave them out (the defaults scale with the run), or "
            "raise train.max_steps / train.min_steps"
        )
    return tinit, tfinal


def _adalora(o, common, total_steps):
    import peft

    tinit, tfinal = adalora_schedule(o, total_steps)
    if total_steps == 1:
        log.warning(
            "adalora: a 1-step run only warms up; no step is left to prune ranks, so the adapter "
            "keeps init_r=%d ranks per module (r=%d needs at least 2 steps)",
            o.init_r,
            o.r,
        )
    return peft.AdaLoraConfig(
        target_r=o.r,
        init_r=o.init_r,
        lora_alpha=o.alpha,
        lora_dropout=o.dropout,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=o.delta_t,
        orth_reg_weight=o.orth_reg_weight,
        total_step=total_steps,
        **_without_feedforward(common),
    )


def _ia3(o, common, total_steps):
    import peft

    return peft.IA3Config(**common)


def _loha(o, common, total_steps):
    import peft

    return peft.LoHaConfig(
        r=o.r,
        alpha=o.alpha,
        rank_dropout=o.rank_dropout,
        module_dropout=o.module_dropout,
        **_without_feedforward(common),
    )


def _lokr(o, common, total_steps):
    import peft

    return peft.LoKrConfig(
        r=o.r,
        alpha=o.alpha,
        rank_dropout=o.rank_dropout,
        module_dropout=o.module_dropout,
        decompose_factor=o.decompose_factor,
        **_without_feedforward(common),
    )


def _oft(o, common, total_steps):
    import peft

    return peft.OFTConfig(
        r=0,
        oft_block_size=o.block_size,
        module_dropout=o.dropout,
        coft=o.coft,
        **_without_feedforward(common),
    )


def _vera(o, common, total_steps):
    import peft

    return peft.VeraConfig(
        r=o.r,
        vera_dropout=o.dropout,
        d_initial=o.d_initial,
        save_projection=True,
        **_without_feedforward(common),
    )


QV = ("q", "v")
PEFT_SPECS = (
    PeftSpec(
        "lora",
        opts.LoraOptions,
        "low-rank updates of q and v",
        roles=QV,
        quantize=BOTH,
        merges_quantized=BOTH,
        config=functools.partial(_lora, dora=False),
    ),
    # DoRA on 8-bit layers fails inside bitsandbytes 0.50's CPU int8 matmul.
    PeftSpec(
        "dora",
        opts.LoraOptions,
        "LoRA with a learned magnitude per output",
        roles=QV,
        quantize=("4bit",),
        merges_quantized=("4bit",),
        config=functools.partial(_lora, dora=True),
    ),
    PeftSpec(
        "ia3",
        opts.NoOptions,
        "learned scaling of k, v and the MLP input of fc2",
        roles=("k", "v", "mlp_out"),
        quantize=BOTH,
        config=_ia3,
    ),
    PeftSpec("loha", opts.LycorisOptions, "low-rank Hadamard product", roles=QV, config=_loha),
    PeftSpec("lokr", opts.LoKrOptions, "low-rank Kronecker product", roles=QV, config=_lokr),
    OftSpec("oft", opts.OFTOptions, "block-diagonal orthogonal rotation", roles=QV, config=_oft),
    PeftSpec(
        "vera",
        opts.VeraOptions,
        "shared random low-rank matrices, learned scales",
        roles=QV,
        config=_vera,
    ),
    AdaLoraSpec(
        "adalora",
        opts.AdaLoraOptions,
        "LoRA with SVD rank budget (needs total_steps)",
        roles=QV,
        quantize=BOTH,
        config=_adalora,
    ),
)
