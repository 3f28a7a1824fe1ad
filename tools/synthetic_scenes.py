"""The scene corpus of tools/make_synthetic_corpus.py (`--scenes` and its adversarial flags): films of
shared scenes and their ground truth, kept apart from the default corpus of independent snippets, whose
line generator, profiles and counts it shares (tools/synthetic_base.py)."""

from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_base import (  # noqa: E402
    FULL_HASHES, FULL_ITEMS, FULL_RECORDS, MAX_CONTEXT, _NAMES, _TITLE_WORDS, _allocate, _character_plan, _Lines,
    _profile)

GENERIC_LINES = (
    "Yeah.", "Okay.", "What?", "No.", "Yes.", "Why?", "Hey.", "Oh.", "Right.", "Sure.", "I know.",
    "Thank you.", "Really?", "I don't know.", "Come on.", "Thanks.", "Well...", "What do you mean?",
    "Uh-huh.", "Good.", "Hi.", "Sorry.", "Please.", "Wait.", "Huh?", "So?", "All right.", "Me too.",
    "Listen.", "Who?",
)
GENERIC_SHARE = 0.10
RECORDS_PER_FILM = 10
SCENE_STRIDE = 1000  # line id = scene number * SCENE_STRIDE + the line's position in its scene
_EXTRAS = ("WAITER", "COP", "MAN", "WOMAN", "DRIVER", "NURSE", "CLERK", "GUARD", "BOY", "GIRL", "VOICE",
           "OPERATOR", "BARTENDER", "SOLDIER", "DOCTOR")
_INITIALS = "ABCDEFGHIJKLMNOPRSTVW"


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _scene_length(rng: random.Random) -> int:
    """Lines per scene: median ~14, a few long ones."""
    return max(3, min(80, int(rng.lognormvariate(math.log(14.0), 0.6))))


def _place_in_films(rng: random.Random, recs: list[dict], n_films: int) -> list[list[dict]]:
    """Records to films at random; a film never holds two records of one character or one name."""
    films: list[list[dict]] = [[] for _ in range(n_films)]
    taken: list[set] = [set() for _ in range(n_films)]
    for rec in recs:
        start = rng.randrange(n_films)
        for t in range(n_films):
            f = (start + t) % n_films
            if rec["hash"] not in taken[f] and rec["name"] not in taken[f]:
                break
        else:
            f = start
        films[f].append(rec)
        taken[f].update((rec["hash"], rec["name"]))
    return [f for f in films if f]


def make_scene_corpus(seed: int = 0, n_records: int = FULL_RECORDS, n_hashes: int = FULL_HASHES,
                      n_items: int = FULL_ITEMS, generic_share: float = GENERIC_SHARE,
                      records_per_film: int = RECORDS_PER_FILM, places: dict | None = None,
                      unique_lines: bool = False) -> list[dict]:
    """Films of shared scenes with the default corpus's counts and per-character heavy tail.

    Each scene has one or more recorded characters (and sometimes an uncredited extra, whose
    lines are context only); lines of a recorded character after a scene's first line are its
    items. Same seed and counts give identical output. `places`, if given, receives the ground
    truth the format does not carry: (record index, item index) -> the id of every line of the
    item (context turns, then the continuation), one id per spoken line of the corpus; the id
    divided by SCENE_STRIDE is the line's scene, the remainder its position in the scene.
    Random lines can repeat by chance (a few in a thousand); `unique_lines` redraws a line whose
    text, case and punctuation aside, was said before, so only the generic lines repeat.
    """
    if not (1 <= n_hashes <= n_records <= n_items):
        raise ValueError("need 1 <= n_hashes <= n_records <= n_items")
    if not 0 <= generic_share <= 1:
        raise ValueError("generic_share must be between 0 and 1")
    rng = random.Random(seed)
    per_hash, char_items, unusable_at = _character_plan(rng, n_records, n_hashes, n_items)

    recs: list[dict] = []
    for n_rec, n_it in zip(per_hash, char_items):
        h = f"{rng.getrandbits(128):032x}"
        name = f"{rng.choice(_NAMES)} {rng.choice(_INITIALS)}."
        profile, personality = _profile(rng, name)
        budgets = [1 + x for x in _allocate(rng, [rng.random() + 0.05 for _ in range(n_rec)], n_it - n_rec)]
        for b in budgets:
            roll = rng.random()
            own = "user" if roll < 0.03 else "USER" if roll < 0.04 else f" {name} " if roll < 0.05 else name
            recs.append({"hash": h, "name": name, "own": own, "budget": b, "profile": profile,
                         "personality": personality, "data": []})
    rng.shuffle(recs)

    generic_weights = [1.0 / (k + 1) ** 0.8 for k in range(len(GENERIC_LINES))]
    line = _Lines(rng)

    said: set = set()

    def say() -> str:
        if rng.random() < generic_share:
            return rng.choices(GENERIC_LINES, generic_weights)[0]
        text = line()
        if unique_lines:
            while _plain(text) in said:
                text = line()
            said.add(_plain(text))
        return text

    for k, rec in enumerate(recs):
        rec["index"] = k
    item_no = next_id = scene_no = 0
    films = _place_in_films(rng, recs, max(1, round(n_records / records_per_film)))
    for film in films:
        title = " ".join(rng.sample(_TITLE_WORDS, rng.randint(2, 3))).title()
        for rec in film:
            rec["title"] = title
        while any(r["budget"] for r in film):
            live = [r for r in film if r["budget"]]
            cast: list = [rng.choices(live, [r["budget"] for r in live])[0]]
            for _ in range(1 + (rng.random() < 0.35) + (rng.random() < 0.1)):
                others = [r for r in live if all(r is not c for c in cast)]
                if others and rng.random() < 0.85:
                    cast.append(rng.choices(others, [r["budget"] for r in others])[0])
                else:
                    cast.append(rng.choice(_EXTRAS))
            lines: list = []  # (speaker: record dict or extra name, text, line id)
            length = _scene_length(rng)
            next_id, scene_no = scene_no * SCENE_STRIDE, scene_no + 1
            while len(lines) < length and any(not isinstance(c, str) and c["budget"] for c in cast):
                last = lines[-1][0] if lines else None
                choices = [c for c in cast if c is not last and (isinstance(c, str) or c["budget"])]
                if not choices:  # the others have said all their lines: someone uncredited answers
                    cast.append(rng.choice(_EXTRAS))
                    continue
                speaker = rng.choice(choices)
                text = say()
                if not isinstance(speaker, str) and lines:
                    kind = None
                    if item_no in unusable_at:
                        kind = "empty" if rng.random() < 0.5 else "own_turn"
                    if kind == "own_turn":  # the character speaks twice in a row
                        lines.append((speaker, say(), next_id))
                        next_id += 1
                    window = lines[-MAX_CONTEXT:]
                    context = [{"source": speaker["own"] if s is speaker else s if isinstance(s, str) else s["name"],
                                "content": t} for s, t, _ in window]
                    if places is not None:
                        places[(speaker["index"], len(speaker["data"]))] = tuple(x for _, _, x in window) + (next_id,)
                    speaker["data"].append({"context": context, "continuation": "" if kind == "empty" else text})
                    speaker["budget"] -= 1
                    item_no += 1
                lines.append((speaker, text, next_id))
                next_id += 1
    return [{"user_hash": r["hash"],
             "user": {"profile": dict(r["profile"]), "personality": json.loads(json.dumps(r["personality"]))},
             "task": {"description": f"Continue the dialogue as {r['name']} in the film \"{r['title']}\".",
                      "task_behavior_collections": [{"data": r["data"]}]}}
            for r in recs]


NOISE_STYLES = ("lower", "nopunct", "spaces")


def renormalised(text: str, style: str) -> str:
    """One transcription difference: lower case, final punctuation dropped, or double spaces."""
    if style == "lower":
        return text.lower()
    if style == "nopunct":
        return text.rstrip(".?!") or text
    if style == "spaces":
        return text.replace(" ", "  ")
    raise ValueError(f"unknown style {style!r} (choose from {', '.join(NOISE_STYLES)})")


def _restyled(record: dict, style: str) -> dict:
    out = json.loads(json.dumps(record))
    for coll in out["task"]["task_behavior_collections"]:
        for item in coll["data"]:
            for turn in item["context"]:
                turn["content"] = renormalised(turn["content"], style)
            if item["continuation"]:
                item["continuation"] = renormalised(item["continuation"], style)
    return out


def _truth_lists(records: list[dict], places: dict) -> list[list[list]]:
    return [[list(places[(k, i)]) for i, _ in enumerate(r["task"]["task_behavior_collections"][0]["data"])]
            for k, r in enumerate(records)]


def line_ids_by_sample(truth: list[list[list]], samples) -> dict:
    """sample id (`r<record>.c0.i<item>`) -> the true ids of its item's lines, context then target."""
    out = {}
    for s in samples:
        r, _, i = (int(p[1:]) for p in s.sample_id.split("."))
        out[s.sample_id] = truth[r][i]
    return out


def _films(truth: list[list[list]]) -> list[list[int]]:
    """Records that share a line (transitively): a film's worth, as the generator made it."""
    owner: dict = {}
    parent = list(range(len(truth)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for k, items in enumerate(truth):
        for ids in items:
            for x in ids:
                parent[find(k)] = find(owner.setdefault(x, k))
    groups: dict = {}
    for k in range(len(truth)):
        groups.setdefault(find(k), []).append(k)
    return list(groups.values())


def make_adversarial(records: list[dict], places: dict, seed: int = 0, duplicate_films: float = 0.0,
                     duplicate_style: str | None = None, renormalise: float = 0.0, split_records: float = 0.0,
                     reorder: float = 0.0) -> tuple[list[dict], list[list[list]]]:
    """A scene corpus (and its `places`) made messy the way real transcriptions are; returns the
    records and the truth (`truth[record][item]` = line ids, kept by copies and re-normalisations).

    Applied in this order: copy a `duplicate_films` share of films under new character ids (each
    copy written in `duplicate_style`, or one drawn per copy when None), re-normalise a
    `renormalise` share of records (a style drawn per record), split a `split_records` share of
    records into two (alternate items), shuffle the items of a `reorder` share of records."""
    rng = random.Random(f"adversarial\x00{seed}")
    truth = _truth_lists(records, places)
    rows = list(zip(records, truth))
    for film in _films(truth):
        if rng.random() < duplicate_films:
            style = duplicate_style or rng.choice(NOISE_STYLES)
            new_hash: dict = {}
            for k in film:
                rec = _restyled(records[k], style)
                rec["user_hash"] = new_hash.setdefault(rec["user_hash"], f"{rng.getrandbits(128):032x}")
                rows.append((rec, truth[k]))
    out = []
    for rec, ids in rows:
        if rng.random() < renormalise:
            rec = _restyled(rec, rng.choice(NOISE_STYLES))
        items = list(zip(rec["task"]["task_behavior_collections"][0]["data"], ids))
        parts = [items[0::2], items[1::2]] if len(items) > 1 and rng.random() < split_records else [items]
        for part in parts:
            if rng.random() < reorder:
                rng.shuffle(part)
            piece = json.loads(json.dumps(rec))
            piece["task"]["task_behavior_collections"] = [{"data": [it for it, _ in part]}]
            out.append((piece, [x for _, x in part]))
    rng.shuffle(out)
    return [r for r, _ in out], [t for _, t in out]
