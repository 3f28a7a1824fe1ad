"""Validation split taken from the sampled set, and each epoch's training subset.

The validation set is drawn once, over the whole sampled set (not per character: with N = 2
that would put half the data in validation), seeded by `val_seed` alone, so runs with other
sample seeds share it. No validation line may reach training (a prompt, a history line or a
target); `--val_leak_check` says how that is ensured:

- `conversation` (default): an utterance is identified by its place, the line together with
  its neighbour in the scene, never by its text alone ("Yeah." is said in hundreds of scenes).
  Lines are compared by `line_key`, so transcription variants of one line (case, punctuation,
  spacing, accents) are one line.
  Samples sharing an utterance form one conversation, and validation takes whole
  conversations; their unsampled items leave the training pool, nothing else is lost.
- `text`: a training sample showing a validation target's text (by `line_key`) anywhere is
  screened out.

A character's training pool is every sample of it outside validation and the screening.
Epoch 0 of the training set is the sampled set minus validation; later epochs (with
resampling) draw the same number per character afresh from the pool.
"""

import functools
import hashlib
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from . import near_duplicates
from .data import item_position
from .errors import UserError
from .sampling import group_samples, ranked, sample_per_character

LEAK_CHECKS = ("conversation", "text")
MAX_QUOTING_FIRST_PASS = 2
HUGE_SHARE = 0.05  # a conversation above this share of the corpus is divided at scene boundaries
HUGE_MIN = 200  # ... but never one this small: a small corpus is not split up
COMMON_RECORDS = 20  # a line said in more records than this is a common one ("Yeah."), not a place
SHARE_TOLERANCE = 0.03  # validation share this far from val_ratio (or no validation) stops a run


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


def _val_rank(seed: int, uid: str) -> bytes:
    return hashlib.blake2b(f"val\x00{seed}\x00{uid}".encode(), digest_size=8).digest()


def _item_position(s):
    """(record, collection, item) from the sample id: the item's place in its record."""
    return item_position(s.sample_id)


# --------------------------------------------------------------------------- conversation split

def _sequence(sample) -> tuple:
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
        seqs = [_sequence(s) for s in samples]
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
        self._join_near_duplicates(samples, seqs, keys_of, run_of, uf)
        cap = max(huge_min, math.ceil(huge_share * n))
        parts, loose, self.split_up = [], {}, 0
        for component in uf.groups(range(n)):
            if len(component) > cap:
                pieces = _divide(component, samples, seqs, keys_of, run_of, cap, loose)
                self.split_up += len(pieces) > 1
                parts.extend(pieces)
            else:
                parts.append(component)
        self.cap = cap
        self._name(samples, parts, loose)
        self._endings(samples, seqs)

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
        self.shared_ending = set()
        for s in samples:
            pair = self.ending.get(s.sample_id)
            own = self.label[s.sample_id]
            if pair and any(self.label[q.sample_id] != own for q in self.holders[pair]):
                self.shared_ending.add(own)

    def _join_near_duplicates(self, samples, seqs, keys_of, run_of, uf):
        """Scene runs holding the same lines with word-level differences are one conversation;
        each link is also a key (never cut by _divide). Counts the runs and records that only
        this joined to another conversation."""
        first_of_run = {}
        for i, r in enumerate(run_of):
            first_of_run.setdefault(r, i)
        joined = set()
        group_of = {r: uf.find(i) for r, i in first_of_run.items()}
        for a, b in near_duplicates.near_duplicate_runs(seqs, run_of, group_of):
            i, j = first_of_run[a], first_of_run[b]
            if uf.find(i) != uf.find(j):
                joined.update((i, j))
                uf.union(i, j)
            keys_of[i].add((None, "near", a, b))
            keys_of[j].add((None, "near", a, b))
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


def _divide(component, samples, seqs, keys_of, run_of, cap, loose) -> list:
    """Cut a huge component into pieces of at most `cap` samples where possible; a scene run is
    never cut.

    Only keys made of common lines (each said in over COMMON_RECORDS records: "Yeah.",
    "What?") are cut; a key with a line of its own is a place and always holds. First such a
    key links only runs whose records are tied by an uncommon line (the same film). Pieces
    still too big lose the common keys shared by the most scene runs, at a spread limit that
    halves until they fall apart. `loose` receives, for samples whose film is unknown, the
    samples they were linked to by a cut key."""
    common = _common_lines(samples, seqs, component)
    done = []
    for part in _cut_common_across_films(component, samples, keys_of, run_of, common, loose):
        stack = [part]
        while stack:
            part = stack.pop()
            pieces = [part] if len(part) <= cap else _cut_by_spread(part, keys_of, run_of, common)
            if len(pieces) == 1:
                done.append(part)
            else:
                stack.extend(pieces)
    return done


def _common_lines(samples, seqs, members) -> set:
    records_of = {}
    for i in members:
        for line in set(seqs[i]):
            records_of.setdefault(line, set()).add(samples[i].record_index)
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


def _cut_common_across_films(part, samples, keys_of, run_of, common, loose) -> list:
    """A record that shares only common keys (every line it has in common with others is a
    "Yeah." or "What?") cannot be placed in a film; its cut links are kept in `loose`."""
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


def choose_conversations(conversations: Conversations, samples, val_ratio: float, seed: int,
                         group_by: str = "user_hash") -> list:
    """Whole conversations, in an order seeded by `seed`, until about `val_ratio` of `samples`.

    A conversation that would overshoot the target is passed over for a later, smaller one. A
    first pass also passes over a conversation that would take the last training data of a
    character seen in several conversations, or that has a sample whose last context line and
    target other conversations show too (those samples would leave training: a one-turn window
    shows nothing else); the second pass takes it only when the target cannot be met otherwise. A character of one conversation is not protected: keeping all of
    them out of validation would leave small-N validation sets short of their share (at N = 1
    every character counts once). Returns conversation labels."""
    if len(samples) < 2:
        return []
    target = min(len(samples) - 1, max(1, round(val_ratio * len(samples))))
    label = conversations.label
    members_in = {}
    for s in samples:
        if label[s.sample_id] not in conversations.uncertain:
            members_in.setdefault(label[s.sample_id], []).append(s)
    order = sorted(members_in, key=lambda c: (_val_rank(seed, conversations.names[c]), conversations.names[c]))
    pool_left = Counter(s.group_key(group_by) for s in samples)
    scenes_of = Counter(g for members in conversations.members for g in {s.group_key(group_by) for s in members})
    chosen, total = {}, 0

    def take(c):
        nonlocal total
        pool_left.subtract(s.group_key(group_by) for s in conversations.members[c])
        chosen[c] = True
        total += len(members_in[c])

    for protect in (True, False):
        for c in order:
            if total >= target:
                break
            if c in chosen or total + len(members_in[c]) > target:
                continue
            every = Counter(s.group_key(group_by) for s in conversations.members[c])
            if protect and (c in conversations.shared_ending or
                            any(pool_left[g] - k < 1 and scenes_of[g] > 1 for g, k in every.items())):
                continue
            take(c)
    if total < target:  # every conversation left overshoots: take the smallest if it gets closer (or
        # if there is no validation yet: a run needs some)
        rest = [c for c in order if c not in chosen and total + len(members_in[c]) <= len(samples) - 1]
        if rest:
            best = min(rest, key=lambda c: len(members_in[c]))
            if total == 0 or abs(total + len(members_in[best]) - target) < target - total:
                take(best)
    return list(chosen)


# --------------------------------------------------------------------------- text screening

class QuoteIndex:
    """Which samples show a given line in their prompt (any speaker) or train on it as target.

    For `--val_leak_check text`: a validation target must reach no training prompt, so
    choosing a validation sample also removes every sample that quotes its line from training.
    """

    def __init__(self, samples):
        self._by_line = {}
        for s in samples:
            for line in set(_sequence(s)):
                self._by_line.setdefault(line, []).append(s)

    def quoting(self, line: str) -> list:
        """The samples showing `line` or a transcription variant of it (same `line_key`)."""
        return self._by_line.get(line_key(line), [])


def choose_validation(sampled, val_ratio: float, seed: int, group_by: str = "user_hash", all_samples=None,
                      quotes: QuoteIndex = None) -> list:
    """For `--val_leak_check text`: about `val_ratio` of the sampled set, in seeded random order,
    with two preferences.

    Taking a line for validation also takes every sample that quotes it out of training. In
    scene data each line is quoted by the later items of its scene, so a first pass takes only
    lines quoted by at most MAX_QUOTING_FIRST_PASS other samples (far fewer training samples lost;
    see tests/test_splitting.py; validation lines lean slightly towards later turns). A candidate is also
    passed over when it would leave a character without training data; such candidates are
    used only when the target count cannot be met otherwise."""
    if len(sampled) < 2:
        return []
    all_samples = sampled if all_samples is None else all_samples
    quotes = quotes or QuoteIndex(all_samples)
    n_val = min(len(sampled) - 1, max(1, round(val_ratio * len(sampled))))
    order = sorted(sampled, key=lambda s: (_val_rank(seed, s.uid), s.sample_id))
    pool_left = {g: len(m) for g, m in group_samples(all_samples, group_by).items()}
    sampled_left = {g: len(m) for g, m in group_samples(sampled, group_by).items()}
    removed, chosen_ids = set(), set()
    for max_quoting in (MAX_QUOTING_FIRST_PASS, None):
        for s in order:
            if len(chosen_ids) == n_val:
                break
            if s.sample_id in removed:
                continue
            affected = {q.sample_id: q for q in quotes.quoting(s.target) if q.sample_id not in removed}
            if max_quoting is not None and len(affected) - (s.sample_id in affected) > max_quoting:
                continue
            affected[s.sample_id] = s
            cost = {}
            for q in affected.values():
                cost[q.group_key(group_by)] = cost.get(q.group_key(group_by), 0) + 1
            g_own = s.group_key(group_by)
            if sampled_left[g_own] > 1 and all(pool_left[g] - c >= 1 for g, c in cost.items()):
                sampled_left[g_own] -= 1
                for g, c in cost.items():
                    pool_left[g] -= c
                removed.update(affected)
                chosen_ids.add(s.sample_id)
    for s in order:
        if len(chosen_ids) == n_val:
            break
        if s.sample_id not in chosen_ids:
            chosen_ids.add(s.sample_id)
    return [s for s in sampled if s.sample_id in chosen_ids]


# --------------------------------------------------------------------------- the split

@dataclass
class Split:
    """A run's validation set and training pool, and the settings that made it (the plan's guide
    table re-splits the corpus with them for other N)."""

    max_per_user: int | None
    sample_seed: int
    val_ratio: float
    group_by: str
    val: list
    pool: dict  # group -> training-eligible samples
    sizes: dict  # group -> training samples per epoch
    stats: dict = field(default_factory=dict)
    index: object = None  # Conversations or QuoteIndex: reused for the plan's guide table

    def epoch_train(self, epoch: int = 0) -> list:
        """The training subset of one epoch, in a fixed order; the same on every rank."""
        chosen = []
        for group in sorted(self.pool):
            chosen.extend(ranked(group, self.pool[group], self.sample_seed, epoch)[: self.sizes[group]])
        return sorted(chosen, key=_file_order)

    def pool_samples(self) -> list:
        return [s for group in sorted(self.pool) for s in self.pool[group]]

    @property
    def train(self) -> list:
        return self.epoch_train(0)


def _file_order(s):
    return _item_position(s)


def make_index(samples, leak_check: str = "conversation"):
    """What a split needs beyond the samples; independent of N and the seeds, so build it once."""
    if leak_check not in LEAK_CHECKS:
        raise ValueError(f"unknown leak check {leak_check!r} (choose from {', '.join(LEAK_CHECKS)})")
    return Conversations(samples) if leak_check == "conversation" else QuoteIndex(samples)


def split_train_val(samples, max_per_user, sample_seed: int, val_ratio: float, val_seed=None,
                    group_by: str = "user_hash", leak_check: str = "conversation", index=None) -> Split:
    """`val_seed` (default: the sample seed) fixes the validation set, so runs with other sample
    seeds can share it and compare validation losses. `index` (from `make_index` with the same
    samples and leak check) saves rebuilding it for every N of the plan's guide table.

    Validation is chosen once over the whole corpus (`whole_validation`), whatever N: a run's
    validation is its per-character sample's share of it, and its training samples come from
    outside it. So the training set of N is part of the training set of N + 1, and no N trains
    on a line of another N's validation."""
    val_seed = sample_seed if val_seed is None else val_seed
    index = index if index is not None else make_index(samples, leak_check)
    whole, leaking, conv_stats = whole_validation(index, leak_check, samples, val_ratio, val_seed, group_by)
    val_source = sample_per_character(samples, max_per_user, val_seed, group_by)
    val = [s for s in val_source if s.sample_id in whole]
    sampled = val_source if val_seed == sample_seed else sample_per_character(samples, max_per_user, sample_seed,
                                                                               group_by)
    sampled_per_group = {g: len(m) for g, m in group_samples(sampled, group_by).items()}
    pool, sizes, leaked = _training_pool(samples, val, whole, leaking, sampled_per_group, max_per_user, group_by)

    split = Split(max_per_user=max_per_user, sample_seed=sample_seed, val_ratio=val_ratio, group_by=group_by, val=val,
                  pool=pool, sizes=sizes, index=index)
    train_groups = set(sizes)
    val_groups = {s.group_key(group_by) for s in val}
    n_train = sum(sizes.values())
    split.stats = {
        "leak_check": leak_check,
        "sampled": len(sampled),
        "train": n_train,
        "validation": len(val),
        "validation_share": round(len(val) / len(sampled), 4) if sampled else 0.0,
        "lost_to_split": len(sampled) - len(val) - n_train,
        "validation_characters": len(val_groups),
        "validation_characters_without_train": len(val_groups - train_groups),
        "characters_without_train": len(set(sampled_per_group) - train_groups),
        "excluded_for_leakage": leaked,
        "whole_validation": len(whole),
        **conv_stats,
        "pool": sum(len(m) for m in pool.values()),
        "val_seed": val_seed,
    }
    return split


def whole_validation(index, leak_check, samples, val_ratio, val_seed, group_by):
    """(ids of the corpus's validation samples, ids that must leave training, stats): chosen
    over the whole corpus, the same for every N; kept on `index` for the guide table's rows."""
    cache = index.__dict__.setdefault("_whole_validation", {})
    key = (leak_check, val_ratio, val_seed, group_by)
    if key not in cache:
        val, leaking, stats = _choose_val(index, leak_check, samples, samples, val_ratio, val_seed, group_by)
        cache[key] = frozenset(s.sample_id for s in val), frozenset(leaking), stats
    return cache[key]


def _choose_val(index, leak_check, val_source, samples, val_ratio, val_seed, group_by):
    """(validation samples, ids that must leave training, conversation stats) for either leak check."""
    if leak_check != "conversation":
        val = choose_validation(val_source, val_ratio, val_seed, group_by, samples, index)
        val_ids = {s.sample_id for s in val}
        return val, {q.sample_id for v in val for q in index.quoting(v.target)} - val_ids, {}
    chosen = choose_conversations(index, samples, val_ratio, val_seed, group_by)
    chosen_set = set(chosen)
    val = [s for s in val_source if index.label[s.sample_id] in chosen_set]
    val_ids = {s.sample_id for s in val}
    leaking = {s.sample_id for c in chosen for s in index.members[c]} - val_ids
    leaking |= {s.sample_id for c, linked in index.uncertain.items() if linked & chosen_set
                for s in index.members[c]}
    endings = {index.ending[s.sample_id] for c in chosen for s in index.members[c] if s.sample_id in index.ending}
    leaking |= {q.sample_id for pair in endings for q in index.holders[pair]} - {
        s.sample_id for c in chosen for s in index.members[c]}
    stats = {"conversations": len(index), "validation_conversations": len(chosen),
             "huge_conversations_split": index.split_up, "largest_conversation": index.largest,
             "near_duplicate_scenes": index.near_duplicate_scenes,
             "near_duplicate_records": index.near_duplicate_records,
             "uncertain_conversations": len(index.uncertain)}
    return val, leaking, stats


def _training_pool(samples, val, whole, leaking, sampled_per_group, max_per_user, group_by):
    """Each character's training-eligible samples (outside the whole validation set `whole` and
    `leaking`) and how many of them an epoch trains on (its sampled count minus its validation
    samples `val`; all of them with N = all). Both grow with N, and an epoch takes a prefix of
    one seeded order, so a smaller N's training set is part of a larger one's."""
    val_ids = whole
    val_per_group = {g: len(m) for g, m in group_samples(val, group_by).items()}
    pool, leaked = {}, 0
    for group, members in group_samples(samples, group_by).items():
        eligible = []
        for s in members:
            if s.sample_id in val_ids:
                continue
            if s.sample_id in leaking:
                leaked += 1
                continue
            eligible.append(s)
        if eligible:
            pool[group] = eligible
    sizes = {}
    for group, eligible in pool.items():
        want = sampled_per_group.get(group, 0) - val_per_group.get(group, 0)
        if max_per_user is None:
            want = len(eligible)
        sizes[group] = max(0, min(want, len(eligible)))
    pool = {g: m for g, m in pool.items() if sizes[g] > 0}
    sizes = {g: n for g, n in sizes.items() if n > 0}
    return pool, sizes, leaked


def check_validation_share(split, accept: bool = False, path="data"):
    """One error line when the run's validation is empty or its share is more than
    SHARE_TOLERANCE from val_ratio: the conversations are too few or too big for the ratio, and
    the eval loss would rest on too little, or training on too little. A small sampled set may
    be off by what its draw from the corpus's validation set allows by chance (three standard
    deviations, at least one sample). `accept` (--accept_val_share) lets a share through, never an
    empty validation set (training needs one)."""
    st = split.stats
    n_val, sampled, ratio = st["validation"], st["sampled"], split.val_ratio
    chance = max(1.0, 3 * math.sqrt(sampled * ratio * (1 - ratio)))
    if n_val > 0 and (accept or abs(n_val - ratio * sampled) <= max(SHARE_TOLERANCE * sampled, chance)):
        return
    largest = ""
    if isinstance(split.index, Conversations):
        top = sorted(split.index.members, key=lambda m: (-len(m), m[0].sample_id))[:3]
        largest = "; the largest conversations hold " + ", ".join(
            f"{len(m):,} samples (from item {m[0].sample_id}, character {m[0].user_hash})" for m in top)
    raise UserError(f"{path}: validation is {n_val:,} of {sampled:,} sampled samples ({st['validation_share']:.1%}), "
                    f"more than {SHARE_TOLERANCE * 100:.0f} points from --val_ratio {ratio}{largest}; use more data or "
                    f"another --val_seed or --max_samples_per_user"
                    + (", or pass --accept_val_share to train anyway" if n_val else
                       " (a run needs validation samples: early stopping and the best model are chosen on them)"))
