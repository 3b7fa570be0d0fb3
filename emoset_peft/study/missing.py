"""The cells of a study's grid that have no row in results.csv yet (a study still running, or
killed): the report names them, so that a table of the finished cells is not read as the whole
study.

The grid is the one ``study.yaml`` records (its ``study`` section, expanded as the runner
expands it); a folder without it (or with a grid this version cannot expand) lists nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

from emoset_peft.errors import EmoSetError


def missing_cells(
    config_text: str | None, rows: Sequence[Mapping], failed: Sequence = ()
) -> tuple[int, list[tuple[str, object, str]]] | None:
    """(cells in the grid, [(method, k, seed)] of those without any row, ok or failed), or None
    when study.yaml holds no grid to compare with."""
    from emoset_peft.config import from_dict
    from emoset_peft.study.grid import StudyConfig, expand

    try:
        saved = yaml.safe_load(config_text or "") or {}
        spec = saved.get("study") if isinstance(saved, dict) else None
        if not isinstance(spec, dict):
            return None
        cells = expand(from_dict(StudyConfig, spec, where="study.yaml study"))
    except (EmoSetError, yaml.YAMLError):
        return None
    have = {(str(r["method"]), str(r["per_class"]), str(r.get("seed"))) for r in rows}
    have |= {(f.method, str(f.per_class), str(f.seed)) for f in failed}
    missing = [
        (c.method, c.per_class, str(c.seed))
        for c in cells
        if (c.method, str(c.per_class), str(c.seed)) not in have
    ]
    return len(cells), missing


def render_missing(study) -> list[str]:
    """A report section naming the grid's cells without a row; nothing when none is missing."""
    found = missing_cells(study.config_text, study.rows, study.failed)
    if found is None or not found[1]:
        return []
    total, missing = found
    by_cell: dict[tuple[str, object], list[str]] = {}  # in grid order
    for method, k, seed in missing:
        by_cell.setdefault((method, k), []).append(seed)
    return [
        "## Missing cells",
        "",
        f"This report covers only the finished cells: {len(missing)} of the {total} cells in "
        "the grid (study.yaml) have no row in results.csv yet (still running, not started, "
        "or killed; rerunning `emoset-peft study` trains only these):",
        "",
        *(f"- {method} k={k}: seed(s) {', '.join(by_cell[method, k])}" for method, k in by_cell),
        "",
    ]
