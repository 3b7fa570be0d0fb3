"""Faster CPU kernels for the same math: attention while training, and dropout masks.

Training a ViT with adapters on a CPU spends most of a step outside the matrix multiplies.
Measured on a 2-core Xeon with AMX (bf16 GEMM about 3 TFLOP/s), ViT-S/16 at 224 px, LoRA r=16
on q, v (dropout 0.1), batch 16, bf16 autocast, one step about 0.8 s (``benchmarks/
bench_train_eval.py`` prints the same comparison as its "kernels" table):

- SDPA's fused CPU attention is fast forward (3 ms per layer) but its backward takes 20 ms.
  Two matmuls and a softmax take 3 + 5 ms. Done the eager way, autocast runs that softmax in
  fp32 and casts the [batch, heads, tokens, tokens] scores to fp32 and back, forward and
  backward: four extra copies of 3.7 M elements per layer (120 ms of the step). So the softmax
  runs in the scores' own dtype; PyTorch's CPU softmax accumulates in fp32 either way, and its
  bf16 output is what the fp32 path rounds to before the second matmul. The result rounds like
  transformers' eager attention (tests/test_kernels.py); fused SDPA, which keeps the scores in
  fp32, is about twice as close to an fp32 reference, all three at the level of bf16 rounding.
- ``nn.Dropout`` draws its mask with ``bernoulli_``: one Mersenne-twister number per element on
  one thread, 7 ms for a [16, 197, 384] input, and peft's LoRA draws one per adapted projection
  (24 per ViT-S step: 170 ms). ``FastDropout`` takes 16 random bits per element from numpy's
  PCG64 (seeded from torch's generator, so ``torch.manual_seed`` still fixes every mask):
  2 ms forward and backward. The drop probability is rounded to a multiple of 1/65,536
  (0.1 -> 0.100006), and the kept values are scaled by the exact inverse of the keep rate.

Both are used only where they pay: on the CPU, and (attention) only when gradients flow;
evaluation and every other device keep SDPA and ``nn.Dropout``. ``enable_fast_kernels(model)``
switches a built model; saved weights and adapter folders are unchanged (dropout has no weights,
and the attention function is not written into any config).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

FAST_ATTENTION = "emoset_fast"
_MASK_BITS = 16  # random bits per element: drop probabilities resolve to 1/65,536


def _train_on_cpu(query, key, value) -> bool:
    return (
        query.device.type == "cpu"
        and torch.is_grad_enabled()
        and (query.requires_grad or key.requires_grad or value.requires_grad)
    )


def fast_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature ([batch, heads, tokens, head_dim] in, [batch, tokens,
    heads, head_dim] out): matmul + softmax in the input dtype while training on a CPU, SDPA
    otherwise (and for what this path does not cover: causal, boolean masks, grouped heads)."""
    plain = (
        not _train_on_cpu(query, key, value)
        or kwargs.get("is_causal", getattr(module, "is_causal", False))
        or (attention_mask is not None and attention_mask.dtype == torch.bool)
        or key.shape[1] != query.shape[1]
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # Scaling q (tokens x head_dim) is cheaper than scaling the scores (tokens x tokens).
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    with torch.autocast(query.device.type, enabled=False):  # no fp32 round trip (see above)
        probs = torch.softmax(scores, dim=-1)
    if dropout:
        probs = nn.functional.dropout(probs, p=dropout, training=True)
    output = torch.matmul(probs.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(FAST_ATTENTION, fast_attention)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from numpy's PCG64 instead of ``bernoulli_``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or self.p == 0
            or self.p >= 1
            or x.device.type != "cpu"
            or torch.compiler.is_compiling()
        ):  # inductor fuses its own RNG into the graph
            return super().forward(x)
        drop = int(round(self.p * (1 << _MASK_BITS)))  # masks drop exactly drop / 65,536
        seed = int(torch.randint(0, 2**62, (1,)).item())  # follows torch.manual_seed
        count = x.numel()
        words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(
            -(-count // 4)
        )  # 4 x 16 bits per 64-bit word
        # int16 because torch has no comparison for uint16: u - 32768 >= drop - 32768.
        bits = torch.from_numpy(words.view(np.int16)[:count]).view(x.shape)
        keep = bits >= drop - (1 << (_MASK_BITS - 1))
        scale = (1 << _MASK_BITS) / ((1 << _MASK_BITS) - drop)
        if x.dtype in (torch.bfloat16, torch.float16):
            # A bf16 mask would round the scale (1/0.9 -> 1.109375: a 0.16% bias); x * scale is
            # computed in fp32 and rounded once, as an fp32 dropout feeding a bf16 matmul is.
            return x.mul_(scale).mul_(keep) if self.inplace else x.mul(scale).mul_(keep)
        mask = keep.to(x.dtype).mul_(scale)
        return x.mul_(mask) if self.inplace else x * mask


def enable_fast_kernels(model: nn.Module, *, autocast: bool = False) -> nn.Module:
    """Switch ``model`` (an EmoSetModel or any transformers vision model) to the kernels above.

    Attention changes only where the model uses SDPA (an explicit "eager" or flash choice is
    kept); prefix tuning keeps its own attention function and hands over to the fast one.
    ``autocast=True`` promises that every forward runs under autocast: then peft's LoRA layers
    need not cast their bf16 input to the adapter's fp32 (autocast casts it straight back for
    the matmul), which saves two copies of each adapted activation per step and direction.
    """
    if autocast:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):  # peft's switch for that cast
                module.cast_input_dtype_enabled = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    for module in model.modules():
        if getattr(module, "emoset_inner_attention", None) == "sdpa":  # prefix tuning's layers
            module.emoset_inner_attention = FAST_ATTENTION
    for config in _vision_configs(model):
        if config._attn_implementation == "sdpa":
            config._attn_implementation = FAST_ATTENTION
    return model


def _vision_configs(model: nn.Module) -> list:
    """The configs that the vision tower's attention layers read (a text tower keeps its own)."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            continue
        config = getattr(config, "vision_config", None) or config
        if "text" not in type(config).__name__.lower():
            configs[id(config)] = config
    return list(configs.values())
