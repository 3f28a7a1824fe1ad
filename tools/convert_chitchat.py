#!/usr/bin/env python3
"""Convert the MIT-licensed chitchat-dataset (PyPI) into the Chameleons format.

The package ships one JSON object, {conversation_id: {"messages": [[utterance,
...], ...], "prompt": ..., "ratings": {...}, "start": ...}}, where each message
is a run of utterances {"text", "timestamp", "sender"} by one sender. A message
(its utterances joined with a space, as the package itself does) is one turn.
Every sender becomes a character: user_hash is the md5 of the sender id and the
name is an invented one (the data has no names). Each turn a character takes
after at least one earlier turn becomes an item, with up to MAX_CONTEXT earlier
turns as context.

    python tools/convert_chitchat.py --out chitchat_full.json
    python tools/convert_chitchat.py --sample --seed 0 --out data/sample_chameleons.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import sys
from pathlib import Path
from collections import Counter
from collections.abc import Iterable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.outputs import write_records  # noqa: E402

MAX_CONTEXT = 12
MISSING_PACKAGE = ("error: chitchat-dataset is not installed; run `pip install chitchat-dataset` "
                   "(MIT license) or pass --dataset-json PATH")

_FEMALE = """
Ada Beatrice Clara Daphne Elena Fiona Greta Hana Ingrid Jolene Keira Lena Mira
Nadia Opal Priya Rosalind Sabine Tamsin Una Vera Willa Yara Zoe Amara Celeste
Delphine Esme Farah Iris
""".split()
_MALE = """
Abel Bruno Caspar Dmitri Emil Felix Gideon Hugo Ivo Jasper Kofi Lucian Milo
Niko Oscar Pavel Quentin Rafael Soren Tobias Ulric Victor Wendell Xavier Yusuf
Zane Anton Basil Cyrus Dario
""".split()
_SURNAMES = """
Abbott Brandt Castellano Delacroix Ekwueme Fairweather Galloway Haverford Ibarra
Jansen Kowalski Lindqvist Marchetti Nakamura Okafor Pemberton Quill Rasmussen
Sandoval Thorne Underwood Valdez Whitlock Yamada Zielinski Ashby Blackwood
Calloway Dunmore Everly
""".split()


def load_dataset(path: str | None = None) -> dict:
    """The raw dataset dict: from the installed package, or from its dataset.json at path.

    Raises ModuleNotFoundError when path is None and the package is missing.
    """
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    import chitchat_dataset

    return dict(chitchat_dataset.Dataset())


def conversation_turns(conv: Mapping) -> list[tuple[str, str]]:
    """(sender, text) turns of one conversation; empty turns dropped, same-sender runs merged."""
    turns: list[tuple[str, str]] = []
    for message in conv.get("messages", []):
        parts = [u["text"].strip() for u in message if u.get("text", "").strip()]
        if not parts:
            continue
        sender = message[0]["sender"]
        if turns and turns[-1][0] == sender:
            turns[-1] = (sender, turns[-1][1] + " " + " ".join(parts))
        else:
            turns.append((sender, " ".join(parts)))
    return turns


def assign_names(sender_ids: Iterable[str], seed: int = 0) -> dict[str, tuple[str, str]]:
    """Give each sender a distinct invented "First Last" name and the gender that first name suggests.

    The mapping depends only on the set of ids and the seed, not on their order.
    """
    ids = sorted(set(sender_ids))
    rng = random.Random(seed)
    firsts = [(n, "female") for n in _FEMALE] + [(n, "male") for n in _MALE]
    combos = [(f"{first} {last}", gender) for (first, gender), last in itertools.product(firsts, _SURNAMES)]
    rng.shuffle(combos)
    rng.shuffle(ids)
    names = {}
    for i, sid in enumerate(ids):
        name, gender = combos[i % len(combos)]
        if i >= len(combos):
            name = f"{name} {i // len(combos) + 1}"
        names[sid] = (name, gender)
    return names


def md5_hex(sender_id: str) -> str:
    return hashlib.md5(sender_id.encode("utf-8")).hexdigest()


def _items_by_speaker(conversations: Mapping[str, Mapping], names: Mapping[str, tuple[str, str]],
                      max_context: int) -> dict[str, list[tuple[str, dict]]]:
    """sender -> [(conversation_id, item)] in dataset order."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for conv_id, conv in conversations.items():
        turns = conversation_turns(conv)
        for i in range(1, len(turns)):
            sender, text = turns[i]
            context = [{"source": names[s][0], "content": t} for s, t in turns[max(0, i - max_context):i]]
            out.setdefault(sender, []).append((conv_id, {"context": context, "continuation": text}))
    return out


def _senders(conversations: Mapping[str, Mapping]) -> list[str]:
    seen: dict[str, None] = {}
    for conv in conversations.values():
        for message in conv.get("messages", []):
            if message:
                seen.setdefault(message[0]["sender"], None)
    return list(seen)


def _record(sender: str, profile: dict, structured: dict, items: list[dict], description: str) -> dict:
    return {
        "user_hash": md5_hex(sender),
        "user": {"profile": dict(profile), "personality": {"structured": dict(structured), "unstructured": ""}},
        "task": {"description": description, "task_behavior_collections": [{"data": items}]},
    }


def _description(name: str) -> str:
    return f"Continue the online chat as {name}, talking with a stranger."


def convert(conversations: Mapping[str, Mapping], names: Mapping[str, tuple[str, str]] | None = None,
            max_context: int = MAX_CONTEXT, seed: int = 0) -> list[dict]:
    """One record per sender who has at least one item, in order of first appearance."""
    names = names or assign_names(_senders(conversations), seed)
    by_speaker = _items_by_speaker(conversations, names, max_context)
    records = []
    for sender in _senders(conversations):
        if sender in by_speaker:
            name = names[sender][0]
            items = [item for _, item in by_speaker[sender]]
            records.append(_record(sender, {"name": name}, {}, items, _description(name)))
    return records


def _mean_ratings(conversations: Mapping[str, Mapping], conv_ids: Iterable[str]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for cid in conv_ids:
        for k, v in (conversations[cid].get("ratings") or {}).items():
            if isinstance(v, (int, float)):
                sums.setdefault(k, []).append(v)
    return {k: round(sum(v) / len(v) / 10, 2) for k, v in sorted(sums.items())}


def make_sample(conversations: Mapping[str, Mapping], seed: int = 0, n_characters: int = 50,
                min_items: int = 8, max_items: int = 60, max_turn_chars: int = 400,
                max_context: int = MAX_CONTEXT) -> list[dict]:
    """A small, deterministic slice: n_characters characters with min_items..max_items items each.

    Item counts follow a clipped Pareto, so most characters have 10-20 items and a
    few have 60. Conversations with a turn over max_turn_chars are skipped to keep
    the file small. About a third of the characters are split at conversation
    boundaries into 2-3 records sharing one user_hash, as one character in several
    films is in the real corpus. Names, genders and ages are invented; the
    "chat_ratings" dimension is the mean of the dataset's ratings (1-10, scaled to
    0-1) of the character's conversations that were rated.
    """
    rng = random.Random(seed)
    names = assign_names(_senders(conversations), seed)
    short = {cid: conv for cid, conv in conversations.items()
             if all(len(t) <= max_turn_chars for _, t in conversation_turns(conv))}
    by_speaker = _items_by_speaker(short, names, max_context)
    candidates = sorted(s for s, items in by_speaker.items() if len(items) >= min_items)
    if len(candidates) < n_characters:
        raise ValueError(f"only {len(candidates)} speakers have >= {min_items} items")
    chosen = rng.sample(candidates, n_characters)
    n_convs = Counter(s for conv in conversations.values() for s in {s for s, _ in conversation_turns(conv)})

    records = []
    for sender in chosen:
        target = min(max_items, int(min_items * rng.paretovariate(1.3)))
        taken = by_speaker[sender][:target]
        conv_ids = list(dict.fromkeys(cid for cid, _ in taken))
        name, gender = names[sender]
        profile: dict = {"name": name}
        if rng.random() < 0.6:
            profile["gender"] = gender
        if rng.random() < 0.4:
            profile["age"] = rng.randint(18, 70)
        if rng.random() < 0.2:
            profile["conversations_in_dataset"] = n_convs[sender]
        structured = {}
        ratings = _mean_ratings(short, conv_ids)
        if ratings and rng.random() < 0.5:
            structured["chat_ratings"] = ratings

        n_parts = 1
        if len(conv_ids) >= 2 and rng.random() < 0.35:
            n_parts = min(len(conv_ids), rng.choice((2, 2, 3)))
        cut_convs = sorted(rng.sample(range(1, len(conv_ids)), n_parts - 1)) if n_parts > 1 else []
        part_of = {cid: sum(i >= c for c in cut_convs) for i, cid in enumerate(conv_ids)}
        for part in range(n_parts):
            items = [item for cid, item in taken if part_of[cid] == part]
            records.append(_record(sender, profile, structured, items, _description(name)))
    rng.shuffle(records)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--sample", action="store_true", help="write the small seeded slice instead of everything")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--characters", type=int, default=50, help="characters in the --sample slice")
    p.add_argument("--max-context", type=int, default=MAX_CONTEXT)
    p.add_argument("--dataset-json", help="read the package's dataset.json from here instead of importing it")
    args = p.parse_args(argv)
    try:
        conversations = load_dataset(args.dataset_json)
    except ModuleNotFoundError as e:
        if e.name != "chitchat_dataset":
            raise
        print(MISSING_PACKAGE, file=sys.stderr)
        return 2
    if args.sample:
        records = make_sample(conversations, seed=args.seed, n_characters=args.characters,
                              max_context=args.max_context)
    else:
        records = convert(conversations, max_context=args.max_context, seed=args.seed)
    write_records(args.out, records)
    n_items = sum(len(r["task"]["task_behavior_collections"][0]["data"]) for r in records)
    print(f"wrote {args.out}: {len(records)} records, {len({r['user_hash'] for r in records})} characters, "
          f"{n_items} items, {os.path.getsize(args.out)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
