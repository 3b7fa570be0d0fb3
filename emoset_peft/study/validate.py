"""Check a whole study grid before its first cell trains: a mistake in the last cell must not
cost the hours the first cells take, nor leave a half-run study behind.

Two passes, cheapest first, each raising one ``EmoSetError`` line that names the cell:

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
