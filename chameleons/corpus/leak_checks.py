"""The two ways `--val_leak_check` keeps validation lines out of training, as classes that choose
and describe themselves. `named` is the one place a flag value becomes a check; a check builds
the index a split needs, chooses the corpus's validation set and the samples that must leave
training, and says in the plan what it did.

- `conversation` (default): validation takes whole conversations (`conversations.Conversations`:
  samples sharing an utterance, identified by its place in the scene); their unsampled items
  leave the training pool, nothing else is lost.
- `text`: a training sample showing a validation target's text (by `line_key`) anywhere is
  screened out (strict: in scene data most samples quote earlier lines).
"""

import hashlib
from collections import Counter
from dataclasses import dataclass

from . import conversations
from .conversations import Conversations
from .sampling import GUIDE_SIZES, group_samples, ranked

MAX_QUOTING_FIRST_PASS = 2
BALANCE = 0.005  # how far above val_ratio a small N's validation may go (of its draw; at least one sample)


def _val_rank(seed: int, uid: str) -> bytes:
    return hashlib.blake2b(f"val\x00{seed}\x00{uid}".encode(), digest_size=8).digest()


def _ending_cost(grouped: Conversations, c) -> int:
    """Samples outside conversation `c` that would leave training with it: those showing the last
    two lines of one of its samples (all a one-turn window shows)."""
    if c not in grouped.shared_ending:
        return 0
    own = {s.sample_id for s in grouped.members[c]}
    pairs = {grouped.ending[sid] for sid in own if sid in grouped.ending}
    return len({q.sample_id for pair in pairs for q in grouped.holders[pair]} - own)


class SmallDraws:
    """The validation share of each small N's draw (the guide's N below all,
    `sampling.GUIDE_SIZES`, drawn as a run with validation seed `seed` draws them) as
    conversations are taken, held at most BALANCE (and one sample) above `val_ratio`."""

    def __init__(self, grouped: Conversations, samples, val_ratio: float, seed: int, group_by: str):
        sizes = [n for n in GUIDE_SIZES if n is not None]
        drawn, self.counts = [0] * len(sizes), {}
        for group, members in group_samples(samples, group_by).items():
            for k, n in enumerate(sizes):
                drawn[k] += min(n, len(members))
            for place, s in enumerate(ranked(group, members, seed)[:sizes[-1]]):
                row = self.counts.setdefault(grouped.label[s.sample_id], [0] * len(sizes))
                for k, n in enumerate(sizes):
                    row[k] += place < n
        self.caps = [round(val_ratio * d) + max(1, round(BALANCE * d)) for d in drawn]
        self.taken = [0] * len(sizes)

    def fits(self, c) -> bool:
        return all(t + k <= cap for t, k, cap in zip(self.taken, self.counts.get(c, ()), self.caps))

    def add(self, c):
        for k, x in enumerate(self.counts.get(c, ())):
            self.taken[k] += x


def choose_conversations(grouped: Conversations, samples, val_ratio: float, seed: int,
                         group_by: str = "user_hash") -> list:
    """Whole conversations, in an order seeded by `seed`, until about `val_ratio` of `samples`.

    A conversation that would overshoot the target is passed over for a later, smaller one, and
    so is one that would put the validation share of a small N's draw (the guide's 1, 2, 5, 10,
    as a run with this validation seed draws them) more than BALANCE above `val_ratio`: a
    series' validation episodes hold many one-episode characters, which count fully at small N
    (without this, N = 10 on a real series reached 11-13% while N = all sat at 10%). A
    first pass also passes over a conversation that would take the last training data of a
    character seen in several conversations, or that has a sample whose last context line and
    target other conversations show too (those samples would leave training: a one-turn window
    shows nothing else). Later passes relax this only as far as the target needs: the last
    training data of a character first; last, conversations whose endings others show, those
    that would take the fewest samples out of training first.
    A character of one conversation is not protected: keeping all of them out of validation
    would leave small-N validation sets short of their share (at N = 1 every character counts
    once). Returns conversation labels."""
    if len(samples) < 2:
        return []
    target = min(len(samples) - 1, max(1, round(val_ratio * len(samples))))
    label = grouped.label
    members_in = {}
    for s in samples:
        if label[s.sample_id] not in grouped.uncertain:
            members_in.setdefault(label[s.sample_id], []).append(s)
    order = sorted(members_in, key=lambda c: (_val_rank(seed, grouped.names[c]), grouped.names[c]))
    pool_left = Counter(s.group_key(group_by) for s in samples)
    scenes_of = Counter(g for members in grouped.members for g in {s.group_key(group_by) for s in members})
    chosen, total = {}, 0
    small = SmallDraws(grouped, samples, val_ratio, seed, group_by)

    def take(c):
        nonlocal total
        pool_left.subtract(s.group_key(group_by) for s in grouped.members[c])
        chosen[c] = True
        total += len(members_in[c])
        small.add(c)

    for protect, costly in ((True, False), (False, False), (False, True)):
        for c in (sorted(order, key=lambda c: _ending_cost(grouped, c)) if costly else order):
            if total >= target:
                break
            if c in chosen or total + len(members_in[c]) > target or not small.fits(c):
                continue
            if not costly and c in grouped.shared_ending:
                continue
            every = Counter(s.group_key(group_by) for s in grouped.members[c])
            if protect and any(pool_left[g] - k < 1 and scenes_of[g] > 1 for g, k in every.items()):
                continue
            take(c)
    if total < target:  # every conversation left overshoots: take the smallest if it gets closer (or
        # if there is no validation yet: a run needs some)
        rest = [c for c in order if c not in chosen and total + len(members_in[c]) <= len(samples) - 1
                and (total == 0 or small.fits(c))]
        if rest:
            best = min(rest, key=lambda c: len(members_in[c]))
            if total == 0 or abs(total + len(members_in[best]) - target) < target - total:
                take(best)
    return list(chosen)


class QuoteIndex:
    """Which samples show a given line in their prompt (any speaker) or train on it as target.

    For `--val_leak_check text`: a validation target must reach no training prompt, so
    choosing a validation sample also removes every sample that quotes its line from training.
    """

    def __init__(self, samples):
        self._by_line = {}
        for s in samples:
            for line in set(conversations.sequence(s)):
                self._by_line.setdefault(line, []).append(s)

    def quoting(self, line: str) -> list:
        """The samples showing `line` or a transcription variant of it (same `line_key`)."""
        return self._by_line.get(conversations.line_key(line), [])


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


@dataclass(frozen=True)
class ConversationCounts:
    """What the conversation check reports (plan.json's `split`, the plan's leak line)."""

    conversations: int
    validation_conversations: int
    huge_conversations_split: int
    largest_conversation: int
    largest_share: float  # of the corpus's samples
    near_duplicate_scenes: int
    near_duplicate_records: int
    uncertain_conversations: int


@dataclass(frozen=True)
class Choice:
    """A corpus's validation set (sample ids), the ids that must leave training besides it, and
    the check's counts (None for the text check)."""

    val_ids: frozenset
    leaking: frozenset
    grouping: ConversationCounts | None = None


class LeakCheck:
    """One `--val_leak_check`: its name (the flag's value, recorded in plan.json and the manifest),
    its description (the flag's help), the index a split needs (built once per corpus,
    independent of N and the seeds), the choice of the corpus's validation set, and the plan's
    account of it."""

    name = ""
    description = ""

    def index(self, samples):
        raise NotImplementedError

    def choose(self, index, samples, settings) -> Choice:
        """Validation over the whole corpus `samples` with `settings` (a `splitting.SplitSettings`)."""
        raise NotImplementedError

    def plan_line(self, sp: dict) -> str:
        """The plan's leak line, from plan.json's `split`."""
        raise NotImplementedError

    def share_hint(self, index) -> str:
        """Added to the error when validation misses its share."""
        return ""

    def report(self, index) -> dict:
        """What the index did, for split_audit.json: `notices` (what a user must see in the plan
        and the log) and, for the conversation check, every near-duplicate join."""
        return {"notices": []}

    def __repr__(self):
        return self.name


class ConversationCheck(LeakCheck):
    name = "conversation"
    description = ("whole conversations go to validation (a line is identified by its place in the scene); "
                   "their other samples leave training")

    def index(self, samples) -> Conversations:
        return Conversations(samples)

    def choose(self, index: Conversations, samples, settings) -> Choice:
        """Whole conversations (`choose_conversations`); out of training: the rest of each, the
        conversations of unknown film linked to one, and samples ending on a validation sample's
        last two lines (all a one-turn window shows)."""
        chosen = choose_conversations(index, samples, settings.val_ratio, settings.validation_seed, settings.group_by)
        chosen_set = set(chosen)
        val_ids = {s.sample_id for s in samples if index.label[s.sample_id] in chosen_set}
        members = {s.sample_id for c in chosen for s in index.members[c]}
        leaking = members - val_ids
        leaking |= {s.sample_id for c, linked in index.uncertain.items() if linked & chosen_set
                    for s in index.members[c]}
        endings = {index.ending[sid] for sid in members if sid in index.ending}
        leaking |= {q.sample_id for pair in endings for q in index.holders[pair]} - members
        counts = ConversationCounts(
            conversations=len(index), validation_conversations=len(chosen),
            huge_conversations_split=index.split_up, largest_conversation=index.largest,
            largest_share=round(index.largest / max(1, len(index.label)), 4),
            near_duplicate_scenes=index.near_duplicate_scenes, near_duplicate_records=index.near_duplicate_records,
            uncertain_conversations=len(index.uncertain))
        return Choice(frozenset(val_ids), frozenset(leaking), counts)

    def plan_line(self, sp: dict) -> str:
        huge = (f"{sp['huge_conversations_split']} over-large one(s) split up at scene boundaries"
                if sp["huge_conversations_split"] else "none had to be split up")
        if sp.get("uncertain_conversations"):
            huge += f", {sp['uncertain_conversations']:,} of unknown film kept out of validation"
        return (f"leaks      {sp['conversations']:,} conversations (largest {sp['largest_conversation']:,} samples, "
                f"{sp.get('largest_share', 0):.1%} of the corpus; "
                f"{huge}; {sp.get('near_duplicate_scenes', 0):,} scenes of {sp.get('near_duplicate_records', 0):,} "
                f"records joined as near duplicates), {sp['validation_conversations']:,} of them validation "
                f"({sp['whole_validation']:,} samples, one set for every N); {sp['excluded_for_leakage']:,} samples of "
                f"validation conversations left out of the training pool")

    def report(self, index: Conversations) -> dict:
        return {"notices": index.notices, "near_duplicate_joins": index.near_duplicate_joins}

    def share_hint(self, index: Conversations) -> str:
        """Why validation may miss its share: the largest conversations."""
        top = sorted(index.members, key=lambda m: (-len(m), m[0].sample_id))[:3]
        return "; the largest conversations hold " + ", ".join(
            f"{len(m):,} samples (from item {m[0].sample_id}, character {m[0].user_hash})" for m in top)


class TextCheck(LeakCheck):
    name = "text"
    description = "drop every training sample showing a validation line's text (strict, loses much scene data)"

    def index(self, samples) -> QuoteIndex:
        return QuoteIndex(samples)

    def choose(self, index: QuoteIndex, samples, settings) -> Choice:
        """`choose_validation`; out of training: every sample quoting a validation target."""
        val = choose_validation(samples, settings.val_ratio, settings.validation_seed, settings.group_by, samples,
                                index)
        val_ids = {s.sample_id for s in val}
        return Choice(frozenset(val_ids), frozenset({q.sample_id for v in val for q in index.quoting(v.target)} - val_ids))

    def plan_line(self, sp: dict) -> str:
        return (f"leaks      {sp['excluded_for_leakage']:,} samples kept out of training because they quote a "
                f"validation line's text")


CONVERSATION, TEXT = ConversationCheck(), TextCheck()
LEAK_CHECKS = (CONVERSATION, TEXT)
NAMES = tuple(c.name for c in LEAK_CHECKS)  # --val_leak_check's choices


def named(name: str):
    """The check a `--val_leak_check` value (or a run record's) names."""
    for check in LEAK_CHECKS:
        if check.name == name:
            return check
    raise ValueError(f"unknown leak check {name!r} (choose from {', '.join(NAMES)})")


def describe() -> str:
    """--val_leak_check's help: each check by its own description."""
    return "how validation lines are kept out of training: " + "; ".join(
        f"'{c.name}': {c.description}" for c in LEAK_CHECKS)
