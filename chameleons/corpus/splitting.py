"""Validation split taken from the sampled set, and each epoch's training subset.

The validation set is drawn once, over the whole sampled set (not per character: with N = 2
that would put half the data in validation), seeded by `val_seed` alone, so runs with other
sample seeds share it. No validation line may reach training (a prompt, a history line or a
target); `--val_leak_check` says how that is ensured (`leak_checks`: whole conversations, or
screening by text).

A character's training pool is every sample of it outside validation and the screening.
Epoch 0 of the training set is the sampled set minus validation; later epochs (with
resampling) draw the same number per character afresh from the pool.
"""

import math
from dataclasses import asdict, dataclass, fields

from ..core.errors import UserError
from .data import item_position
from .leak_checks import CONVERSATION, Choice, ConversationCounts, LeakCheck, named
from .sampling import group_samples, ranked, sample_per_character

SHARE_TOLERANCE = 0.03  # validation share this far from val_ratio (or no validation) stops a run


@dataclass(frozen=True)
class SplitSettings:
    """What decides a split: the per-character sample, the validation share and seed, what counts
    as one character, and the leak check. The plan's guide table re-splits with other N."""

    max_per_user: int | None
    sample_seed: int
    val_ratio: float
    val_seed: int | None = None  # None: the sample seed
    group_by: str = "user_hash"
    leak_check: LeakCheck = CONVERSATION

    @classmethod
    def from_flags(cls, flags: dict):
        """From the split's flags by name (a run spec's `flags`)."""
        return cls(flags["max_samples_per_user"], flags["sample_seed"], flags["val_ratio"], flags["val_seed"],
                   flags["sample_group_by"], named(flags["val_leak_check"]))

    @property
    def validation_seed(self) -> int:
        return self.sample_seed if self.val_seed is None else self.val_seed


@dataclass(frozen=True)
class SplitStats:
    """A split's counts: the plan, the guide table, the manifest and the run's checks read them."""

    leak_check: str
    sampled: int
    train: int
    validation: int
    validation_share: float
    lost_to_split: int
    validation_characters: int
    validation_characters_without_train: int
    fidelity_candidates: int  # samples of the whole validation set whose character this run trains on
    characters_without_train: int
    excluded_for_leakage: int
    whole_validation: int
    grouping: ConversationCounts | None  # the conversation check's counts
    pool: int
    val_seed: int

    def as_dict(self) -> dict:
        """As plan.json and split_manifest.json record them: the check's counts in line."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "grouping":
                out[f.name] = value
            elif value is not None:
                out.update(asdict(value))
        return out


@dataclass
class Split:
    """A run's validation set and training pool, and the settings that made it (the plan's guide
    table re-splits the corpus with them for other N)."""

    settings: SplitSettings
    val: list
    pool: dict  # group -> training-eligible samples
    sizes: dict  # group -> training samples per epoch
    stats: SplitStats
    index: object = None  # the leak check's index (Conversations or QuoteIndex): reused for the guide table
    whole_val: frozenset = frozenset()  # the corpus's validation set (every N's), sample ids

    def epoch_train(self, epoch: int = 0) -> list:
        """The training subset of one epoch, in a fixed order; the same on every rank."""
        chosen = []
        for group in sorted(self.pool):
            chosen.extend(ranked(group, self.pool[group], self.sample_seed, epoch)[: self.sizes[group]])
        return sorted(chosen, key=_file_order)

    @property
    def notices(self) -> list:
        """What the grouping found that the user must see (a conversation built too big)."""
        return self.settings.leak_check.report(self.index)["notices"]

    def pool_samples(self) -> list:
        return [s for group in sorted(self.pool) for s in self.pool[group]]

    @property
    def train(self) -> list:
        return self.epoch_train(0)

    @property
    def max_per_user(self):
        return self.settings.max_per_user

    @property
    def sample_seed(self) -> int:
        return self.settings.sample_seed

    @property
    def val_ratio(self) -> float:
        return self.settings.val_ratio

    @property
    def group_by(self) -> str:
        return self.settings.group_by


def _file_order(s):
    return item_position(s.sample_id)


def split_train_val(samples, settings: SplitSettings, index=None) -> Split:
    """`settings.val_seed` (default: the sample seed) fixes the validation set, so runs with other
    sample seeds can share it and compare validation losses. `index` (from the leak check's
    `index` with the same samples) saves rebuilding it for every N of the plan's guide table.

    Validation is chosen once over the whole corpus (`whole_validation`), whatever N: a run's
    validation is its per-character sample's share of it, and its training samples come from
    outside it. So the training set of N is part of the training set of N + 1, and no N trains
    on a line of another N's validation."""
    n, group_by, val_seed = settings.max_per_user, settings.group_by, settings.validation_seed
    index = index if index is not None else settings.leak_check.index(samples)
    choice = whole_validation(index, samples, settings)
    val_source = sample_per_character(samples, n, val_seed, group_by)
    val = [s for s in val_source if s.sample_id in choice.val_ids]
    sampled = val_source if val_seed == settings.sample_seed else sample_per_character(samples, n,
                                                                                        settings.sample_seed, group_by)
    sampled_per_group = {g: len(m) for g, m in group_samples(sampled, group_by).items()}
    pool, sizes, leaked = _training_pool(samples, val, choice, sampled_per_group, settings)
    train_groups = set(sizes)
    val_groups = {s.group_key(group_by) for s in val}
    n_train = sum(sizes.values())
    stats = SplitStats(
        leak_check=settings.leak_check.name,
        sampled=len(sampled),
        train=n_train,
        validation=len(val),
        validation_share=round(len(val) / len(sampled), 4) if sampled else 0.0,
        lost_to_split=len(sampled) - len(val) - n_train,
        validation_characters=len(val_groups),
        validation_characters_without_train=len(val_groups - train_groups),
        fidelity_candidates=sum(1 for s in samples if s.sample_id in choice.val_ids and s.group_key(group_by) in train_groups),
        characters_without_train=len(set(sampled_per_group) - train_groups),
        excluded_for_leakage=leaked,
        whole_validation=len(choice.val_ids),
        grouping=choice.grouping,
        pool=sum(len(m) for m in pool.values()),
        val_seed=val_seed,
    )
    return Split(settings=settings, val=val, pool=pool, sizes=sizes, stats=stats, index=index, whole_val=choice.val_ids)


def whole_validation(index, samples, settings: SplitSettings) -> Choice:
    """The corpus's validation set and the ids that must leave training: chosen over the whole
    corpus, the same for every N; kept on `index` for the guide table's rows."""
    cache = index.__dict__.setdefault("_whole_validation", {})
    key = (settings.leak_check.name, settings.val_ratio, settings.validation_seed, settings.group_by)
    if key not in cache:
        cache[key] = settings.leak_check.choose(index, samples, settings)
    return cache[key]


def _training_pool(samples, val, choice: Choice, sampled_per_group, settings: SplitSettings):
    """Each character's training-eligible samples (outside the whole validation set and
    `choice.leaking`) and how many of them an epoch trains on (its sampled count minus its
    validation samples `val`; all of them with N = all). Both grow with N, and an epoch takes a
    prefix of one seeded order, so a smaller N's training set is part of a larger one's."""
    val_ids, leaking, group_by = choice.val_ids, choice.leaking, settings.group_by
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
        if settings.max_per_user is None:
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
    n_val, sampled, ratio = split.stats.validation, split.stats.sampled, split.val_ratio
    chance = max(1.0, 3 * math.sqrt(sampled * ratio * (1 - ratio)))
    if n_val > 0 and (accept or abs(n_val - ratio * sampled) <= max(SHARE_TOLERANCE * sampled, chance)):
        return
    largest = split.settings.leak_check.share_hint(split.index)
    raise UserError(f"{path}: validation is {n_val:,} of {sampled:,} sampled samples ({split.stats.validation_share:.1%}), "
                    f"more than {SHARE_TOLERANCE * 100:.0f} points from --val_ratio {ratio}{largest}; use more data or "
                    f"another --val_seed or --max_samples_per_user"
                    + (", or pass --accept_val_share to train anyway" if n_val else
                       " (a run needs validation samples: early stopping and the best model are chosen on them)"))
