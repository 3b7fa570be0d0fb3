"""Adapters folded into their base weights for inference, and the base weights restored bit for bit.

An unmerged adapter costs every forward pass extra work: LoRA two thin matmuls, a scale and an
add per adapted layer; LoHa, LoKr, OFT and VeRA rebuild a full delta weight on every call. Folded
in, the adapted layer is one plain matmul. Measured on a 2-core AMX Xeon (ViT-S/16, LoRA r=16 on
q and v, bf16, 16 images per forward): 94 images/s unmerged against 115 merged
(``benchmarks/bench_train_eval.py`` has the end-to-end figure).

peft's own ``unmerge`` subtracts the delta again, which in bf16 does not give back the original
weights (each add and subtract rounds), so a run that evaluates every few hundred steps would
drift. ``merged_for_inference`` keeps a copy of every weight it changes and writes the copy back
into the same storage afterwards: training resumes on exactly the weights it left.

Skipped, and then run unmerged as before: layers whose adapters are disabled or already merged,
quantized base layers (bitsandbytes' packed weights would be requantized) and prefix / VPT / full
fine-tuning, which have nothing to fold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def mergeable_layers(model: nn.Module) -> list[nn.Module]:
    """The peft tuner layers in ``model`` that ``merged_for_inference`` would fold."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer) or module.disable_adapters or module.merged:
            continue
        base = module.get_base_layer()
        weights = list(base.parameters(recurse=False))
        # Exactly nn.Parameter: bitsandbytes' Params4bit / Int8Params are subclasses.
        if weights and all(type(w) is nn.Parameter and w.is_floating_point() for w in weights):
            layers.append(module)
    return layers


@contextlib.contextmanager
def merged_for_inference(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every mergeable adapter of ``model`` is folded into its base weights;
    yields how many layers were folded. Use it for inference only: gradients through a folded
    layer would not reach the adapter."""
    layers = mergeable_layers(model) if enabled else []
    saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    try:
        # Outside inference mode, so the merged and restored weights stay ordinary tensors that
        # a later training step may save for backward; the caller's block keeps its own mode.
        with torch.inference_mode(False), torch.no_grad():
            for layer in layers:
                for param in layer.get_base_layer().parameters(recurse=False):
                    storage = param.detach()
                    saved.append((param, storage, storage.clone()))
                layer.merge(adapter_names=list(layer.active_adapters))
        yield len(layers)
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for param, storage, backup in saved:
                storage.copy_(backup)
                param.data = storage  # some merges swap in a new tensor; point back to ours
            for layer in layers:
                layer.merged_adapters.clear()
