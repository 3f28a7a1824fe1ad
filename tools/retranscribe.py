#!/usr/bin/env python3
"""A second, noisy transcription of some episodes of a converted corpus, true line ids kept.

Real corpora hold some episodes twice: another subtitle file, another fan transcript. For a
share of the episodes (records grouped by `user.profile.episode`, or by their record when there
is none) every record is copied with each line transcribed again: word-level edits (a word
replaced, dropped, inserted, or two swapped) on about half the lines of four or more words, and
the transcription differences of `synthetic_scenes.renormalised` on about a third of all
lines. A line is edited the same way wherever the copy shows it (one transcript, one text). The
copies keep the characters' hashes and their lines' true ids, so a test can ask whether a
validation line reaches training through the other transcription.

    python tools/retranscribe.py seinfeld.json --out seinfeld_noisy.json --share 0.1 --seed 0
"""

from __future__ import annotations

import copy
import random
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chameleons.core.errors import user_errors_exit
from chameleons.core.outputs import write_records
from chameleons.corpus.data import read_records
from chameleons.run.cli import OneLineParser, ratio
from synthetic_scenes import NOISE_STYLES, renormalised  # noqa: E402

EDIT_SHARE = 0.5
STYLE_SHARE = 0.3
MIN_EDIT_WORDS = 4  # shorter lines only gain a word (a dropped word would change what they say)
FILLERS = ("uh", "well", "just", "really", "so", "oh", "now", "like")


def _edited(words: list, rng: random.Random) -> list:
    words = list(words)
    for _ in range(rng.choice((1, 1, 2))):
        k = rng.randrange(len(words))
        op = rng.choice(("replace", "drop", "insert", "swap")) if len(words) >= MIN_EDIT_WORDS else "insert"
        if op == "replace":
            words[k] = rng.choice(FILLERS)
        elif op == "drop" and len(words) > 3:
            del words[k]
        elif op == "insert":
            words.insert(k, rng.choice(FILLERS))
        elif k + 1 < len(words):
            words[k], words[k + 1] = words[k + 1], words[k]
    return words


def retranscribed_line(text: str, seed: int, every_line: bool = False) -> str:
    """The line as another transcriber wrote it; the same for the same (text, seed). With
    `every_line`, every line differs in its words (a short one gains a filler word): only
    near-duplicate matching can then tie the copy to its original."""
    rng = random.Random(zlib.crc32(f"{seed}\x00{text}".encode()))
    words = text.split()
    if words and (every_line or (len(words) >= MIN_EDIT_WORDS and rng.random() < EDIT_SHARE)):
        text = " ".join(_edited(words, rng))
    if rng.random() < STYLE_SHARE:
        text = renormalised(text, rng.choice(NOISE_STYLES))
    return text


def _episode(record: dict, index: int):
    return record.get("user", {}).get("profile", {}).get("episode", f"record {index}")


def retranscribe(records: list, share: float, seed: int = 0, truth: list = None,
                 every_line: bool = False) -> tuple[list, list]:
    """(records, truth) with a noisy copy of each record of `share` of the episodes appended
    after the originals; `truth` (per record, per item: line ids) extended alike."""
    episodes = sorted({_episode(r, i) for i, r in enumerate(records)})
    chosen = set(random.Random(seed).sample(episodes, round(share * len(episodes))))
    out, out_truth = list(records), list(truth) if truth is not None else None
    for i, record in enumerate(records):
        if _episode(record, i) not in chosen:
            continue
        twin = copy.deepcopy(record)
        for coll in twin["task"]["task_behavior_collections"]:
            for item in coll["data"]:
                for turn in item["context"]:
                    turn["content"] = retranscribed_line(turn["content"], seed, every_line)
                item["continuation"] = retranscribed_line(item["continuation"], seed, every_line)
        out.append(twin)
        if out_truth is not None:
            out_truth.append(truth[i])
    return out, out_truth


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="retranscribe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("data_file", help="a Chameleons file (e.g. from tools/convert_seinfeld.py)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--share", type=ratio, default=0.1, help="share of the episodes transcribed twice (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every_line", action="store_true", help="edit the words of every line, short ones too")
    args = p.parse_args(argv)
    records = read_records(args.data_file)
    out, _ = retranscribe(records, args.share, args.seed, every_line=args.every_line)
    write_records(args.out, out)
    print(f"wrote {args.out}: {len(records):,} records and {len(out) - len(records):,} noisy copies", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
