"""What the two synthetic corpora of tools/make_synthetic_corpus.py share: the full-size counts, word lists,
line generator, character profiles and the per-character plan. Both the plain corpus (make_synthetic_corpus)
and the scene corpus (synthetic_scenes) import it, so neither has to import the other."""

from __future__ import annotations

import math
import random

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


def _character_plan(rng, n_records: int, n_hashes: int, n_items: int):
    """Records per character, items per character (a heavy tail: log-normal weights, median ~5
    items) and which item positions are unusable; both corpus shapes draw these the same way."""
    per_hash = _records_per_hash(rng, n_records, n_hashes)
    char_weights = [rng.lognormvariate(0.0, 1.3) for _ in range(n_hashes)]
    extra = _allocate(rng, char_weights, n_items - n_records)
    char_items = [r + e for r, e in zip(per_hash, extra)]
    unusable_at = set(rng.sample(range(n_items), round(n_items * UNUSABLE_FRACTION)))
    return per_hash, char_items, unusable_at
