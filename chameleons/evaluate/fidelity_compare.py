"""Which settings really differ in character fidelity: for every pair of settings scored on the
same items, the paired difference of the first continuation's rank score (1 = the intended
character first, 0.5 = chance), with a 95% interval from a bootstrap over items and over each
setting's seeds, and Holm's correction for the number of pairs compared (a grid of 7 ablations
has 21 pairs: at 5% each, one would look real by chance)."""

import itertools

from .fidelity_summary import rank_score

BOOTSTRAP_SAMPLES = 2000
ALPHA = 0.05


def item_scores(record: dict) -> dict:
    """sample id -> rank score among all characters of the item's first generated line, from a
    prediction's `<output>.fidelity.json` or a run's final_fidelity.json."""
    n = (record.get("summary") or {}).get("classifier", {}).get("characters")
    out = {}
    for row in record.get("items") or ():
        first = (row.get("generated") or [None])[0]
        if row.get("attributed") and first and first.get("rank_all") is not None:
            out[row["sample_id"]] = rank_score(first["rank_all"], n)
    return out


def paired_difference(a_runs: list, b_runs: list, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """Mean over the items every run scored of (setting a's seed mean - setting b's). The interval
    resamples items and, independently, each setting's seeds; p is the two-sided bootstrap
    p-value of no difference."""
    import numpy as np

    items = sorted(set.intersection(*(set(r) for r in a_runs + b_runs)))
    if not items:
        return {"items": 0, "difference": None, "ci95": None, "p": None}
    a = np.array([[r[i] for i in items] for r in a_runs])
    b = np.array([[r[i] for i in items] for r in b_runs])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(samples, len(items)))
    sa = rng.integers(0, len(a_runs), size=(samples, len(a_runs)))
    sb = rng.integers(0, len(b_runs), size=(samples, len(b_runs)))
    diffs = np.array([a[sa[k]][:, idx[k]].mean() - b[sb[k]][:, idx[k]].mean() for k in range(samples)])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return {"items": len(items), "difference": round(float(a.mean() - b.mean()), 6),
            "ci95": [round(float(lo), 6), round(float(hi), 6)], "p": round(float(max(p, 1 / samples)), 6)}


def holm(pvalues: list) -> list:
    """Holm-adjusted p-values (step-down, monotone), in the order given."""
    order = sorted(range(len(pvalues)), key=lambda k: pvalues[k])
    adjusted, running = [None] * len(pvalues), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[k]))
        adjusted[k] = round(running, 6)
    return adjusted


def compare_settings(settings: dict) -> list:
    """`settings`: name -> list of item-score dicts (one per seed). Every pair that shares scored
    items, with its difference, interval, p, Holm-adjusted p and whether it is real at ALPHA."""
    pairs = []
    for (na, a), (nb, b) in itertools.combinations(sorted(settings.items()), 2):
        result = paired_difference(a, b)
        if result["items"]:
            pairs.append({"a": na, "b": nb, "seeds_a": len(a), "seeds_b": len(b), **result})
    for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs])):
        pair["p_holm"] = adjusted
        pair["real"] = adjusted < ALPHA
    return pairs
