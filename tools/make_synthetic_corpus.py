#!/usr/bin/env python3
"""Generate a synthetic corpus in the Chameleons format.

The real Chameleons corpus is not redistributable, so this produces a stand-in
with the same shape and scale (7,797 records, ~6,117 characters, 72,471 items,
~0.7% unusable) for load, packing and throughput tests. The text is random
words; only the structure and the length statistics are meant to be realistic.

By default every item is an independent snippet. `--scenes` writes films instead
(tools/synthetic_scenes.py): records of one film share scenes, every line a record's
character speaks after the first line of a scene is one of its items (context = the
scene so far, at most MAX_CONTEXT turns), so the partner's items quote it, and about
10% of lines are short generic ones ("Yeah.", "Okay.", "What?") heard in hundreds of
scenes. That is the shape the validation split has to cope with (tests/test_split_scenes.py).

    python tools/make_synthetic_corpus.py --out /tmp/chameleons.json
    python tools/make_synthetic_corpus.py --out /tmp/small.jsonl --scale 0.01 --jsonl
    python tools/make_synthetic_corpus.py --out /tmp/scenes.json --scenes
    python tools/make_synthetic_corpus.py --out /tmp/messy.json --scenes --duplicate_films 0.1 \
        --duplicate_style lower --renormalise 0.3 --split_records 0.1 --reorder 0.1 --truth /tmp/messy.truth.json

The adversarial flags (with --scenes) make the transcription noise real corpora have: films copied
under new character ids (`--duplicate_films`, each copy with one uniform `--duplicate_style`),
records re-normalised (lower case, final punctuation dropped or double spaces: the same scene held
in several characters' records, written differently), records split in two (a scene's items
alternate between them) and records whose items are shuffled. `--truth` writes the identity of
every line: `truth[record][item]` lists the line ids of that item's context turns, then of its
continuation (id // 1000: the scene, id % 1000: its position there); a copied or
re-normalised line keeps its id.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chameleons.core.outputs import write_records
from chameleons.run.cli import OneLineParser
from synthetic_base import (FULL_HASHES, FULL_ITEMS, FULL_RECORDS, MAX_CONTEXT, _NAMES, _TITLE_WORDS, _allocate,
                            _character_plan, _Lines, _profile)
from synthetic_scenes import GENERIC_SHARE, NOISE_STYLES, _truth_lists, make_adversarial, make_scene_corpus


def _counts(scale: float) -> tuple[int, int, int]:
    """Scale the full-size counts, keeping records <= items and hashes <= records."""
    n_records = max(1, round(FULL_RECORDS * scale))
    n_hashes = max(1, min(n_records, round(FULL_HASHES * scale)))
    n_items = max(n_records, round(FULL_ITEMS * scale))
    return n_records, n_hashes, n_items


def _context_len(rng: random.Random) -> int:
    """1..MAX_CONTEXT turns, mostly short; redrawn rather than clipped to avoid a spike at the cap."""
    while True:
        n = int(rng.lognormvariate(math.log(4.0), 0.8))
        if n <= MAX_CONTEXT:
            return max(1, n)


def _item(rng: random.Random, line: _Lines, char_src: str, others: list[str], unusable: str | None) -> dict:
    """One item; the context never ends with the character unless unusable == 'own_turn'."""
    n = _context_len(rng)
    # With a single other speaker the character must take part, or the scene is a monologue.
    pool = others + [char_src] if len(others) == 1 or rng.random() < 0.6 else list(others)
    speakers = [char_src if unusable == "own_turn" else rng.choice(others)]
    for _ in range(n - 1):
        choices = [s for s in pool if s != speakers[-1]] or pool
        speakers.append(rng.choice(choices))
    speakers.reverse()
    context = [{"source": s, "content": line()} for s in speakers]
    continuation = "" if unusable == "empty" else line()
    return {"context": context, "continuation": continuation}


def make_corpus(seed: int = 0, n_records: int = FULL_RECORDS, n_hashes: int = FULL_HASHES,
                n_items: int = FULL_ITEMS) -> list[dict]:
    """Build the corpus in memory; same seed and counts give identical output."""
    if not (1 <= n_hashes <= n_records <= n_items):
        raise ValueError("need 1 <= n_hashes <= n_records <= n_items")
    rng = random.Random(seed)
    per_hash, char_items, unusable_at = _character_plan(rng, n_records, n_hashes, n_items)

    hashes: list[str] = []
    seen: set[str] = set()
    while len(hashes) < n_hashes:
        h = f"{rng.getrandbits(128):032x}"
        if h not in seen:
            seen.add(h)
            hashes.append(h)

    line = _Lines(rng)
    records: list[dict] = []
    item_no = 0
    for h, n_rec, n_it in zip(hashes, per_hash, char_items):
        name = rng.choice(_NAMES)
        profile, personality = _profile(rng, name)
        split = [1 + x for x in _allocate(rng, [rng.random() + 0.05 for _ in range(n_rec)], n_it - n_rec)]
        for rec_items in split:
            others = rng.sample([x for x in _NAMES if x != name], rng.randint(1, 3))
            roll = rng.random()
            char_src = "user" if roll < 0.03 else "USER" if roll < 0.04 else f" {name} " if roll < 0.05 else name
            title = " ".join(rng.sample(_TITLE_WORDS, rng.randint(2, 3))).title()
            data = []
            for _ in range(rec_items):
                kind = None
                if item_no in unusable_at:
                    kind = "empty" if rng.random() < 0.5 else "own_turn"
                data.append(_item(rng, line, char_src, others, kind))
                item_no += 1
            records.append({
                "user_hash": h,
                "user": {"profile": dict(profile), "personality": json.loads(json.dumps(personality))},
                "task": {
                    "description": f"Continue the dialogue as {name} in the film \"{title}\".",
                    "task_behavior_collections": [{"data": data}],
                },
            })
    rng.shuffle(records)
    return records


_SHARES = {
    "duplicate_films": "share of films copied under new character ids",
    "renormalise": "share of records re-normalised (lower case, no final punctuation or double spaces)",
    "split_records": "share of records split in two (a scene's items alternate between them)",
    "reorder": "share of records whose items are shuffled",
}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="make_synthetic_corpus.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the record/hash/item counts")
    p.add_argument("--jsonl", action="store_true", help="write JSON Lines instead of a JSON list")
    p.add_argument("--scenes", action="store_true",
                   help="films of shared scenes with frequent generic lines, instead of independent items")
    p.add_argument("--generic_share", type=float, default=GENERIC_SHARE,
                   help="with --scenes: share of generic lines such as 'Yeah.' (default %(default)s)")
    for name in _SHARES:
        p.add_argument(f"--{name}", type=float, default=0.0, help=f"with --scenes: {_SHARES[name]} (default 0)")
    p.add_argument("--duplicate_style", choices=NOISE_STYLES,
                   help="with --duplicate_films: the one change every copy gets (default: drawn per copy)")
    p.add_argument("--unique_lines", action="store_true",
                   help="with --scenes: no random line said twice (by chance), only the generic ones repeat")
    p.add_argument("--truth", help="with --scenes: also write every item's line ids here (JSON)")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be positive")
    for name in ("generic_share", *_SHARES):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name} must be between 0 and 1")
    noisy = any(getattr(args, name) for name in _SHARES) or args.duplicate_style or args.truth or args.unique_lines
    if noisy and not args.scenes:
        p.error("--duplicate_films, --duplicate_style, --renormalise, --split_records, --reorder, --unique_lines "
                "and --truth need --scenes")
    n_records, n_hashes, n_items = _counts(args.scale)
    if args.scenes:
        places: dict = {}
        records = make_scene_corpus(args.seed, n_records, n_hashes, n_items, args.generic_share, places=places,
                                    unique_lines=args.unique_lines)
        truth = _truth_lists(records, places)
        if any(getattr(args, name) for name in _SHARES):
            records, truth = make_adversarial(records, places, args.seed, args.duplicate_films, args.duplicate_style,
                                              args.renormalise, args.split_records, args.reorder)
    else:
        records = make_corpus(args.seed, n_records, n_hashes, n_items)
    write_records(args.out, records, args.jsonl)
    if args.truth:
        write_records(args.truth, truth, False)
    n_items = sum(len(c["data"]) for r in records for c in r["task"]["task_behavior_collections"])
    print(f"wrote {args.out}: {len(records)} records, {len({r['user_hash'] for r in records})} characters, "
          f"{n_items} items", file=sys.stderr)
    return 0



if __name__ == "__main__":
    sys.exit(main())
