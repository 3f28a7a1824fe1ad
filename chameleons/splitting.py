"""Validation split taken from the sampled set, and each epoch's training subset.

The validation set is drawn once, over the whole sampled set (not per character: with N = 2
that would put half the data in validation). A character's training pool is every sample of
it outside validation, minus any whose dialogue quotes a validation target of that character,
so no validation line ever reaches a training prompt. Epoch 0 of the training set is the
sampled set minus validation; later epochs (with resampling) draw the same number per
character afresh from the pool.
"""

import hashlib
from dataclasses import dataclass, field

from .sampling import group_samples, ranked, sample_per_character


def _val_rank(seed: int, uid: str) -> bytes:
    return hashlib.blake2b(f"val\x00{seed}\x00{uid}".encode(), digest_size=8).digest()


def choose_validation(sampled, val_ratio: float, seed: int, group_by: str = "user_hash") -> list:
    """About `val_ratio` of the sampled set; a character's last training sample is taken only
    when the target count cannot be met otherwise."""
    if len(sampled) < 2:
        return []
    n_val = min(len(sampled) - 1, max(1, round(val_ratio * len(sampled))))
    order = sorted(sampled, key=lambda s: (_val_rank(seed, s.uid), s.sample_id))
    left = {g: len(m) for g, m in group_samples(sampled, group_by).items()}
    chosen = []
    chosen_ids = set()
    for s in order:
        if len(chosen) == n_val:
            break
        g = s.group_key(group_by)
        if left[g] > 1:
            left[g] -= 1
            chosen.append(s)
            chosen_ids.add(s.sample_id)
    for s in order:
        if len(chosen) == n_val:
            break
        if s.sample_id not in chosen_ids:
            chosen.append(s)
            chosen_ids.add(s.sample_id)
    return [s for s in sampled if s.sample_id in chosen_ids]


def quotes_any(sample, lines: set) -> bool:
    return any(role == "assistant" and content in lines for role, content in sample.context)


@dataclass
class Split:
    sample_seed: int
    group_by: str
    val: list
    pool: dict  # group -> training-eligible samples
    sizes: dict  # group -> training samples per epoch
    stats: dict = field(default_factory=dict)

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
    r, c, i = (int(p[1:]) for p in s.sample_id.split("."))
    return r, c, i


def split_train_val(samples, max_per_user, sample_seed: int, val_ratio: float, val_seed=None,
                    group_by: str = "user_hash") -> Split:
    """`val_seed` (default: the sample seed) fixes the validation set, so runs with other sample
    seeds can share it and compare validation losses."""
    val_seed = sample_seed if val_seed is None else val_seed
    val_source = sample_per_character(samples, max_per_user, val_seed, group_by)
    val = choose_validation(val_source, val_ratio, val_seed, group_by)
    val_ids = {s.sample_id for s in val}
    val_lines = {}
    for s in val:
        val_lines.setdefault(s.user_hash, set()).add(s.target)

    sampled = sample_per_character(samples, max_per_user, sample_seed, group_by)
    sampled_per_group = {g: len(m) for g, m in group_samples(sampled, group_by).items()}
    val_per_group = {g: len(m) for g, m in group_samples(val, group_by).items()}

    pool, leaked = {}, 0
    for group, members in group_samples(samples, group_by).items():
        eligible = []
        for s in members:
            if s.sample_id in val_ids:
                continue
            if quotes_any(s, val_lines.get(s.user_hash, ())) or s.target in val_lines.get(s.user_hash, ()):
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

    split = Split(sample_seed=sample_seed, group_by=group_by, val=val, pool=pool, sizes=sizes)
    train_groups = set(sizes)
    val_groups = {s.group_key(group_by) for s in val}
    split.stats = {
        "sampled": len(sampled),
        "train": sum(sizes.values()),
        "validation": len(val),
        "validation_characters": len(val_groups),
        "validation_characters_without_train": len(val_groups - train_groups),
        "excluded_for_leakage": leaked,
        "pool": sum(len(m) for m in pool.values()),
        "val_seed": val_seed,
    }
    return split
