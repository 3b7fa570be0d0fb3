"""Check a whole study grid before its first cell trains: a mistake in the last cell must not
cost the hours the first cells take, nor leave a half-run study behind.

First the rules of the grid as a whole (``check_grid``): no empty grid, no k=0 without a
method that runs at k=0, no ``train.checkpoint_every`` (a study resumes by skipping finished
cells), and a ``train.batch_size`` that the processes of a large cell can split evenly. Then two
passes, cheapest first, each raising one ``EmoSetError`` line that names the cell:

1. per cell, what ``train`` checks before it decodes any image (``engine.recipe.preflight``):
   the method and its option keys and values, the trackers, the backbone's folder or Hub id
   and its config;
2. per cell, the data: the split files and the subset the cell would draw (``per_class``
   against the images each class has, ``data.fraction``, the validation and test splits),
   from EmoSet's index alone (no image is decoded), and with ``data.manifest`` the manifest
   made for the cell's own k and data seed.

Config keys and values were checked when the grid was expanded (``study/grid.expand``).
"""

from __future__ import annotations

import dataclasses
import functools
import json

from emoset_peft.errors import EmoSetError


def check_grid(study, cells, num_processes: int = 1) -> list[str]:
    """Refuse (one ``EmoSetError`` line) a grid that would run other than it reads; returns the
    warnings to print (once, on the main process)."""
    from emoset_peft.models import methods

    zero_shot = ", ".join(methods.named(lambda spec: not spec.trains))
    asks_zero = any(not isinstance(k, bool) and k == 0 for k in study.per_class)
    at_zero = [cell for cell in cells if cell.per_class == 0]
    dropped = sorted({cell.method for cell in cells if cell.per_class != 0})
    warnings = []
    if asks_zero and not at_zero:
        raise EmoSetError(
            "study.per_class lists 0 (no training images) but no method in study.methods runs "
            f"at k=0 (only {zero_shot} does: CLIP zero-shot); add one, or remove 0 from "
            "study.per_class"
        )
    if asks_zero and dropped:
        warnings.append(
            f"study.per_class: k=0 runs only {', '.join(sorted({c.method for c in at_zero}))}; "
            f"{', '.join(dropped)} train, so they have no k=0 cell"
        )
    if not cells:
        raise EmoSetError("the study grid has no cells: check study.per_class and study.methods")
    for cell in cells:
        train = cell.config.train
        if train.checkpoint_every:
            _in_cell(
                cell,
                _refuse,
                f"train.checkpoint_every={train.checkpoint_every} does not "
                "apply to study cells (a study resumes by skipping finished cells); remove "
                "it from the study's recipe",
            )
        if cell.large:
            from emoset_peft.engine.recipe import per_process_batch

            _in_cell(
                cell,
                per_process_batch,
                train.batch_size,
                num_processes,
                f"the {num_processes} processes that train a large_per_class cell together",
            )
    return warnings


def _refuse(message: str) -> None:
    raise EmoSetError(message)


def validate_grid(cells, context) -> None:
    """Raise one ``EmoSetError`` line for the first cell that cannot run.

    ``context`` is the runner's ``CellContext``: EmoSet's index loaded here is the one the
    cells reuse.
    """
    from emoset_peft.data.manifests import find_manifest
    from emoset_peft.engine.recipe import preflight

    checked: set[str] = set()
    for cell in cells:
        model, train = cell.config.model, cell.config.train
        key = _key(dataclasses.asdict(model), train.report_to)
        if key not in checked:
            _in_cell(cell, preflight, cell.config)
            checked.add(key)
    checked.clear()
    for cell in cells:
        data = dataclasses.asdict(cell.config.data)
        data.pop("data_seed")  # whether a class has k images does not depend on the draw
        key = _key(data)
        if key not in checked:
            _in_cell(cell, _check_data, cell.config.data, context)
            checked.add(key)
    for cell in cells:  # data.manifest: each cell's own k and data seed (no image is read)
        _in_cell(cell, functools.partial(find_manifest, match=True), cell.config.data)


def _check_data(data_config, context) -> None:
    from emoset_peft.data.run_data import select_splits

    select_splits(data_config, context.emoset(data_config))


def _in_cell(cell, check, *args) -> None:
    try:
        check(*args)
    except EmoSetError as err:
        raise EmoSetError(
            f"study cell {cell.name} (study.methods.{cell.method}): {err}; no cell was started"
        ) from None


def _key(*parts) -> str:
    return json.dumps(parts, sort_keys=True, default=str)
