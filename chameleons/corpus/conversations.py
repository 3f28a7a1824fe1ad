"""Conversations: the corpus's samples grouped by the utterances they share, for the
`conversation` leak check (`leak_checks.ConversationCheck`), the history lines' scene tags
(`prompts`) and fidelity's casts.

An utterance is identified by its place, the line together with its neighbour in the scene,
never by its text alone ("Yeah." is said in hundreds of scenes). Lines are compared by
`line_key`, so transcription variants of one line (case, punctuation, spacing, accents) are one
line. Samples sharing an utterance form one conversation.
"""

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from . import near_duplicates
from .data import item_position

HUGE_SHARE = 0.05  # a conversation above this share of the corpus is divided at scene boundaries
HUGE_MIN = 200  # ... but never one this small: a small corpus is not split up
NOTICE_SHARE = 0.2  # a conversation above this share of the samples is a notice naming its links
LINKS_NAMED = 3
COMMON_RECORDS = near_duplicates.COMMON_RECORDS  # a line said in more records is a common one ("Yeah."), not a place

_APOSTROPHES = re.compile(r"['\u2019\u02bc`]")
_NOT_ALNUM = re.compile(r"[\W_]+")


@functools.lru_cache(maxsize=1 << 18)
def line_key(text: str) -> str:
    """A line's identity, the same for its transcription variants: compatibility forms and
    accents folded (NFKD), case-folded, apostrophes dropped, every other run of characters that
    are not letters or digits (punctuation, whitespace) one space. A line of punctuation only
    keeps its folded text."""
    folded = _APOSTROPHES.sub("", unicodedata.normalize("NFKD", text).casefold())
    return _NOT_ALNUM.sub(" ", folded).strip() or " ".join(folded.split())



def _item_position(s):
    """(record, collection, item) from the sample id: the item's place in its record."""
    return item_position(s.sample_id)



def sequence(sample) -> tuple:
    """The sample's lines, context then target, by `line_key`."""
    return tuple(line_key(content) for _, content in sample.context) + (line_key(sample.target),)


class Places:
    """What the corpus says about its lines, for telling places apart (see place_keys).

    A line has one place when wherever it occurs the same line precedes it (if any does) and
    the same line follows it; "Yeah." has hundreds (`several`). `openings` are the pairs of
    such lines that make up a whole item (a context of one turn and the target)."""

    def __init__(self, seqs):
        before, after, several, openings = {}, {}, set(), set()
        for seq in seqs:
            for a, b in zip(seq, seq[1:]):
                if before.setdefault(b, a) != a:
                    several.add(b)
                if after.setdefault(a, b) != b:
                    several.add(a)
        for seq in seqs:
            if len(seq) == 2 and seq[0] in several and seq[1] in several:
                openings.add(seq)
        self.several = frozenset(several)
        self.openings = frozenset(openings)


def place_keys(seq, places: Places, character: str) -> set:
    """Keys that identify the utterances of a sample (`seq`: its lines by `line_key`) by place:
    two items of one scene that show the same utterance share a key; unrelated scenes rarely do.

    - Two adjacent lines (context turns, then the target) are a key: a line shown in two items
      of a scene has the same neighbour in both. Where both lines have several places ("What?"
      / "Yeah."), the pair is no place, so the key is the three lines around it instead (and
      the bare pair where an item opens with it and another item is nothing but that pair).
    - A line at either end of an item that has one place is a key by its text: the target of
      one item (no line after it) may open the context window of another (no line before it).
    - An identical item of one character is the same place.
    """
    several = places.several
    keys = {(None, "item", character, seq)}  # tuples starting with None: never lines
    last = len(seq) - 1
    for j in range(last):
        a, b = seq[j], seq[j + 1]
        if a in several and b in several:
            if j > 0:
                keys.add((seq[j - 1], a, b))
            if j + 1 < last:
                keys.add((a, b, seq[j + 2]))
            if j == 0 and (a, b) in places.openings:
                keys.add((None, "opening", a, b))
        else:
            keys.add((a, b))
    for end in (seq[0], seq[-1]):
        if end not in several:
            keys.add((None, "edge", end))
    return keys


class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, x):
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[a] = b

    def groups(self, items):
        out = {}
        for i in items:
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


@dataclass(frozen=True)
class _Lines:
    """The corpus as grouping reads it: each sample's lines by key, its place keys (near-duplicate
    links are added to them) and its scene run, by the sample's index."""

    samples: list
    seqs: list
    keys_of: list
    run_of: list


class Conversations:
    """The samples grouped into conversations: connected by sharing an utterance (by place).

    Computed once per corpus, independent of N and of the seeds, so the real split and the
    plan's guide table use the same grouping. A component above HUGE_SHARE of the corpus
    (generic exchanges such as "Yeah." / "Okay." can chain unrelated scenes) is divided at the
    scene boundaries the format gives (a scene run: a record's consecutive items of one
    collection that share an utterance), cutting only links made of common lines (_divide).
    """

    def __init__(self, samples, huge_share: float = HUGE_SHARE, huge_min: int = HUGE_MIN):
        samples = list(samples)
        n = len(samples)
        seqs = [sequence(s) for s in samples]
        places = Places(seqs)
        keys_of = [place_keys(seq, places, s.user_hash) for s, seq in zip(samples, seqs)]
        run_of = _scene_runs(samples, keys_of)
        uf = _UnionFind(n)
        first = {}
        for i, keys in enumerate(keys_of):
            for k in keys:
                j = first.setdefault(k, i)
                if j != i:
                    uf.union(i, j)
        lines = _Lines(samples, seqs, keys_of, run_of)
        self._join_near_duplicates(lines, uf)
        cap = max(huge_min, math.ceil(huge_share * n))
        parts, loose, self.split_up = [], {}, 0
        for component in uf.groups(range(n)):
            if len(component) > cap:
                pieces = _divide(component, lines, cap, loose)
                self.split_up += len(pieces) > 1
                parts.extend(pieces)
            else:
                parts.append(component)
        self.cap = cap
        self._name(samples, parts, loose)
        self._endings(samples, seqs)
        self.notices = self._notices(lines, parts)

    def _endings(self, samples, seqs):
        """For windows as short as one turn: a sample's visible place is its last context line
        and its target. `holders` maps each pair of consecutive lines (by key) to the samples
        showing it; `shared_ending` holds the conversations with a sample whose final pair other
        conversations also show (generic exchanges: "What?" / "Yeah.")."""
        self.holders = {}
        for s, seq in zip(samples, seqs):
            for pair in set(zip(seq, seq[1:])):
                self.holders.setdefault(pair, []).append(s)
        self.ending = {s.sample_id: seq[-2:] for s, seq in zip(samples, seqs) if len(seq) > 1}
        labels_of = {pair: {self.label[q.sample_id] for q in holders} for pair, holders in self.holders.items()}
        self.shared_ending = {self.label[sid] for sid, pair in self.ending.items() if len(labels_of[pair]) > 1}

    def _join_near_duplicates(self, lines, uf):
        """Scene runs verified to hold the same lines with word-level differences are one
        conversation; each link is also a key (never cut by _divide). Keeps every join with the
        lines that matched (`near_duplicate_joins`) and counts the runs and records joined."""
        samples, keys_of, run_of = lines.samples, lines.keys_of, lines.run_of
        first_of_run = {}
        for i, r in enumerate(run_of):
            first_of_run.setdefault(r, i)
        group_of = {r: uf.find(i) for r, i in first_of_run.items()}
        joins = near_duplicates.near_duplicate_joins(lines.seqs, run_of, group_of,
                                                     [s.record_index for s in samples])
        self.near_duplicate_joins = []
        joined = set()
        for join in joins:
            i, j = first_of_run[join.a], first_of_run[join.b]
            joined.update((i, j))
            uf.union(i, j)
            keys_of[i].add((None, "near", join.a, join.b))
            keys_of[j].add((None, "near", join.a, join.b))
            self.near_duplicate_joins.append({
                "scenes": [samples[i].sample_id, samples[j].sample_id],
                "characters": [samples[i].user_hash, samples[j].user_hash],
                "lines_matched": join.matched, "lines": [list(pair) for pair in join.lines]})
        self.near_duplicate_scenes = len({run_of[i] for i in joined})
        self.near_duplicate_records = len({samples[i].record_index for i in joined})

    def _name(self, samples, parts, loose):
        """Conversations named by content (their smallest uid), not by file position."""
        named = sorted((min(samples[i].uid for i in p), min(_item_position(samples[i]) for i in p), p) for p in parts)
        self.names = [name for name, _, _ in named]
        self.members = [[samples[i] for i in sorted(p, key=lambda i: _item_position(samples[i]))] for _, _, p in named]
        self.label = {}
        for c, members in enumerate(self.members):
            for s in members:
                self.label[s.sample_id] = c
        self.largest = max((len(m) for m in self.members), default=0)
        # Conversations whose place is uncertain (see _cut_common_across_films): never validation,
        # and out of training when a conversation they may belong to is validation.
        self.uncertain = {}
        for i, others in loose.items():
            own = self.label[samples[i].sample_id]
            self.uncertain.setdefault(own, set()).update(self.label[samples[j].sample_id] for j in others)
        for own, others in self.uncertain.items():
            others.discard(own)

    def __len__(self):
        return len(self.members)

    def _notices(self, lines, parts) -> list:
        """A conversation above NOTICE_SHARE of the samples, or above the cap for over-large ones
        with near-duplicate joins in it, is a notice naming the links that built it: the joins,
        then the shared lines that tie the most records together."""
        n, out, joins_in = len(lines.samples), [], {}
        for j in self.near_duplicate_joins:
            joins_in.setdefault(self.label[j["scenes"][0]], []).append(j)
        for part in parts:
            c = self.label[lines.samples[part[0]].sample_id]
            joins = joins_in.get(c, [])
            if len(part) <= NOTICE_SHARE * n and not (joins and len(part) > self.cap):
                continue
            named = [f"near duplicates {j['scenes'][0]} ~ {j['scenes'][1]} ({' | '.join(j['lines'][0])})"
                     for j in joins[:LINKS_NAMED]]
            named += _shared_links(part, lines)[:LINKS_NAMED]
            out.append(f"conversation {self.names[c]} holds {len(part):,} of {n:,} samples ({len(part) / n:.0%}); "
                       f"{len(joins):,} near-duplicate join(s) in it; links: " + "; ".join(named))
        return out


def _shared_links(part, lines) -> list:
    """The utterances shared by the most records of `part`, as "line / line (records, scenes)"."""
    holders = {}
    for i in part:
        for k in lines.keys_of[i]:
            if k[0] is not None or k[1] in ("opening", "edge"):
                holders.setdefault(k, []).append(i)
    spread = []
    for k, members in holders.items():
        records = {lines.samples[i].record_index for i in members}
        if len(records) > 1:
            first = min(members, key=lambda i: _item_position(lines.samples[i]))
            last = max(members, key=lambda i: _item_position(lines.samples[i]))
            text = " / ".join(k if k[0] is not None else k[2:])
            spread.append((-len(records), text, f'"{text}" ({len(records):,} records, items '
                                                f'{lines.samples[first].sample_id} .. {lines.samples[last].sample_id})'))
    return [described for _, _, described in sorted(spread)]


def _scene_runs(samples, keys_of) -> list:
    """The scene run of each sample: a record's consecutive items of one collection that share
    an utterance."""
    run_of = [0] * len(samples)
    prev_keys, prev_where, run = set(), None, -1
    for i in sorted(range(len(samples)), key=lambda i: _item_position(samples[i])):
        where = _item_position(samples[i])[:2]
        if where != prev_where or not keys_of[i] & prev_keys:
            run += 1
        run_of[i] = run
        prev_keys, prev_where = keys_of[i], where
    return run_of


def _divide(component, lines, cap, loose) -> list:
    """Cut a huge component into pieces of at most `cap` samples where possible; a scene run is
    never cut.

    Only keys made of common lines (each said in over COMMON_RECORDS records: "Yeah.",
    "What?") are cut; a key with a line of its own is a place and always holds. First such a
    key links only runs whose records are tied by an uncommon line (the same film). Pieces
    still too big lose the common keys shared by the most scene runs, at a spread limit that
    halves until they fall apart. `loose` receives, for samples whose film is unknown, the
    samples they were linked to by a cut key."""
    common = _common_lines(lines, component)
    done = []
    for part in _cut_common_across_films(component, lines, common, loose):
        stack = [part]
        while stack:
            part = stack.pop()
            pieces = [part] if len(part) <= cap else _cut_by_spread(part, lines.keys_of, lines.run_of, common)
            if len(pieces) == 1:
                done.append(part)
            else:
                stack.extend(pieces)
    return done


def _common_lines(lines, members) -> set:
    records_of = {}
    for i in members:
        for line in set(lines.seqs[i]):
            records_of.setdefault(line, set()).add(lines.samples[i].record_index)
    return {line for line, records in records_of.items() if len(records) > COMMON_RECORDS}


def _is_common_key(key, common) -> bool:
    return key[0] is not None and all(line in common for line in key)


def _runs_joined(part, run_of, links) -> list:
    """Pieces of `part` when the runs in each of `links` (iterables of sample indices) are joined."""
    runs = sorted({run_of[i] for i in part})
    index = {r: x for x, r in enumerate(runs)}
    uf = _UnionFind(len(runs))
    for members in links:
        it = iter(members)
        a = index[run_of[next(it)]]
        for i in it:
            uf.union(a, index[run_of[i]])
    by_root = {}
    for i in part:
        by_root.setdefault(uf.find(index[run_of[i]]), []).append(i)
    return list(by_root.values())


def _cut_common_across_films(part, lines, common, loose) -> list:
    """A record that shares only common keys (every line it has in common with others is a
    "Yeah." or "What?") cannot be placed in a film; its cut links are kept in `loose`."""
    samples, keys_of, run_of = lines.samples, lines.keys_of, lines.run_of
    holders = {}
    for i in part:
        for k in keys_of[i]:
            holders.setdefault(k, []).append(i)
    records = sorted({samples[i].record_index for i in part})
    film = _UnionFind(len(records))
    where = {r: x for x, r in enumerate(records)}
    shared = [(k, m) for k, m in holders.items() if len(m) > 1]
    for k, members in shared:
        if not _is_common_key(k, common):
            for i in members[1:]:
                film.union(where[samples[members[0]].record_index], where[samples[i].record_index])
    film_size = Counter(film.find(x) for x in range(len(records)))
    links = []
    for k, members in shared:
        if _is_common_key(k, common):
            by_film = {}
            for i in members:
                by_film.setdefault(film.find(where[samples[i].record_index]), []).append(i)
            links.extend(m for m in by_film.values() if len(m) > 1)
            if len(by_film) > 1:
                for root, m in by_film.items():
                    if film_size[root] == 1:
                        for i in m:
                            loose.setdefault(i, set()).update(members)
        else:
            links.append(members)
    return _runs_joined(part, run_of, links)


def _cut_by_spread(part, keys_of, run_of, common) -> list:
    runs_of_key = {}
    for i in part:
        for k in keys_of[i]:
            runs_of_key.setdefault(k, {}).setdefault(run_of[i], i)
    kept = [r.values() for k, r in runs_of_key.items() if len(r) > 1 and not _is_common_key(k, common)]
    spread = {k: len(r) for k, r in runs_of_key.items() if len(r) > 1 and _is_common_key(k, common)}
    limit = max(spread.values(), default=1)
    pieces = [part]
    while len(pieces) == 1 and limit > 1:
        limit //= 2
        pieces = _runs_joined(part, run_of, kept + [runs_of_key[k].values() for k, n in spread.items() if n <= limit])
    return pieces
