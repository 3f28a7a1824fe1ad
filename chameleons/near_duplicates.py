"""Scenes held twice with word-level differences (a re-transcribed film, a copy under new ids
with edited lines): found by the lines they share approximately, so the split can put them in
one conversation.

Each line of six or more words gets a small MinHash sketch: the two smallest CRC-32 values of
its word bigrams (of its `conversations.line_key`: case, punctuation and accents folded). Two lines
that differ by a word or two share a sketch value with high probability. A scene run is
described by its pairs of consecutive sketched lines; two runs in different conversations are
near duplicates when enough of the smaller run's line pairs match a pair of the other run.
Pairs of lines, not single lines: unrelated lines can share words and phrases (in the
synthetic corpus many lines are overlapping slices of one word stream), two consecutive ones
practically never. Not `datasketch`: its MinHash hashes every shingle with a NumPy
permutation array, built for long documents; lines are a dozen words and there are about
100,000 of them, so one CRC per word and one tuple hash per bigram is the whole cost.
"""

import zlib
from collections import Counter

MIN_WORDS = 6  # shorter lines ("Come on, let us go.") say too little to be matched approximately
MIN_PAIRS = 1  # line pairs of the smaller run that must match ...
MIN_SHARE = 0.3  # ... and at least this share of its line pairs
MAX_POSTINGS = 64  # a signature held by more runs than this is a common exchange, not a copy

def _sketcher():
    """sketch(key): the two smallest hash values of the word bigrams of a line key; () for a
    short line. Words are hashed with CRC-32, bigrams as int tuples (Python hashes ints
    without a per-process seed, so every rank gets the same values). Each value carries the
    line's words with digits: lines that differ in a number are not near duplicates."""
    word_hash = {}

    def sketch(key: str) -> tuple:
        words = key.split()
        if len(words) < MIN_WORDS:
            return ()
        hs = [word_hash.get(w) or word_hash.setdefault(w, zlib.crc32(w.encode())) for w in words]
        values = sorted(set(map(hash, zip(hs, hs[1:]))))
        numbers = zlib.crc32(" ".join(w for w in words if not w.isalpha()).encode())  # "line 3" != "line 4"
        return (values[0], numbers), (values[1 if len(values) > 1 else 0], numbers)
    return sketch


def _run_pairs(seqs, run_of) -> dict:
    """run -> its pairs of consecutive sketched lines (short lines skipped), as sketch pairs.
    `seqs`: each sample's lines as line keys."""
    sketch = _sketcher()
    sketch_of = {key: sketch(key) for key in {key for seq in seqs for key in seq}}
    out = {}
    for seq, run in zip(seqs, run_of):
        sketches = [x for x in map(sketch_of.__getitem__, seq) if x]
        out.setdefault(run, set()).update(zip(sketches, sketches[1:]))
    return {r: pairs for r, pairs in out.items() if len(pairs) >= MIN_PAIRS}


def _signatures(pair) -> tuple:
    """Each of the first line's two values with each of the second's: one of them matches when
    two line pairs are near duplicates, with high probability."""
    (a0, a1), (b0, b1) = pair
    return (a0, b0), (a1, b1), (a0, b1), (a1, b0)


def _candidates(pairs_of, group_of) -> Counter:
    """(run, run) of different groups -> how many signatures they share (held by few runs)."""
    holders = {}
    for run, pairs in pairs_of.items():
        for sig in {sig for pair in pairs for sig in _signatures(pair)}:
            holders.setdefault(sig, []).append(run)
    hits = Counter()
    for runs in holders.values():
        if 1 < len(runs) <= MAX_POSTINGS:
            runs.sort()
            for x, a in enumerate(runs):
                for b in runs[x + 1:]:
                    if group_of[a] != group_of[b]:
                        hits[a, b] += 1
    return hits


def near_duplicate_runs(seqs, run_of, group_of) -> list:
    """Pairs of scene runs (numbers as in `run_of`, one per sample) of different groups
    (`group_of`: run -> its conversation so far) whose lines are the same, some of them with
    word-level differences; sorted, so the result does not depend on hashing."""
    pairs_of = _run_pairs(seqs, run_of)
    signatures_of = {}
    found = []
    for (a, b), hits in sorted(_candidates(pairs_of, group_of).items()):
        if hits < MIN_PAIRS:
            continue
        small, big = (a, b) if len(pairs_of[a]) <= len(pairs_of[b]) else (b, a)
        if big not in signatures_of:
            signatures_of[big] = {sig for pair in pairs_of[big] for sig in _signatures(pair)}
        matched = sum(1 for pair in pairs_of[small] if not signatures_of[big].isdisjoint(_signatures(pair)))
        if matched >= max(MIN_PAIRS, MIN_SHARE * len(pairs_of[small])):
            found.append((a, b))
    return found
