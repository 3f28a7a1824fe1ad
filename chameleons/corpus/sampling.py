"""Per-character sampling.

Every sample gets a rank from a hash of (seed, character, sample content); a character keeps its
N best-ranked samples. That one rule gives what the sampling guide promises: a character's subset
depends only on the seed, its key and its own samples (not file order, other characters or the
number of processes), and the subset for N is a prefix of the subset for N + 1.
"""

import hashlib
from collections import defaultdict

GUIDE_SIZES = (1, 2, 5, 10, None)  # the N of the plan's sampling guide (None: all)


def rank_key(seed: int, group: str, uid: str, epoch: int = 0) -> bytes:
    """Epoch 0 is the plain per-run sample; later epochs rank afresh."""
    salt = f"{seed}\x00{group}\x00{uid}" if epoch == 0 else f"{seed}\x00e{epoch}\x00{group}\x00{uid}"
    return hashlib.blake2b(salt.encode(), digest_size=8).digest()


def group_samples(samples, group_by: str = "user_hash") -> dict:
    groups = defaultdict(list)
    for s in samples:
        groups[s.group_key(group_by)].append(s)
    return groups


def ranked(group: str, members, seed: int, epoch: int = 0) -> list:
    return sorted(members, key=lambda s: (rank_key(seed, group, s.uid, epoch), s.sample_id))


def sample_per_character(samples, max_per_user, seed: int, group_by: str = "user_hash") -> list:
    """At most `max_per_user` samples per character (None keeps all), in file order."""
    if max_per_user is None:
        return list(samples)
    keep = set()
    for group, members in group_samples(samples, group_by).items():
        keep.update(s.sample_id for s in ranked(group, members, seed)[:max_per_user])
    return [s for s in samples if s.sample_id in keep]


def sampled_counts(samples, group_by: str = "user_hash", sizes=GUIDE_SIZES) -> dict:
    """Samples kept for each N of the sampling guide's table (counts only, no draw needed)."""
    per_group = [len(m) for m in group_samples(samples, group_by).values()]
    return {("all" if n is None else n): sum(c if n is None else min(c, n) for c in per_group) for n in sizes}
