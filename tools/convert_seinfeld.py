#!/usr/bin/env python3
"""Convert the Seinfeld subtitles shipped in `seinfeld-laugh-corpus` into the Chameleons format.

A real TV corpus with a recurring cast, catchphrases and stock exchanges, for developing the
split and the fidelity metric on real dialogue (`pip install -r requirements-test.txt`; the
package holds 96 episodes and loads offline). One record per character per episode; user_hash is
the md5 of the speaker name, so a character of many episodes has many records under one hash.
A speaker's consecutive subtitles are merged into one turn; each turn after the episode's first
is an item whose context is the episode's previous turns (at most --max_context), speaker names
as sources. Bracketed sound cues ("[SIGHS]") are removed; music-note and then empty lines are
dropped. The package has no scene boundaries, so an item's context can reach into the previous
scene of its episode, as subtitles do.

    python tools/convert_seinfeld.py --out seinfeld.json
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.core.outputs import write_records
from chameleons.run.cli import OneLineParser, positive_int

MAX_CONTEXT = 8
TURN_IDS = 100_000  # a line's true id: episode number * TURN_IDS + its turn in the episode
SERIES = "Seinfeld"
_CUE = re.compile(r"\[[^\]]*\]")
_MUSIC = ("\u266a", "\u266b", "\u05d2\u2122\u00d7")  # the note, and the note as the package's files decode it


def _clean(text: str) -> str:
    """One subtitle's words: sound cues removed, spacing collapsed; '' for a music-note line."""
    if any(m in text for m in _MUSIC):
        return ""
    return " ".join(_CUE.sub(" ", text).split())


def episode_turns(lines, counts: Counter) -> list:
    """[(speaker, text)] of one episode: a speaker's consecutive subtitles merged into one turn.
    `lines`: the package's Line objects (laugh markers are skipped by the caller)."""
    turns = []
    for line in lines:
        text = _clean(line.txt)
        speaker = " ".join(line.character.split())
        if not text or not speaker:
            counts["subtitles_dropped"] += 1
            continue
        counts["subtitles"] += 1
        if turns and turns[-1][0] == speaker:
            turns[-1] = (speaker, f"{turns[-1][1]} {text}")
        else:
            turns.append((speaker, text))
    return turns


def episode_records(title: str, turns: list, max_context: int, ids: list = None) -> list:
    """One record per speaker of the episode, in order of their first item. `ids` (a list)
    receives each record's items' turn numbers, context then target (the truth the noise tests
    track)."""
    items, numbers = {}, {}
    for t in range(1, len(turns)):
        speaker, text = turns[t]
        start = max(0, t - max_context)
        context = [{"source": s, "content": c} for s, c in turns[start:t]]
        items.setdefault(speaker, []).append({"context": context, "continuation": text})
        numbers.setdefault(speaker, []).append(list(range(start, t + 1)))
    if ids is not None:
        ids.extend(numbers.values())
    return [{
        "user_hash": hashlib.md5(speaker.encode("utf-8")).hexdigest(),
        "user": {"profile": {"name": speaker, "series": SERIES, "episode": title},
                 "personality": {"structured": {}, "unstructured": ""}},
        "task": {"description": f"Continue the dialogue as {speaker} in the {SERIES} episode \"{title}\".",
                 "task_behavior_collections": [{"data": data}]},
    } for speaker, data in items.items()]


def load_episodes():
    """The package's episodes in broadcast order, as (title, subtitle lines)."""
    try:
        root = logging.getLogger()
        level = root.level
        from seinfeld_laugh_corpus import corpus  # sets the root logger to DEBUG on import
        root.setLevel(level)
    except ImportError:
        raise UserError("seinfeld-laugh-corpus is not installed (pip install -r requirements-test.txt)") from None
    plays = sorted(corpus.load(fold_laughs=True), key=lambda p: (p.season, p.episode))
    return [(f"S{p.season:02d}E{p.episode:02d} {p.episode_name}", list(p.lines)) for p in plays]


def convert(episodes, max_context: int = MAX_CONTEXT, truth: list = None) -> tuple[list, Counter]:
    """Chameleons records of (title, lines) episodes, and the counts the tool prints. `truth` (a
    list) receives, per record, per item, the true ids of its lines (context, then target):
    episode number * TURN_IDS + turn number."""
    counts, records = Counter(), []
    for e, (title, lines) in enumerate(episodes):
        turns = episode_turns(lines, counts)
        counts["episodes"] += 1
        counts["turns"] += len(turns)
        ids = []
        records.extend(episode_records(title, turns, max_context, ids))
        if truth is not None:
            truth.extend([[e * TURN_IDS + t for t in item] for item in record] for record in ids)
    counts["speakers"] = len({r["user_hash"] for r in records})
    counts["records"] = len(records)
    counts["items"] = sum(len(r["task"]["task_behavior_collections"][0]["data"]) for r in records)
    return records, counts


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="convert_seinfeld.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--max_context", type=positive_int, default=MAX_CONTEXT,
                   help=f"previous turns of the episode in an item's context (default {MAX_CONTEXT})")
    args = p.parse_args(argv)
    records, counts = convert(load_episodes(), args.max_context)
    write_records(args.out, records)
    print(f"wrote {args.out}: {counts['episodes']} episodes, {counts['subtitles']:,} subtitles "
          f"({counts['subtitles_dropped']:,} music-note or empty dropped) merged into {counts['turns']:,} turns; "
          f"{counts['speakers']:,} speakers, {counts['records']:,} records, {counts['items']:,} items",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
