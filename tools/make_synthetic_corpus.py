#!/usr/bin/env python3
"""Generate a synthetic corpus in the Chameleons format.

The real Chameleons corpus is not redistributable, so this produces a stand-in
with the same shape and scale (7,797 records, ~6,117 characters, 72,471 items,
~0.7% unusable) for load, packing and throughput tests. The text is random
words; only the structure and the length statistics are meant to be realistic.

By default every item is an independent snippet. `--scenes` writes films instead:
records of one film share scenes, every line a record's character speaks after the
first line of a scene is one of its items (context = the scene so far, at most
MAX_CONTEXT turns), so the partner's items quote it, and about 10% of lines are
short generic ones ("Yeah.", "Okay.", "What?") heard in hundreds of scenes. That is
the shape the validation split has to cope with (tests/test_split_scenes.py).

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
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.outputs import write_records
from chameleons.run.cli import OneLineParser

FULL_RECORDS = 7797
FULL_HASHES = 6117
FULL_ITEMS = 72471
UNUSABLE_FRACTION = 0.007
_LOG10 = math.log(10.0)
MAX_CONTEXT = 20
MAX_RECORDS_PER_HASH = 20

_WORDS = """
a about after again all always am an and any anyone anything are around as ask
at away back bad be because been before being believe best better between big
both bring brother but by call came can car care case come could cut dad day
dead did do does done door down drink drive each easy else end enough even
ever every eyes face fact family father feel few find fine fire first five for
forget friend from front full game gave get girl give go god going gone good
got great guess guy had half hand happen happened hard has have he head hear
heard help her here hey him his hold home hope house how i if in inside into
is it job just keep kid kill kind knew know last late leave left let life like
listen little live long look looking lost lot love made make man many maybe me
mean meet mind minute miss money more morning mother move mr much must my name
need never new next nice night no nobody not nothing now of off oh okay old on
once one only or other our out over own people phone place play please police
pretty problem put quite rather read ready real really remember right room run
said same saw say school see seem seen send shall she should show shut sister
sit so some someone something sometimes soon sorry start stay still stop story
sure take talk tell than thank that the their them then there these they thing
think this those though thought three through time to today together told
tomorrow tonight too took town true try trying turn two under understand until
up us use very wait walk want wanted was watch water way we week well went were
what when where which while who whole why wife will with without woman word
work world worry would wrong yeah year yes yet you young your
""".split()

_NAMES = """
MARLOWE VIVIAN CARMEN EDDIE NORA FRANK LUCY WALTER IRIS HARVEY MAGGIE JOE
ROSA DEXTER ADA VINCENT CLAIRE OTTO JUNE FELIX GRACE LEO HAZEL BRUNO MAE
SILAS VERA CALVIN OLIVE RAY PEARL GUS DOLORES HANK STELLA MILO GLORIA ELLIS
TESS MORGAN BENNY LOUISE ARTHUR NINA MAX DELIA SAUL RUBY ABE IVY CHESTER
MARTA LEON CORA EARL GWEN IKE LOLA NED PAULINE QUINN RITA SAM THEA VIC WANDA
BARNEY AGNES CLYDE DINAH ERNIE FAYE GIDEON HELEN IRA JOSIE KIT LORNA
""".split()

_TITLE_WORDS = """
long rain silent city last night cold harbor glass key blue hour dark water
midnight train broken promise lucky star empty room open road paper moon
""".split()

_OCCUPATIONS = """
detective singer doctor pilot clerk teacher lawyer driver nurse reporter
bartender soldier student mechanic painter
""".split()


def _counts(scale: float) -> tuple[int, int, int]:
    """Scale the full-size counts, keeping records <= items and hashes <= records."""
    n_records = max(1, round(FULL_RECORDS * scale))
    n_hashes = max(1, min(n_records, round(FULL_HASHES * scale)))
    n_items = max(n_records, round(FULL_ITEMS * scale))
    return n_records, n_hashes, n_items


def _records_per_hash(rng: random.Random, n_records: int, n_hashes: int) -> list[int]:
    """Most hashes get one record; the surplus goes to a few hashes with a heavy tail."""
    counts = [1] * n_hashes
    surplus = n_records - n_hashes
    cap = MAX_RECORDS_PER_HASH
    if surplus > n_hashes * (cap - 1):
        cap = math.ceil(n_records / n_hashes)
    order = list(range(n_hashes))
    rng.shuffle(order)
    i = 0
    while surplus > 0:
        h = order[i % n_hashes]
        i += 1
        extra = min(surplus, cap - counts[h], max(1, int(rng.paretovariate(1.6))))
        if extra <= 0:
            continue
        counts[h] += extra
        surplus -= extra
    return counts


def _allocate(rng: random.Random, weights: list[float], total: int) -> list[int]:
    """Split total into integers proportional to weights (largest remainder, exact)."""
    wsum = sum(weights)
    raw = [w * total / wsum for w in weights]
    out = [int(x) for x in raw]
    short = total - sum(out)
    by_remainder = sorted(range(len(raw)), key=lambda k: (out[k] - raw[k], rng.random()))
    for k in by_remainder[:short]:
        out[k] += 1
    return out


class _Lines:
    """Dialogue lines: log-normal word count around 10, sometimes a 60+ word speech.

    Words are sliced from one pre-drawn random stream, which keeps the full-size
    corpus at a few seconds of pure Python.
    """

    STREAM = 1 << 17

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = rng.choices(_WORDS, k=self.STREAM + 200)

    def __call__(self) -> str:
        rng = self.rng
        if rng.random() < 0.01:
            n = rng.randint(60, 140)
        else:
            n = max(1, min(59, int(rng.lognormvariate(_LOG10, 0.65))))
        start = int(rng.random() * self.STREAM)
        words = self.words[start:start + n]
        if n > 6 and rng.random() < 0.4:
            words[rng.randrange(2, n - 2)] += ","
        text = " ".join(words)
        p = rng.random()
        end = "." if p < 0.6 else "?" if p < 0.9 else "!"
        return text[0].upper() + text[1:] + end


def _context_len(rng: random.Random) -> int:
    """1..MAX_CONTEXT turns, mostly short; redrawn rather than clipped to avoid a spike at the cap."""
    while True:
        n = int(rng.lognormvariate(math.log(4.0), 0.8))
        if n <= MAX_CONTEXT:
            return max(1, n)


def _profile(rng: random.Random, name: str) -> tuple[dict, dict]:
    profile: dict = {"name": name, "gender": rng.choice(("male", "female"))}
    if rng.random() < 0.3:
        profile["age"] = rng.randint(8, 80)
    if rng.random() < 0.2:
        profile["occupation"] = rng.choice(_OCCUPATIONS)
    if rng.random() < 0.15:
        profile["credit_position"] = rng.randint(1, 30)
    if rng.random() < 0.1:
        profile["is_protagonist"] = rng.random() < 0.3
    structured: dict = {}
    if rng.random() < 0.35:
        structured["big_five"] = {
            k: round(rng.random(), 2)
            for k in ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
        }
    unstructured = ""
    if rng.random() < 0.25:
        unstructured = f"A {rng.choice(('quiet', 'sharp', 'restless', 'warm', 'wry'))} {rng.choice(_OCCUPATIONS)}."
    return profile, {"structured": structured, "unstructured": unstructured}


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


def _character_plan(rng, n_records: int, n_hashes: int, n_items: int):
    """Records per character, items per character (a heavy tail: log-normal weights, median ~5
    items) and which item positions are unusable; both corpus shapes draw these the same way."""
    per_hash = _records_per_hash(rng, n_records, n_hashes)
    char_weights = [rng.lognormvariate(0.0, 1.3) for _ in range(n_hashes)]
    extra = _allocate(rng, char_weights, n_items - n_records)
    char_items = [r + e for r, e in zip(per_hash, extra)]
    unusable_at = set(rng.sample(range(n_items), round(n_items * UNUSABLE_FRACTION)))
    return per_hash, char_items, unusable_at


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


# --------------------------------------------------------------------------- scene corpus

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
