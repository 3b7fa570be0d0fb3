"""Prefix tuning and visual prompt tuning (VPT) for ViT-like encoders, built here.

PEFT's PrefixTuning / PromptTuning need ``input_ids`` and a vocabulary, so they do not apply to
vision encoders. Both methods below only add parameters next to an unchanged transformers model:

- Prefix tuning (Li & Liang 2021): every attention layer gets ``prefix_length`` learned keys and
  values, prepended to the layer's own before the attention product. In transformers 5, ViT,
  CLIP, DINOv2 and SigLIP attention call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``;
  ``prefix_attention`` is registered there as ``"emoset_prefix"``, reads the prefixes from the
  ``emoset_prefix`` keyword that the model forwards down to every attention call, and hands the
  longer keys/values to the original implementation (sdpa, eager, flash). Passing the prefixes as
  an argument (not stashing them on modules) keeps activation checkpointing's recomputation and
  DDP correct.
- VPT (Jia et al. 2022): ``num_prompts`` learned tokens are inserted after [CLS] at the input of
  layer 0 (shallow), and with ``deep=True`` replaced by fresh learned tokens at the input of every
  later layer. Forward hooks do it, and a hook on the last layer removes the prompt tokens again,
  so the model's own pooling ([CLS], or the mean over real patch tokens) never sees them.
"""

from __future__ import annotations

import functools
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX_ATTENTION = "emoset_prefix"


def _inner_attention(module: nn.Module):
    """The attention function the model used before prefix tuning took over."""
    implementation = getattr(module, "emoset_inner_attention", "sdpa")
    if implementation == "eager":
        # Each model file defines its own eager_attention_forward; use the module's.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def prefix_attention(module, query, key, value, attention_mask, emoset_prefix=None, **kwargs):
    """Attention with this layer's learned prefix keys/values prepended (shapes [B, heads, T, head_dim])."""
    index = getattr(module, "emoset_layer_index", None)
    if emoset_prefix is not None and index is not None:
        prefix_key, prefix_value = emoset_prefix[index]  # each [heads, P, head_dim]
        batch = key.shape[0]
        key = torch.cat([prefix_key.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix_value.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        if attention_mask is not None:
            # Every query may attend to every prefix position: 0 in an additive mask, True in a boolean one.
            fill = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (prefix_key.shape[1], 0), value=fill)
    return _inner_attention(module)(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)


class PrefixTuning(nn.Module):
    """Learned key/value prefixes for every layer; ``forward()`` -> [layers, 2, heads, P, head_dim].

    With ``reparameterize=True`` the prefixes are an MLP of a smaller embedding (P x hidden ->
    ``reparam_hidden`` -> layers x 2 x hidden), which the prefix-tuning paper found to train more
    stably; the MLP is part of the saved weights.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        prefix_length: int = 10,
        reparameterize: bool = False,
        reparam_hidden: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.shape = (num_layers, 2, num_heads, prefix_length, head_dim)
        hidden = num_heads * head_dim
        if reparameterize:
            self.embedding = nn.Parameter(torch.randn(prefix_length, hidden) * 0.02)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, reparam_hidden),
                nn.Tanh(),
                nn.Linear(reparam_hidden, num_layers * 2 * hidden),
            )
        else:
            # Small random keys/values: the prefix starts close to "no prefix" (keys ~0 get a
            # near-uniform share of attention, values ~0 add little).
            self.prefix = nn.Parameter(torch.randn(self.shape) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        if hasattr(self, "mlp"):
            num_layers, _, heads, length, head_dim = self.shape
            flat = self.mlp(self.embedding)  # [P, layers * 2 * hidden]
            prefix = flat.view(length, num_layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)
        else:
            prefix = self.prefix
        return self.dropout(prefix)


def attach_prefix(attention_modules: list[nn.Module], model: nn.Module) -> None:
    """Route the model's attention through ``prefix_attention``; layer i reads prefix i."""
    for index, module in enumerate(attention_modules):
        inner = module.config._attn_implementation or "sdpa"
        if inner == PREFIX_ATTENTION:
            raise ValueError("prefix tuning is already attached to this model")
        module.emoset_layer_index = index
        module.emoset_inner_attention = inner
    # Switch the vision tower only: a text tower (SigLIP's config has one) keeps its attention.
    sub_configs = getattr(model.config, "sub_configs", None) or {}
    if "vision_config" in sub_configs:
        model.set_attn_implementation({"": PREFIX_ATTENTION, "vision_config": PREFIX_ATTENTION})
    else:
        model.set_attn_implementation(PREFIX_ATTENTION)


def _hidden_states(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden_states(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class VisualPrompts(nn.Module):
    """VPT prompt tokens: [layers or 1, num_prompts, hidden]; ``attach`` hooks them into the encoder."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_prompts: int = 10,
        deep: bool = True,
        dropout: float = 0.0,
        insert_at: int = 1,
        patch_dim: int = 768,
    ):
        super().__init__()
        # VPT's init: uniform with the Xavier bound of a patch-embedding (patch_dim -> hidden) layer.
        bound = math.sqrt(6.0 / (patch_dim + hidden_size))
        self.prompts = nn.Parameter(
            torch.empty(num_layers if deep else 1, num_prompts, hidden_size).uniform_(-bound, bound)
        )
        self.num_prompts = num_prompts
        self.deep = deep
        self.insert_at = insert_at  # 1 = after [CLS]; 0 for encoders without a [CLS] token
        self.dropout = nn.Dropout(dropout)
        self._handles = []

    def _prompt(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.prompts[layer]).to(like.dtype).expand(like.shape[0], -1, -1)

    def _insert(self, module, args, kwargs):
        hidden = _hidden_states(args, kwargs)
        at = self.insert_at
        hidden = torch.cat([hidden[:, :at], self._prompt(0, hidden), hidden[:, at:]], dim=1)
        return _with_hidden_states(args, kwargs, hidden)

    def _replace(self, layer, module, args, kwargs):
        hidden = _hidden_states(args, kwargs)
        at, n = self.insert_at, self.num_prompts
        hidden = torch.cat(
            [hidden[:, :at], self._prompt(layer, hidden), hidden[:, at + n :]], dim=1
        )
        return _with_hidden_states(args, kwargs, hidden)

    def _strip(self, module, args, kwargs, output):
        at, n = self.insert_at, self.num_prompts
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.cat([hidden[:, :at], hidden[:, at + n :]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def attach(self, layers: list[nn.Module]) -> None:
        """Hook into the encoder layers (in depth order). Bound methods, so deepcopy keeps working."""
        self.detach()
        hooks = [layers[0].register_forward_pre_hook(self._insert, with_kwargs=True)]
        if self.deep:
            for index, layer in enumerate(layers[1:], start=1):
                replace = functools.partial(self._replace, index)
                hooks.append(layer.register_forward_pre_hook(replace, with_kwargs=True))
        hooks.append(layers[-1].register_forward_hook(self._strip, with_kwargs=True))
        self._handles = hooks

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
