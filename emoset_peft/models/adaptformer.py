"""AdaptFormer (Chen et al. 2022): a scaled bottleneck branch parallel to each encoder MLP.

For the MLP input ``x`` (the layer-normed residual stream), the MLP's output becomes
``MLP(x) + scale * up(relu(down(x)))``: a down-projection to ``bottleneck`` features, ReLU and an
up-projection back to the hidden size. ``up`` starts at zero (weights and bias), so a freshly
attached adapter leaves the pretrained model's outputs unchanged; ``down`` keeps ``nn.Linear``'s
default init (the paper's "lora" init). A forward hook on each MLP module adds the branch, so the
transformers model itself is unchanged and any family whose MLP is one module (ViT, CLIP, DINOv2,
SigLIP in transformers 5) takes it. The branch is non-linear, so it cannot be folded into weights.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class AdaptFormer(nn.Module):
    """One bottleneck adapter per hooked MLP; ``attach(mlps)`` hooks them in depth order."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(hidden_size, bottleneck) for _ in range(num_layers))
        self.up = nn.ModuleList(nn.Linear(bottleneck, hidden_size) for _ in range(num_layers))
        with torch.no_grad():
            for down, up in zip(self.down, self.up):
                down.bias.zero_()
                up.weight.zero_()
                up.bias.zero_()
        self.scale = scale
        self.dropout = nn.Dropout(dropout)
        self._handles = []

    def branch(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """``scale * up(relu(down(x)))`` for layer ``index``, in ``x``'s dtype."""
        down, up = self.down[index], self.up[index]
        hidden = self.dropout(torch.relu(down(x.to(down.weight.dtype))))
        return (self.scale * up(hidden)).to(x.dtype)

    def _add(self, index, module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return output + self.branch(index, x)

    def attach(self, mlps: list[nn.Module]) -> None:
        """Hook the MLP modules (in depth order). Bound methods, so deepcopy keeps working."""
        if len(mlps) != len(self.down):
            raise ValueError(f"AdaptFormer has {len(self.down)} adapters for {len(mlps)} MLPs")
        self.detach()
        self._handles = [
            mlp.register_forward_hook(functools.partial(self._add, index), with_kwargs=True)
            for index, mlp in enumerate(mlps)
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
