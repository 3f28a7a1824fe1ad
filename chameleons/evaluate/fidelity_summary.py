"""A run's fidelity figures aggregated from the per-item rows of `fidelity.score_items`: mean
probability, rank, top-1/top-3 and the rank score per kind (generated, reference = ceiling,
baseline = another character's line), each with a seeded bootstrap interval and its chance
level; the paired margins; style statistics. Pure functions of the rows."""

import math
from collections import Counter

from .evaluation import distinct_n
from .fidelity_style import copies_context

BOOTSTRAP_SAMPLES = 1000
KINDS = ("generated", "reference", "baseline")


def mean_ci(values, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """Mean and a 95% percentile bootstrap interval (seeded: the same figures on every run)."""
    import numpy as np

    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    x = np.asarray(values)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(x.mean()), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)], "n": len(values)}


def rank_score(rank, n):
    """1 for rank 1, 0 for last, 0.5 expected by chance: comparable across candidate set sizes."""
    if rank is None or n is None or n < 2:
        return None
    return 1 - (rank - 1) / (n - 1)


def _kind_figures(rows, kind: str) -> list:
    """The first figures of `kind` per attributed item (the first continuation for generated)."""
    return [(r, _first(r, kind)) for r in rows if r["attributed"] and _first(r, kind) is not None]


def summarize_kind(rows, kind: str, n_all: int) -> dict:
    """Attribution among all characters and within the film, chance levels beside them."""
    pairs = _kind_figures(rows, kind)
    out = {"items": len(pairs)}
    for scope, n_of in (("all", lambda r, f: n_all), ("film", lambda r, f: r["film_characters"]),
                        ("scene", lambda r, f: f.get("n_scene"))):
        got = [(f, f[f"rank_{scope}"], n_of(r, f)) for r, f in pairs if f.get(f"rank_{scope}") is not None]
        out[scope] = {  # a baseline of several lines carries its top-1 / top-3 shares (fidelity.averaged)
            "items": len(got),
            "p": mean_ci([f[f"p_{scope}"] for f, _, _ in got]),
            "rank": mean_ci([k for _, k, _ in got]),
            "top1": mean_ci([f.get(f"top1_{scope}", k == 1) for f, k, _ in got]),
            "top3": mean_ci([f.get(f"top3_{scope}", k <= 3) for f, k, _ in got]),
            "score": mean_ci([rank_score(k, n) for _, k, n in got]),
            "chance": {"p": _mean([1 / n for _, _, n in got]), "rank": _mean([(n + 1) / 2 for _, _, n in got]),
                       "top1": _mean([1 / n for _, _, n in got]), "top3": _mean([min(3, n) / n for _, _, n in got]),
                       "score": 0.5 if got else None},
        }
    return out


def _mean(values):
    return round(sum(values) / len(values), 6) if values else None


def margin(rows, high: str, low: str, n_all: int, scope: str = "all") -> dict:
    """Paired difference `high` - `low` of the rank score and probability among all characters
    (or among the item's scene candidates, `scope` "scene"), on the items that have both, with
    bootstrap intervals: above 0 means `high` sounds more like the intended character."""
    score, prob = [], []
    for r in rows:
        a, b = _first(r, high), _first(r, low)
        if r["attributed"] and a and b and a.get(f"rank_{scope}") is not None and b.get(f"rank_{scope}") is not None:
            n = n_all if scope == "all" else a["n_scene"]
            score.append(rank_score(a[f"rank_{scope}"], n) - rank_score(b[f"rank_{scope}"], n))
            prob.append(a[f"p_{scope}"] - b[f"p_{scope}"])
    return {"score": mean_ci(score), "p": mean_ci(prob)}


def _first(row, kind: str):
    return (row["generated"][:1] or [None])[0] if kind == "generated" else row[kind]


def style_summary(rows, items, kind: str, training=None) -> dict:
    """Length ratio and copy rate of the first line of `kind` per item (all items, attributed
    or not: they need no classifier), and distinct-1/2 over those lines. Empty lines (an answer
    that could not be extracted) are counted; they are not attributed (the classifier would score
    them at its prior). With `training` (`fidelity_style.TrainingLines`): memorisation, the share
    of lines that repeat the character's training lines and the mean share of their word 4-grams
    it said in training (references and baselines, never trained on, show the natural level)."""
    texts = {"generated": lambda it: it.generated[0] if it.generated else None,
             "reference": lambda it: it.reference or None, "baseline": lambda it: it.baseline or None}[kind]
    figures = [_first(r, kind) for r in rows if r["attributed"]]
    figures = [f for f in figures if f]
    lines = [t for t in (texts(it) for it in items) if t is not None]
    copied = [copies_context(texts(it), it.context) for it in items if texts(it) is not None]
    out = {"lines": len(lines), "empty": sum(1 for t in lines if not t.strip()),
           "length_ratio": mean_ci([f["length_ratio"] for f in figures]),
           "distinct_1": round(distinct_n(lines, 1), 4), "distinct_2": round(distinct_n(lines, 2), 4),
           "copy_rate": mean_ci(copied)}
    if training is not None:
        own = [(it.character, texts(it)) for it in items if texts(it) is not None]
        overlaps = [training.overlap(c, t) for c, t in own]
        out["repeats_training_line"] = mean_ci([training.repeats(c, t) for c, t in own])
        out["training_4gram_overlap"] = mean_ci([x for x in overlaps if x is not None])
    return out


def aggregate(rows, items, classifier: dict, notices=(), training=None) -> dict:
    """The run's fidelity summary: attribution per kind (generated, reference = ceiling,
    baseline = another character's line), the margins, style statistics (memorisation with
    `training`, `fidelity_style.TrainingLines`) and the notices; `classifier` describes the
    speaker classifier (`Attributor.describe`)."""
    n_all = classifier["characters"]
    out = {"classifier": dict(classifier), "items": len(rows), "attributed": sum(r["attributed"] for r in rows)}
    for kind in KINDS:
        out[kind] = summarize_kind(rows, kind, n_all)
        out[kind]["style"] = style_summary(rows, items, kind, training)
    pairs = (("reference_minus_baseline", "reference", "baseline"), ("generated_minus_baseline", "generated", "baseline"),
             ("reference_minus_generated", "reference", "generated"))
    out["margin"] = {name: margin(rows, high, low, n_all) for name, high, low in pairs}
    out["margin_scene"] = {name: margin(rows, high, low, n_all, "scene") for name, high, low in pairs}
    out["classifier_accuracy"] = classifier_accuracy(rows)
    out["notices"] = list(notices)
    return out


MIN_F1_ITEMS = 5  # references a character needs to count in the macro-F1
DESIGN = (200, 3)  # items x seeds of a comparison of two settings, for the smallest detectable difference


def classifier_accuracy(rows) -> dict:
    """What the metric can see, on the references (real validation lines the classifier never
    trained on): top-1 within the scene and among all, with their chance; macro-F1 among all over
    the characters with MIN_F1_ITEMS or more references (predicted = the top class); and the
    smallest difference in scene rank score a comparison of DESIGN items x seeds detects (two-sided
    5%, power 80%: 2.8 x the per-item standard deviation of a paired difference / sqrt(items),
    that deviation taken from reference - the first same-scene baseline line: one line against one,
    as two settings' generated lines are, not against an average; the seeds' own noise averaged out)."""
    import statistics

    refs = [(r["character"], r["reference"]) for r in rows if r["attributed"] and r.get("reference")]
    scene = [f for _, f in refs if f.get("rank_scene") is not None]
    counts = Counter(c for c, _ in refs)
    f1 = []
    for c in (c for c, k in counts.items() if k >= MIN_F1_ITEMS):
        tp = sum(1 for who, f in refs if who == c and f.get("top_all") == c)
        predicted = sum(1 for _, f in refs if f.get("top_all") == c)
        f1.append(2 * tp / (counts[c] + predicted) if counts[c] + predicted else 0.0)
    diffs = [rank_score(a["rank_scene"], a["n_scene"]) - rank_score(b.get("rank_scene_first", b["rank_scene"]),
                                                                     b["n_scene"])
             for r in rows if r["attributed"] and (a := r.get("reference")) and (b := r.get("baseline"))
             and a.get("rank_scene") is not None and b.get("rank_scene") is not None]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    return {"references": len(refs), "top1_scene": _mean([f["rank_scene"] == 1 for f in scene]),
            "top1_scene_chance": _mean([1 / f["n_scene"] for f in scene]),
            "top1_all": _mean([f["rank_all"] == 1 for _, f in refs]),
            "macro_f1": _mean(f1), "macro_f1_characters": len(f1),
            "detectable_difference": round(2.8 * sd / math.sqrt(DESIGN[0]), 4) if sd is not None else None,
            "detectable_at": {"items": DESIGN[0], "seeds": DESIGN[1]}}


def format_summary(summary: dict) -> str:
    """One line per kind for the console: the all-characters score and top-1 with chance."""
    parts = []
    for kind in KINDS:
        a, scene = summary[kind]["all"], summary[kind].get("scene") or {}
        if a["items"]:
            in_scene = (f" (in its scene: score {scene['score']['mean']:.3f} top-1 {scene['top1']['mean']:.3f} among "
                        f"{1 / scene['chance']['top1']:.1f} candidates)") if scene.get("items") else ""
            parts.append(f"{kind} score {a['score']['mean']:.3f} top-1 {a['top1']['mean']:.3f} "
                         f"rank {a['rank']['mean']:.1f} ({a['items']} items){in_scene}")
    chance = f"; chance: score 0.5, top-1 {1 / summary['classifier']['characters']:.3f}"
    repeats = summary["generated"]["style"].get("repeats_training_line")
    if repeats and repeats.get("mean") is not None and summary["generated"]["style"]["lines"]:
        chance += f"; generated lines repeating a training line {repeats['mean']:.1%}"
    return f"fidelity among {summary['classifier']['characters']} characters: " + "; ".join(parts or ["nothing"]) + chance


def versus(rows, baseline_rows, n_all: int) -> dict:
    """Another model's output on the same items as a baseline for these rows (e.g. the untrained
    model's, `predict_Chameleons.py --untrained`): its first continuations' figures on the items
    both have, and the paired margin these - it (above 0: these sound more like the intended
    character), matched by sample id."""
    theirs = {r["sample_id"]: r for r in baseline_rows}
    both = [(r, theirs[r["sample_id"]]) for r in rows if r["sample_id"] in theirs]
    paired = [{"attributed": r["attributed"], "generated": r["generated"], "baseline": _first(b, "generated")}
              for r, b in both]
    return {"items": len(both), "baseline": summarize_kind([b for _, b in both], "generated", n_all),
            "margin": margin(paired, "generated", "baseline", n_all)}


def format_versus(result: dict, name: str = "untrained") -> str:
    """One line: the baseline model's score and top-1 among all characters, and the margin."""
    a, m = result["baseline"]["all"], result["margin"]["score"]
    if not a["items"] or m["ci95"] is None:
        return f"{name} baseline: no item attributed in both outputs ({result['items']} items in both)"
    return (f"{name} baseline: score {a['score']['mean']:.3f} top-1 {a['top1']['mean']:.3f} rank "
            f"{a['rank']['mean']:.1f} ({a['items']} items); margin over it {m['mean']:+.3f} "
            f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] ({m['n']} paired items)")
