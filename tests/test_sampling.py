"""Per-character sampling (--max_samples_per_user, --sample_seed, --sample_group_by).

The promises: a character's subset depends only on the seed, its key and its own samples (not on
other characters, file order or the number of processes); the subset for N is contained in the
subset for N + 1; characters with at most N samples keep all; None keeps everything; the draw is
deterministic. Expectations are derived from the corpus itself, never from a previous run.
"""

import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleons.corpus.data import extract_samples
from chameleons.corpus.sampling import sample_per_character, sampled_counts
from chameleons.corpus.splitting import SplitSettings, split_train_val

from conftest import item, record

REPO = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- corpus strategy

@st.composite
def corpora(draw, max_chars=8, max_items=12, max_records_per_char=3):
    """Records for several characters; a character may span records; items may repeat exactly."""
    n_chars = draw(st.integers(1, max_chars))
    salt = draw(st.integers(0, 10**6))
    records = []
    for c in range(n_chars):
        h = f"u{c}-{salt}"
        n = draw(st.integers(0, max_items))
        k = draw(st.integers(1, max_records_per_char))
        items = []
        for i in range(n):
            # a few exact duplicates (same context and continuation) exercise tie-breaking
            j = draw(st.integers(0, i)) if i and draw(st.integers(0, 9)) == 0 else i
            items.append(item([("Partner", f"{h} context {j}")], f"{h} line {j}"))
        for part in range(k):
            chunk = items[part::k]
            records.append(record(h, chunk, name=f"Name {c}", profile={"part": part}))
    order = draw(st.permutations(range(len(records))))
    return [records[i] for i in order]


def by_character(samples, group_by="user_hash"):
    """group -> Counter of uids (content identity, stable under reordering)."""
    out = defaultdict(Counter)
    for s in samples:
        out[s.group_key(group_by)][s.uid] += 1
    return dict(out)


def per_record_content(samples):
    """Identify a record by its content (user hash + profile), not by its position in the file."""
    out = defaultdict(Counter)
    for s in samples:
        out[(s.user_hash, s.profile.get("part"))][s.uid] += 1
    return dict(out)


# --------------------------------------------------------------------------- basic promises

@SETTINGS
@given(corpora(), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_at_most_n_per_character_and_small_ones_keep_all(records, n, seed):
    samples = extract_samples(records).samples
    chosen = sample_per_character(samples, n, seed)
    have = Counter(s.user_hash for s in samples)
    got = Counter(s.user_hash for s in chosen)
    for h, c in have.items():
        assert got[h] == min(c, n)
        if c <= n:
            assert {s.sample_id for s in chosen if s.user_hash == h} == {s.sample_id for s in samples if s.user_hash == h}
    ids = [s.sample_id for s in chosen]
    assert len(ids) == len(set(ids))
    # kept in input order: a subsequence of the input
    pos = {s.sample_id: i for i, s in enumerate(samples)}
    assert [pos[i] for i in ids] == sorted(pos[i] for i in ids)


@SETTINGS
@given(corpora(), st.integers(0, 1000))
def test_none_keeps_everything(records, seed):
    samples = extract_samples(records).samples
    assert [s.sample_id for s in sample_per_character(samples, None, seed)] == [s.sample_id for s in samples]
    assert [s.sample_id for s in sample_per_character(samples, None, seed, "record")] == [s.sample_id for s in samples]


@SETTINGS
@given(corpora(max_items=15), st.integers(0, 2**32 - 1), st.sampled_from(["user_hash", "record"]))
def test_nested_subsets(records, seed, group_by):
    samples = extract_samples(records).samples
    previous = set()
    for n in range(1, 17):
        current = {s.sample_id for s in sample_per_character(samples, n, seed, group_by)}
        assert previous <= current, f"subset for N={n - 1} is not inside subset for N={n}"
        per_group = Counter(s.group_key(group_by) for s in samples if s.sample_id in current)
        for g, c in Counter(s.group_key(group_by) for s in samples).items():
            assert per_group[g] == min(c, n)
        previous = current
    assert previous == {s.sample_id for s in samples}


@SETTINGS
@given(corpora(), st.integers(1, 5), st.integers(0, 2**32 - 1), st.sampled_from(["user_hash", "record"]))
def test_deterministic(records, n, seed, group_by):
    samples = extract_samples(records).samples
    a = [s.sample_id for s in sample_per_character(samples, n, seed, group_by)]
    b = [s.sample_id for s in sample_per_character(list(samples), n, seed, group_by)]
    assert a == b


# --------------------------------------------------------------------------- independence

@SETTINGS
@given(corpora(), st.integers(1, 5), st.integers(0, 2**32 - 1), st.data())
def test_independent_of_other_characters(records, n, seed, data):
    """A character's subset is the same whether or not other characters are in the file."""
    full = by_character(sample_per_character(extract_samples(records).samples, n, seed))
    hashes = sorted({r["user_hash"] for r in records})
    keep = set(data.draw(st.lists(st.sampled_from(hashes), min_size=1, unique=True)))
    alone_records = [r for r in records if r["user_hash"] in keep]
    alone = by_character(sample_per_character(extract_samples(alone_records).samples, n, seed))
    for h in keep:
        assert alone.get(h, Counter()) == full.get(h, Counter())


@SETTINGS
@given(corpora(), st.integers(1, 5), st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_independent_of_file_order(records, n, seed, rnd):
    shuffled = list(records)
    rnd.shuffle(shuffled)
    a = by_character(sample_per_character(extract_samples(records).samples, n, seed))
    b = by_character(sample_per_character(extract_samples(shuffled).samples, n, seed))
    assert a == b


@SETTINGS
@given(corpora(max_records_per_char=3), st.integers(1, 4), st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_independent_of_file_order_when_grouped_by_record(records, n, seed, rnd):
    """Regression test for a fixed bug: with --sample_group_by record the group key is
    `user_hash#r<record index>`, and the index is the record's position in the file, so
    reordering the file changes which samples a record keeps. The guide promises a subset that
    does not depend on file order. Here a record is identified by its content."""
    shuffled = list(records)
    rnd.shuffle(shuffled)
    a = per_record_content(sample_per_character(extract_samples(records).samples, n, seed, "record"))
    b = per_record_content(sample_per_character(extract_samples(shuffled).samples, n, seed, "record"))
    assert a == b


def test_record_grouping_file_order_minimal_repro():
    """Regression test for a fixed bug, the smallest case of the test above: two records of one
    character swapped in the file; each record (same content) should keep the same 2 lines."""
    recs = [record("h", [item([("P", f"q{r}-{i}")], f"a{r}-{i}") for i in range(6)], name="N",
                   profile={"part": r}) for r in range(2)]
    first = per_record_content(sample_per_character(extract_samples(recs).samples, 2, 0, "record"))
    swapped = per_record_content(sample_per_character(extract_samples(recs[::-1]).samples, 2, 0, "record"))
    assert first == swapped


# --------------------------------------------------------------------------- simulated ranks

@SETTINGS
@given(corpora(), st.integers(1, 5), st.integers(0, 2**32 - 1), st.integers(1, 8), st.randoms(use_true_random=False))
def test_same_subset_on_every_rank(records, n, seed, world_size, rnd):
    """Each rank reads the same file, maybe iterating it in another order: all agree."""
    samples = extract_samples(records).samples
    results = []
    for rank in range(world_size):
        mine = list(samples)
        rnd.shuffle(mine)
        results.append(frozenset(s.sample_id for s in sample_per_character(mine, n, seed)))
    assert len(set(results)) == 1
    # and sharding characters over the ranks then merging gives the same set
    hashes = sorted({s.user_hash for s in samples})
    shards = [set(hashes[r::world_size]) for r in range(world_size)]
    merged = set()
    for shard in shards:
        part = [s for s in samples if s.user_hash in shard]
        rnd.shuffle(part)
        merged |= {s.sample_id for s in sample_per_character(part, n, seed)}
    assert merged == set(results[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(max_items=10), st.sampled_from([None, 1, 2, 4]), st.integers(0, 1000), st.integers(2, 4),
       st.randoms(use_true_random=False))
def test_split_identical_on_every_rank(records, n, seed, world_size, rnd):
    samples = extract_samples(records).samples
    outcomes = set()
    for _ in range(world_size):
        mine = list(samples)
        rnd.shuffle(mine)
        split = split_train_val(mine, SplitSettings(n, seed, 0.2))
        outcomes.add((frozenset(s.sample_id for s in split.val),
                      tuple(s.sample_id for s in split.epoch_train(0)),
                      tuple(s.sample_id for s in split.epoch_train(1)),
                      tuple(s.sample_id for s in split.epoch_train(2))))
    assert len(outcomes) == 1


def test_same_subset_in_fresh_interpreters_with_other_hash_seeds(build):
    """No dependence on Python's per-process hash randomisation (each rank is a process)."""
    code = ("import sys; sys.path.insert(0, %r); from conftest import simple_corpus;"
            "from chameleons.corpus.data import extract_samples; from chameleons.corpus.sampling import sample_per_character;"
            "s = extract_samples(simple_corpus([9, 4, 13, 2])).samples;"
            "print(sorted(x.sample_id for x in sample_per_character(s, 3, 7)))") % str(REPO / "tests")
    outs = set()
    for hs in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hs, PYTHONPATH=str(REPO))
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    assert outs.pop().count("'r") == 3 + 3 + 3 + 2


# --------------------------------------------------------------------------- seeds and counts

def test_seed_changes_the_draw(build):
    samples = extract_samples(build.simple_corpus({"big": 40})).samples
    draws = {frozenset(s.sample_id for s in sample_per_character(samples, 5, seed)) for seed in range(6)}
    assert len(draws) > 1


def test_draw_is_not_just_the_first_items(build):
    """A per-character sample, not a head: over many characters some pick later items."""
    samples = extract_samples(build.simple_corpus([20] * 30)).samples
    chosen = sample_per_character(samples, 2, 42)
    assert any(s.sample_id.split(".")[-1] not in ("i0", "i1") for s in chosen)


@SETTINGS
@given(corpora())
def test_sampled_counts_matches_the_rule(records):
    samples = extract_samples(records).samples
    per_hash = Counter(s.user_hash for s in samples)
    per_record = Counter(s.record_index for s in samples)
    for group_by, per in (("user_hash", per_hash), ("record", per_record)):
        counts = sampled_counts(samples, group_by)
        for n in (1, 2, 5, 10):
            assert counts[n] == sum(min(c, n) for c in per.values())
        assert counts["all"] == len(samples)
        for n in (1, 2, 5):
            assert counts[n] == len(sample_per_character(samples, n, 3, group_by))
