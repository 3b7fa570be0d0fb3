"""How many seeds a study needs: interval width and detectable difference at other seed counts.

From what a study observed for a cell (or for a paired difference) -- the spread between seeds
beyond test noise, each seed's own test noise, and the test-image noise the seeds share -- this
projects the 95% interval half-width (same construction as ``study.bootstrap``) and the minimum
detectable difference (MDD: the true difference a two-sided 5% test finds with 80% power) at
other seed counts, and the seeds needed for a half-width of +-1 pp. At the study's own seed
count the projection is the half-width of the interval the report prints (the same observed
seed variance, the same floor of test-image noise), before that interval is cut at 0% / 100%.
Crossed data x training seeds are not projected: their replicates are not independent seeds. The shared test-image noise
does not shrink with more seeds: when it alone exceeds the target, no number of seeds reaches
it and only a larger test set helps. All values are fractions (0.01 = 1 pp).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from emoset_peft.study.bootstrap import CONFIDENCE

POWER = 0.8
MAX_SEEDS = 10_000


def _quantiles(n_seeds: np.ndarray):
    alpha = 1 - CONFIDENCE
    t_level = stats.t.isf(alpha / 2, n_seeds - 1)
    t_power = stats.t.isf(1 - POWER, n_seeds - 1)
    z_level, z_power = stats.norm.isf(alpha / 2), stats.norm.isf(1 - POWER)
    return t_level, t_power, z_level, z_power


def project(
    per_seed_var: float, shared_var: float, n_seeds, *, two_cells: bool, own_var: float = 0.0
) -> dict:
    """Half-width and MDD at ``n_seeds`` (array) for a statistic whose replicates vary by
    ``per_seed_var`` (the observed variance of one replicate: seed spread + its own test noise)
    around a shared test-image noise ``shared_var``. As in ``bootstrap._half_width``, the
    half-width is never below what the test images alone give (shared noise plus each seed's
    own test noise ``own_var`` over n), so at the study's own seed count it equals the half-width
    of the interval the report prints (before that is cut at 0% / 100%). ``two_cells``: the MDD
    compares two independent cells with this noise each (no pairing benefit assumed), else the
    statistic is itself a paired difference.
    """
    n_seeds = np.asarray(n_seeds, dtype=np.float64)
    t_level, t_power, z_level, z_power = _quantiles(n_seeds)
    seed_part = per_seed_var / n_seeds
    images_only = shared_var + own_var / n_seeds
    half = np.sqrt(
        np.maximum(t_level**2 * seed_part + z_level**2 * shared_var, z_level**2 * images_only)
    )
    factor = 2.0 if two_cells else 1.0
    both = (t_level + t_power) ** 2 * seed_part + (z_level + z_power) ** 2 * shared_var
    mdd = np.sqrt(factor * np.maximum(both, (z_level + z_power) ** 2 * images_only))
    return {"half_width": half, "mdd": mdd}


def plan_from_parts(
    parts: dict,
    seeds_planned: Sequence[int] = (3, 5, 10, 20),
    target_half_width: float = 0.01,
    *,
    paired: bool,
) -> dict:
    """The planning table for one cell (``paired=False``) or one paired difference.

    ``parts`` comes from ``bootstrap.variance_parts`` (scalars). JSON-ready; with fewer than 2
    seeds there is nothing to project from and the fields are None with a ``note``.
    """
    n_rep = int(parts["n_replicates"])
    out = {
        "n_replicates": n_rep,
        "target_half_width": target_half_width,
        "seed_sd": None,
        "test_sd_per_seed": None,
        "test_sd_shared": None,
        "dominant": None,
        "by_seeds": None,
        "seeds_for_target": None,
        "note": None,
    }
    if n_rep < 2:
        out["note"] = "1 seed: the seed-to-seed spread is unknown, so there is nothing to project"
        return out
    if not parts.get("independent", True):
        out["note"] = (
            f"crossed seeds: the {n_rep} replicates share data and training seeds, so their "
            "spread is not that of independent seeds; projecting it to other seed counts "
            "would mislead"
        )
        return out
    seed_var = n_rep * float(parts["seed_only"])  # between seeds, beyond test noise
    shared_var = float(parts["image"])  # test-image noise all seeds share
    # Each seed's own test-image noise (as the interval counts it: shared + own / R = I).
    own_var = n_rep * max(float(parts["image_total"]) - shared_var, 0.0)
    # The observed variance of one replicate (what the printed interval uses). It can be below
    # seed_var + own_var: seeds that agree by chance more than their test noise predicts.
    per_seed = n_rep * float(parts["seed"])
    out.update(
        seed_sd=float(np.sqrt(seed_var)),
        test_sd_per_seed=float(np.sqrt(own_var)),
        test_sd_shared=float(np.sqrt(shared_var)),
    )
    # Which noise makes up more of the half-width at the current seed count: the spread
    # seeds add, or the test images (each seed's own test noise plus the shared part).
    t_level, _, z_level, _ = _quantiles(np.array([n_rep]))
    seed_term = float(t_level[0]) ** 2 * seed_var / n_rep
    test_term = float(t_level[0]) ** 2 * own_var / n_rep + z_level**2 * shared_var
    out["dominant"] = "seeds" if seed_term >= test_term else "test images"
    planned = np.asarray(list(seeds_planned), dtype=np.float64)
    table = project(per_seed, shared_var, planned, two_cells=not paired, own_var=own_var)
    out["by_seeds"] = [
        {"seeds": int(n), "half_width": float(h), "mdd_80": float(m)}
        for n, h, m in zip(planned, table["half_width"], table["mdd"])
    ]
    notes = []
    now = float(
        project(per_seed, shared_var, [n_rep], two_cells=False, own_var=own_var)["half_width"][0]
    )
    low, high = (-1.0, 1.0) if paired else (0.0, 1.0)
    mean = float(parts["mean"])
    if mean - now < low or mean + now > high:
        edge = "+-100 pp" if paired else ("100%" if mean + now > high else "0%")
        notes.append(
            f"at {n_rep} seeds the printed interval is narrower than +-{100 * now:.1f} pp: "
            f"it is cut at {edge}"
        )
    if n_rep == 2:
        notes.append("based on 2 seeds: the seed spread is a rough guess")
    floor = float(stats.norm.isf((1 - CONFIDENCE) / 2) * np.sqrt(shared_var))
    if floor >= target_half_width:
        notes.append(
            f"+-{100 * target_half_width:g} pp not reachable: the test images alone give "
            f"+-{100 * floor:.2f} pp whatever the number of seeds (a larger test set "
            "is needed)"
        )
    else:
        candidates = np.arange(2, MAX_SEEDS + 1, dtype=np.float64)
        widths = project(per_seed, shared_var, candidates, two_cells=not paired, own_var=own_var)[
            "half_width"
        ]
        reached = np.flatnonzero(widths <= target_half_width)
        if reached.size:
            out["seeds_for_target"] = int(candidates[reached[0]])
        else:
            notes.append(f"+-{100 * target_half_width:g} pp needs more than {MAX_SEEDS} seeds")
    if paired is False:
        notes.append(
            "MDD assumes the other method has the same noise and shares none of it "
            "(pairing on seeds and images usually does better; see the comparisons)"
        )
    out["note"] = "; ".join(notes) or None
    return out
