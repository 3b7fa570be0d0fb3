"""How many seeds a study needs: interval width and detectable difference at other seed counts.

From what a study observed for a cell (or for a paired difference) -- the spread between seeds
beyond test noise, each seed's own test noise, and the test-image noise the seeds share -- this
projects the 95% interval half-width (same construction as ``study.bootstrap``) and the minimum
detectable difference (MDD: the true difference a two-sided 5% test finds with 80% power) at
other seed counts, and the seeds needed for a half-width of +-1 pp. The shared test-image noise
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


def project(per_seed_var: float, shared_var: float, n_seeds, *, two_cells: bool) -> dict:
    """Half-width and MDD at ``n_seeds`` (array) for a statistic whose replicates vary by
    ``per_seed_var`` (seed spread + each seed's own test noise) around a shared test-image
    noise ``shared_var``. ``two_cells``: the MDD compares two independent cells with this
    noise each (no pairing benefit assumed), else the statistic is itself a paired difference.
    """
    n_seeds = np.asarray(n_seeds, dtype=np.float64)
    t_level, t_power, z_level, z_power = _quantiles(n_seeds)
    seed_part = per_seed_var / n_seeds
    half = np.sqrt(t_level**2 * seed_part + z_level**2 * shared_var)
    factor = 2.0 if two_cells else 1.0
    mdd = np.sqrt(
        factor * ((t_level + t_power) ** 2 * seed_part + (z_level + z_power) ** 2 * shared_var)
    )
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
    seed_var = n_rep * float(parts["seed_only"])  # between seeds, beyond test noise
    own_var = n_rep * float(parts["own_test"])  # each seed's own test-image noise
    shared_var = float(parts["image"])  # test-image noise all seeds share
    per_seed = seed_var + own_var
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
    table = project(per_seed, shared_var, planned, two_cells=not paired)
    out["by_seeds"] = [
        {"seeds": int(n), "half_width": float(h), "mdd_80": float(m)}
        for n, h, m in zip(planned, table["half_width"], table["mdd"])
    ]
    notes = []
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
        widths = project(per_seed, shared_var, candidates, two_cells=not paired)["half_width"]
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
