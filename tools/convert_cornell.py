#!/usr/bin/env python3
"""Convert the Cornell Movie-Dialogs Corpus into the Chameleons format.

One record per (character, movie); user_hash is the md5 of the Cornell
characterID. Each line a character speaks after at least one earlier line of
the same conversation becomes an item whose context is the previous lines (at
most MAX_CONTEXT) with speaker names as sources.

    python tools/convert_cornell.py path/to/cornell_movie_dialogs_corpus --out cornell.json
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.core.outputs import write_records
from chameleons.run.cli import OneLineParser, positive_int

SEP = " +++$+++ "
ENCODING = "iso-8859-1"
MAX_CONTEXT = 20
_GENDERS = {"m": "male", "f": "female"}


def _rows(path: str, n_fields: int):
    """Yield (line number, fields) for each line split into exactly n_fields fields (missing
    trailing ones become '')."""
    with open(path, encoding=ENCODING, newline="") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(SEP, n_fields - 1)
            if len(fields) < n_fields and fields[-1].endswith(SEP.rstrip()):
                fields[-1] = fields[-1][: -len(SEP.rstrip())]
                fields.append("")
            fields += [""] * (n_fields - len(fields))
            yield lineno, [x.strip() for x in fields]


def _line_ids(text: str, path: str, lineno: int) -> list:
    """The conversation's line ids, written as a Python list of strings: ['L194', 'L195']."""
    try:
        ids = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{path}: line {lineno}: field 4 must be a list of line ids like ['L1', 'L2'], "
                        f"found {text[:60]!r}")
    return ids


def _natural_key(ident: str):
    digits = "".join(c for c in ident if c.isdigit())
    return (ident.rstrip("0123456789"), int(digits) if digits else -1, ident)


def convert(dir_path: str, max_context: int = MAX_CONTEXT) -> list[dict]:
    """Read the three corpus files under dir_path and return Chameleons records."""
    lines: dict[str, tuple[str, str, str, str]] = {}
    line_names: dict[str, str] = {}
    for _, (line_id, char_id, movie_id, name, text) in _rows(os.path.join(dir_path, "movie_lines.txt"), 5):
        lines[line_id] = (char_id, movie_id, name, text)
        if not line_names.get(char_id):
            line_names[char_id] = name

    chars: dict[str, dict] = {}
    titles: dict[str, str] = {}
    for _, (char_id, name, movie_id, title, gender, _credits) in _rows(
        os.path.join(dir_path, "movie_characters_metadata.txt"), 6
    ):
        chars[char_id] = {"name": name, "gender": gender.lower()}
        titles.setdefault(movie_id, title)

    items: dict[tuple[str, str], list[dict]] = {}
    conversations = os.path.join(dir_path, "movie_conversations.txt")
    for lineno, (_c1, _c2, _movie, ids) in _rows(conversations, 4):
        turns = []
        for line_id in _line_ids(ids, conversations, lineno):
            if line_id not in lines:
                continue
            char_id, movie_id, name, text = lines[line_id]
            if not text:
                continue
            name = name or chars.get(char_id, {}).get("name") or char_id
            if turns:
                items.setdefault((char_id, movie_id), []).append({
                    "context": [dict(t) for t in turns[-max_context:]],
                    "continuation": text,
                })
            turns.append({"source": name, "content": text})

    records = []
    for char_id, movie_id in sorted(items, key=lambda k: (_natural_key(k[0]), _natural_key(k[1]))):
        meta = chars.get(char_id, {})
        name = meta.get("name") or line_names.get(char_id) or char_id
        profile: dict = {"name": name}
        gender = _GENDERS.get(meta.get("gender", "?"))
        if gender:
            profile["gender"] = gender
        title = titles.get(movie_id, "")
        if title:
            profile["movie_title"] = title
        film = f'the film "{title}"' if title else f"movie {movie_id}"
        records.append({
            "user_hash": hashlib.md5(char_id.encode("utf-8")).hexdigest(),
            "user": {"profile": profile, "personality": {"structured": {}, "unstructured": ""}},
            "task": {
                "description": f"Continue the dialogue as {name} in {film}.",
                "task_behavior_collections": [{"data": items[char_id, movie_id]}],
            },
        })
    return records


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="convert_cornell.py", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus_dir", help="directory holding movie_lines.txt, movie_conversations.txt, "
                                      "movie_characters_metadata.txt")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--max-context", type=positive_int, default=MAX_CONTEXT)
    args = p.parse_args(argv)
    for name in ("movie_lines.txt", "movie_conversations.txt", "movie_characters_metadata.txt"):
        if not os.path.isfile(os.path.join(args.corpus_dir, name)):
            raise UserError(f"{name} not found in {args.corpus_dir}")
    records = convert(args.corpus_dir, args.max_context)
    write_records(args.out, records)
    n_items = sum(len(r["task"]["task_behavior_collections"][0]["data"]) for r in records)
    print(f"wrote {args.out}: {len(records)} records, {n_items} items", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
