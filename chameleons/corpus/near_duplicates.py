"""Scenes held twice with word-level differences (a re-transcribed episode, a copy under new ids
with edited lines): found by the lines they share approximately, so the split can put them in
one conversation.

A join is evidence that two scene runs are the same scene held twice, so it is verified on the
lines themselves, never taken from a sketch collision:

1. Evidence: lines of MIN_WORDS or more words said in at most COMMON_RECORDS records; a run's
   evidence is its pairs of consecutive evidence lines.
2. Candidates. Each evidence line gets a MinHash sketch (the SKETCH smallest CRC-32 values of
   its word bigrams); two pairs whose lines share a sketch value each (a signature held by at
   most MAX_POSTINGS pairs) are candidates. Two runs of different conversations share a pair
   when each line of one candidate pair is similar to the other's (`similar`: difflib's ratio
   over the word sequences at least LINE_SIMILARITY, and the same numbers).
3. Verified join. The shared pairs must chain into MIN_CHAIN consecutive matched lines (one
   shared exchange of two lines is what catchphrases and stock exchanges look like) and cover
   MIN_SHARE of the smaller run's lines; a run whose own lines never chain that far (a
   character's single short exchange) joins only when every line of it is matched, and only to
   one conversation (a short run matching several holds a running gag, which would glue them).
   Short and common lines never count.

Verified joins are few and bounded; there is no transitive closure over sketch collisions (the
known way to build giant clusters). Each join keeps the lines that matched, for the plan's
notice and `split_audit.json`. Not `datasketch`: its MinHash hashes every shingle with a NumPy
permutation array, built for long documents; lines are a dozen words and there are about
100,000 of them, so one CRC per word and one tuple hash per bigram is the whole cost, and the
verification needs the lines anyway.
"""

import difflib
import zlib
from collections import Counter
from dataclasses import dataclass

MIN_WORDS = 6  # shorter lines ("Come on, let us go.") say too little to be matched approximately
COMMON_RECORDS = 20  # a line said in more records than this is a stock line, never evidence
SKETCH = 4  # MinHash values per line
MAX_POSTINGS = 64  # a signature held by more line pairs than this is a common phrase, not a copy
LINE_SIMILARITY = 0.6  # difflib ratio of two lines' words: one word changed in six is 0.83
MIN_CHAIN = 3  # consecutive matched lines a join needs
MIN_SHARE = 0.3  # ... and this share of the smaller run's lines matched
EVIDENCE = 3  # matched line pairs kept per join


@dataclass(frozen=True)
class Join:
    """Two scene runs verified to hold the same scene: `lines` are (line of a, line of b) pairs
    that matched (by `conversations.line_key`), at most EVIDENCE of them."""

    a: int
    b: int
    matched: int  # lines of the smaller run matched
    lines: tuple


def _words(key: str) -> tuple:
    return tuple(key.split())


def _numbers(words) -> str:
    return " ".join(w for w in words if not w.isalpha())


def similar(x: str, y: str) -> bool:
    """Two line keys are one line transcribed twice: the same numbers ("line 3" is not "line
    4") and words that mostly match in order."""
    wx, wy = _words(x), _words(y)
    if _numbers(wx) != _numbers(wy):
        return False
    return difflib.SequenceMatcher(None, wx, wy, autojunk=False).ratio() >= LINE_SIMILARITY


def _sketch(words, word_hash) -> list:
    """The SKETCH smallest hash values of the word bigrams (Python hashes int tuples without a
    per-process seed, so every rank gets the same values)."""
    hs = [word_hash.get(w) or word_hash.setdefault(w, zlib.crc32(w.encode())) for w in words]
    return sorted(set(map(hash, zip(hs, hs[1:]))))[:SKETCH]


def _evidence_lines(seqs, record_of) -> set:
    """Lines that can be evidence: long enough, and said in at most COMMON_RECORDS records."""
    records = {}
    for seq, r in zip(seqs, record_of):
        for key in seq:
            held = records.setdefault(key, set())
            if len(held) <= COMMON_RECORDS:
                held.add(r)
    return {key for key, held in records.items() if len(held) <= COMMON_RECORDS and len(key.split()) >= MIN_WORDS}


def _run_pairs(seqs, run_of, evidence) -> dict:
    """run -> its pairs of consecutive evidence lines (other lines skipped)."""
    out = {}
    for seq, run in zip(seqs, run_of):
        kept = [key for key in seq if key in evidence]
        out.setdefault(run, set()).update((a, b) for a, b in zip(kept, kept[1:]) if a != b)
    return {r: pairs for r, pairs in out.items() if pairs}


def _shared_pairs(pairs_of, group_of) -> dict:
    """(run a, run b), a < b, of different conversations -> [(pair of a, pair of b)] where each
    line of one pair is similar to the other's. Candidates share a signature (a sketch value of
    each line; held by at most MAX_POSTINGS pairs); `similar` verifies them, once per lines."""
    word_hash, sketch, holders = {}, {}, {}
    for run, pairs in sorted(pairs_of.items()):
        for pair in sorted(pairs):
            v1, v2 = (sketch[x] if x in sketch else sketch.setdefault(x, _sketch(_words(x), word_hash)) for x in pair)
            for sig in {(h1, h2) for h1 in v1 for h2 in v2}:
                holders.setdefault(sig, []).append((run, pair))
    verdict, shared, seen = {}, {}, set()

    def same(x, y):
        if x == y:
            return True
        if (x, y) not in verdict:
            verdict[x, y] = verdict[y, x] = similar(x, y)
        return verdict[x, y]

    for held in holders.values():
        if not 1 < len(held) <= MAX_POSTINGS:
            continue
        for k, (a, pa) in enumerate(held):
            for b, pb in held[k + 1:]:
                if group_of[a] == group_of[b] or (a, pa, b, pb) in seen:
                    continue
                seen.add((a, pa, b, pb))
                if same(pa[0], pb[0]) and same(pa[1], pb[1]):
                    shared.setdefault((a, b) if a < b else (b, a), []).append((pa, pb) if a < b else (pb, pa))
    return shared


def _chain(matches) -> int:
    """Most consecutive matched lines (at most MIN_CHAIN looked for): matched pairs chain where
    one's second line, on both sides, is the next one's first."""
    nxt = {}
    for (x1, x2), (y1, y2) in matches:
        nxt.setdefault((x1, y1), set()).add((x2, y2))
    ends, length = set(nxt), 1
    while length < MIN_CHAIN:
        ends = {n for node in ends for n in nxt.get(node, ())}
        if not ends:
            break
        length += 1
    return length


def near_duplicate_joins(seqs, run_of, group_of, record_of) -> list:
    """Verified joins of scene runs (numbers as in `run_of`, one per sample) of different
    conversations (`group_of`: run -> its conversation so far); `seqs`: each sample's lines by
    `line_key`, `record_of`: its record. Sorted, so the result does not depend on hashing."""
    evidence = _evidence_lines(seqs, record_of)
    pairs_of = _run_pairs(seqs, run_of, evidence)
    lines_of = {r: {line for pair in pairs for line in pair} for r, pairs in pairs_of.items()}
    joins, short_partners = [], {}
    for (a, b), matches in sorted(_shared_pairs(pairs_of, group_of).items()):
        side = 0 if len(lines_of[a]) <= len(lines_of[b]) else 1
        small = (a, b)[side]
        matched = {line for m in matches for line in m[side]}
        short = _chain(matches) < MIN_CHAIN
        if not short:
            need = MIN_SHARE * len(lines_of[small])
        elif _chain([(p, p) for p in pairs_of[small]]) < MIN_CHAIN:
            need = len(lines_of[small])  # a run too short to chain: every line of it matched
        else:
            continue
        if len(matched) < need:
            continue
        if short:
            short_partners.setdefault(small, set()).add(group_of[(a, b)[1 - side]])
        pairs = Counter((x, y) for (xs, ys) in matches for x, y in zip(xs, ys))
        joins.append((short and small, Join(a, b, len(matched),
                                            tuple(sorted(pairs, key=lambda p: (p[0] == p[1], p))[:EVIDENCE]))))
    # a short run matching scenes of several conversations holds a running gag, not a copied scene:
    # joining it would glue those conversations together
    return [join for small, join in joins if small is False or len(short_partners[small]) < 2]
