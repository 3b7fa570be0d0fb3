"""Where the adapters go: module names by ROLE, per backbone family and transformers version.

PEFT has no defaults for ViT/CLIP, and the module names moved between transformers 4.x and 5.x
(ViT 4.x ``encoder.layer.N.attention.attention.query``, 5.x ``layers.N.attention.q_proj``). So
methods ask for roles (``q``, ``k``, ``v``, ``out``, ``mlp_in``, ``mlp_out``) and this module turns
them into the explicit full module names of one model (from the family's ``layer_pattern`` and
``role_suffixes``, see families.py), which are handed to PEFT as ``target_modules``. The layer
pattern also scopes targets to the vision tower: in a full ``CLIPModel`` the same
``self_attn.q_proj`` names also exist under ``text_model``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from emoset_peft.errors import EmoSetError
from emoset_peft.models.families import (
    FAMILIES,
    SUPPORTED_MODEL_TYPES,
    Family,
    family_for,
)

__all__ = [
    "ARCHITECTURES",
    "ROLES",
    "SUPPORTED_MODEL_TYPES",
    "Architecture",
    "architecture_for",
    "as_roles",
    "layer_names",
    "normalize_layers",
    "resolve_targets",
    "roles_of",
    "split_layer_name",
]

ROLES: tuple[str, ...] = ("q", "k", "v", "out", "mlp_in", "mlp_out")

# The role map of each family lives in its entry (families.FAMILIES); the old names stay.
Architecture = Family
ARCHITECTURES = FAMILIES
architecture_for = family_for


def _as_architecture(architecture: str | Architecture) -> Architecture:
    if isinstance(architecture, Architecture):
        return architecture
    if architecture in ARCHITECTURES:
        return ARCHITECTURES[architecture]
    return architecture_for(architecture)


def split_layer_name(name: str, architecture: str | Architecture) -> tuple[int, str] | None:
    """``("vit.layers.3.attention.q_proj", vit)`` -> ``(3, "attention.q_proj")``; None outside the layers."""
    arch = _as_architecture(architecture)
    match = re.fullmatch(arch.layer_pattern + r"\.(.+)", name)
    return (int(match.group(1)), match.group(2)) if match else None


def layer_names(module_names: Iterable[str], architecture: str | Architecture) -> list[str]:
    """Full names of the encoder layers, ordered by depth."""
    arch = _as_architecture(architecture)
    found = {}
    for name in module_names:
        match = re.fullmatch(arch.layer_pattern, name)
        if match:
            found[int(match.group(1))] = name
    return [found[i] for i in sorted(found)]


def normalize_layers(layers: Iterable[int] | None, num_layers: int) -> list[int]:
    """Layer indices (negative ones count from the end) -> sorted, checked, non-negative indices."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    chosen = set()
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool):
            raise EmoSetError(f"layers= takes layer indices (ints), got {index!r}")
        if not -num_layers <= index < num_layers:
            raise EmoSetError(
                f"layers=: index {index} is out of range for a backbone with {num_layers} layers"
            )
        chosen.add(index % num_layers)
    if not chosen:
        raise EmoSetError(
            "layers= is empty; give at least one layer index or leave it out for all layers"
        )
    return sorted(chosen)


def as_roles(targets) -> list[str] | None:
    """``targets=`` as a list of roles: one string is one role ("mlp_in", not its letters)."""
    if targets is None:
        return None
    if isinstance(targets, str):
        return [targets]
    if not isinstance(targets, Iterable) or not all(isinstance(t, str) for t in targets):
        raise EmoSetError(
            f"targets= takes a role or a list of roles ({', '.join(ROLES)}), got {targets!r}"
        )
    return list(targets)


def resolve_targets(
    module_names: Iterable[str],
    architecture: str | Architecture,
    roles: Sequence[str],
    layers: Iterable[int] | None = None,
) -> list[str]:
    """Roles -> the explicit full module names (vision tower only) of one model, in model order.

    ``module_names`` is ``[n for n, _ in model.named_modules()]`` (or any list of names, which is how
    the 4.x layouts are tested). ``layers`` restricts depth (indices, negative from the end).
    """
    arch = _as_architecture(architecture)
    names = list(module_names)
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise EmoSetError(f"unknown target role(s) {unknown}; valid roles: {', '.join(ROLES)}")
    if not roles:
        raise EmoSetError(f"targets= is empty; give roles from: {', '.join(ROLES)}")
    located = [(name, split_layer_name(name, arch)) for name in names]
    in_layers = [(name, where) for name, where in located if where is not None]
    if not in_layers:
        raise EmoSetError(
            f"no encoder layers of a {arch.name} model found (pattern {arch.layer_pattern!r}); "
            f"module names start with: {', '.join(names[:12])}"
        )
    num_layers = 1 + max(index for _, (index, _) in in_layers)
    keep = set(normalize_layers(layers, num_layers))
    targets = []
    for role in roles:
        suffixes = arch.role_suffixes[role]
        hits = [name for name, (index, inner) in in_layers if inner in suffixes and index in keep]
        if not hits:
            inside = sorted(
                {inner for index, inner in (where for _, where in in_layers) if index == min(keep)}
            )
            raise EmoSetError(
                f"target role {role!r} ({' or '.join(suffixes)}) matches no module of this "
                f"{arch.name} backbone; modules inside encoder layer {min(keep)}: {', '.join(inside)}"
            )
        targets.extend(hits)
    order = {name: i for i, name in enumerate(names)}
    return sorted(set(targets), key=order.__getitem__)


def roles_of(names: Iterable[str], architecture: str | Architecture) -> dict[str, str]:
    """Full module name -> its role, for names inside the encoder layers that have one."""
    arch = _as_architecture(architecture)
    suffix_role = {
        suffix: role for role, suffixes in arch.role_suffixes.items() for suffix in suffixes
    }
    out = {}
    for name in names:
        where = split_layer_name(name, arch)
        if where and where[1] in suffix_role:
            out[name] = suffix_role[where[1]]
    return out
