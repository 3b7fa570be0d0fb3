"""Config problems said in one line: PyYAML's errors, a resumed config's changed keys, a recipe's
method options left behind by ``model.method=...`` on the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from emoset_peft.config import RunConfig, load_config
from emoset_peft.errors import EmoSetError


def yaml_error_line(err: yaml.YAMLError) -> str:
    """PyYAML's message (several lines, with a caret drawing) as one line: where, then what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start.line != mark.line:
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    elif context:
        text += f" ({context})"
    return text


def config_differences(saved: str | Path, config: RunConfig, limit: int = 3) -> str:
    """The first ``limit`` keys where ``config`` differs from the config.yaml at ``saved``, as
    "data.per_class: 2 -> 4, ..." (empty when it cannot be read or nothing differs)."""
    try:
        before = _flat(load_config(saved).to_dict())
    except (EmoSetError, OSError):
        return ""
    after = _flat(config.to_dict())
    keys = [
        key
        for key in after
        if key not in ("output_dir", "overwrite", "resume") and before.get(key) != after[key]
    ]
    shown = [f"{key}: {before.get(key)!r} -> {after[key]!r}" for key in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_recipe_options(recipe: dict[str, Any], overrides: list[str], raw: dict[str, Any]) -> None:
    """EmoSetError when ``model.method=...`` on the command line leaves the recipe's
    model.options for its own method behind (``--config vit_lora model.method=linear`` keeps r,
    alpha, dropout) and the new method does not take them: say how to clear them. Options
    given on the command line are the user's own: models/options.py names what is wrong."""
    from emoset_peft.models import methods

    keys = [item.split("=", 1)[0].strip() for item in overrides]
    if "model.method" not in keys or any(k.startswith("model.options") for k in keys):
        return
    model, final = recipe.get("model"), raw.get("model")
    if not isinstance(model, dict) or not isinstance(final, dict):
        return
    options, method = model.get("options"), final.get("method")
    if not isinstance(options, dict) or not options or method == model.get("method"):
        return
    try:
        spec = methods.get_method(str(method))
    except EmoSetError:
        return  # an unknown method is named where the model is built
    valid = [f.name for f in dataclasses.fields(spec.options)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise EmoSetError(
            f"model.method={method} has no option(s) {', '.join(unknown)} (its options: "
            f"{', '.join(valid) or 'none'}); they are the recipe's model.options for method "
            f"{model.get('method', 'lora')!r}: clear them with model.options={{}} (then "
            "model.options.NAME=VALUE for the new method's own)"
        )
