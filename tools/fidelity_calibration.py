#!/usr/bin/env python3
"""Can the fidelity metric separate? On a held-out split of a real dialogue corpus, the
reference lines (ceiling) must score clearly above another character's lines (baseline).

    python tools/fidelity_calibration.py data/sample_chameleons.json --val_seeds 0 1 2

For each validation seed: the run's split (`splitting.split_train_val`, N = all), the speaker
classifier fitted on the training pool, the validation references scored for their own
character, and for each a reference line of another character (of the same film where the
file has one). Prints per seed and pooled: the ceiling's and the baseline's rank score (1 = the
intended character ranked first, 0.5 = chance) and top-1, and the paired margin with a 95%
bootstrap interval; says "cannot separate" when the interval's lower end is below
--min_margin.
"""

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.errors import user_errors_exit
from chameleons.corpus.conversations import Conversations
from chameleons.corpus.data import is_training_sample, load_corpus
from chameleons.corpus.splitting import SplitSettings, split_train_val
from chameleons.run.cli import OneLineParser
from chameleons.evaluate import fidelity, fidelity_summary


def calibrate(samples, val_seed: int, val_ratio: float = 0.1, context: bool = False, n_items=None) -> tuple:
    """(per-item rows, summary) of one held-out split: references and baselines only; `n_items`:
    the first that many validation items in content-hash order (None: all)."""
    conversations = Conversations(samples)
    split = split_train_val(samples, SplitSettings(None, val_seed, val_ratio), index=conversations)
    val = [s for s in split.val if is_training_sample(s)]
    if n_items:
        val = sorted(val, key=lambda s: hashlib.blake2b(s.uid.encode()).hexdigest())[:n_items]
    items = [fidelity.Item(s.sample_id, s.uid, s.user_hash, [c for _, c in s.context], [], s.target, sources=s.sources)
             for s in val]
    fid = fidelity.setup(fidelity.TrainingPool(samples, split.pool_samples(), conversations),
                         [it.reference for it in items] + [c for it in items for c in it.context],
                         warn=lambda line: print(f"val_seed {val_seed}: {line}"), context=context)
    return fidelity.evaluate_items(fid, items) if fid is not None else ([], None)


def pooled_margin(all_rows, n_all: int, scope: str = "all") -> dict:
    return fidelity_summary.margin(all_rows, "reference", "baseline", n_all, scope)


def verdict(margin: dict, min_margin: float) -> str:
    ci = margin["score"]["ci95"]
    if ci is None:
        return "no items"
    return "separates" if ci[0] > min_margin else "cannot separate"


def main(argv=None) -> int:
    parser = OneLineParser(prog="fidelity_calibration.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("data_file")
    parser.add_argument("--val_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--val_ratio", type=float, default=0.1)
    parser.add_argument("--context", action="store_true", help="the classifier also sees the context line each line "
                                                               "answers (predict_Chameleons.py --fidelity_context on)")
    parser.add_argument("--min_margin", type=float, default=0.05, help="rank-score margin below which it cannot separate")
    parser.add_argument("--items", type=int, help="score only this many validation items per split (content order)")
    args = parser.parse_args(argv)
    samples = load_corpus(args.data_file).samples
    all_rows, n_all = [], None
    for seed in args.val_seeds:
        rows, summary = calibrate(samples, seed, args.val_ratio, args.context, args.items)
        if summary is None:  # no classifier (the notice above says why)
            continue
        n_all = summary["classifier"]["characters"]
        all_rows += rows
        ref, base = summary["reference"]["all"], summary["baseline"]["all"]
        m = summary["margin"]["reference_minus_baseline"]["score"]
        print(f"val_seed {seed}: {ref['items']} references of {n_all} characters; ceiling score "
              f"{ref['score']['mean']:.3f} top-1 {ref['top1']['mean']:.3f}; baseline score {base['score']['mean']:.3f} "
              f"top-1 {base['top1']['mean']:.3f}; margin {m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]")
        ref, base = summary["reference"]["scene"], summary["baseline"]["scene"]
        m = summary["margin_scene"]["reference_minus_baseline"]["score"]
        if ref["items"]:
            print(f"  in its scene ({ref['items']} items, top-1 chance {ref['chance']['top1']:.3f}): ceiling score "
                  f"{ref['score']['mean']:.3f} top-1 {ref['top1']['mean']:.3f}; same-scene baseline score "
                  f"{base['score']['mean']:.3f} top-1 {base['top1']['mean']:.3f}; margin {m['mean']:.3f} "
                  f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]")
        acc = {k: "n/a" if v is None else round(v, 3) if isinstance(v, float) else v
               for k, v in summary["classifier_accuracy"].items()}  # no scene candidates: no scene figures
        if acc["references"]:
            print(f"  classifier on {acc['references']} held-out references: top-1 in the scene {acc['top1_scene']} "
                  f"(chance {acc['top1_scene_chance']}), among all {acc['top1_all']} (chance {1 / n_all:.3f}); "
                  f"macro-F1 {acc['macro_f1']} over {acc['macro_f1_characters']} characters; detectable "
                  f"difference at {acc['detectable_at']['items']} items: {acc['detectable_difference']}")
    for scope, label in (("all", "among all characters"), ("scene", "in its scene (the headline)")):
        m = pooled_margin(all_rows, n_all, scope)
        s = m["score"]
        if s["n"]:
            print(f"pooled over {len(args.val_seeds)} splits, {label} ({s['n']} items): margin {s['mean']:.3f} "
                  f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}], probability margin {m['p']['mean']:.4f} "
                  f"[{m['p']['ci95'][0]:.4f}, {m['p']['ci95'][1]:.4f}]: {verdict(m, args.min_margin)}")
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
