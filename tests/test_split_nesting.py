"""One validation set per val_seed and corpus, whatever N (chameleons/corpus/splitting.py).

The seed's workflow trains N = 2, then 5, then 10 and scores the smaller model on the larger
one's validation set; that is only fair when no N trains on a line of another N's validation.
Checked over N = 1..k on scene corpora and unique-line corpora, both leak checks: the sampled
sets, the validation sets and every epoch-0 training set are nested, and no training set
meets any validation set.
"""

from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chameleons.corpus.data import extract_samples
from chameleons.corpus.leak_checks import NAMES as LEAK_CHECKS
from chameleons.corpus.leak_checks import named
from chameleons.corpus.sampling import sample_per_character
from chameleons.corpus.splitting import SplitSettings, split_train_val

from conftest import simple_corpus
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]




msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")
SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    phases=[Phase.explicit, Phase.generate])


def ids(samples):
    return {s.sample_id for s in samples}


def assert_nested(samples, k, sample_seed, val_seed, check, ratio=0.1):
    index = named(check).index(samples)
    splits = [split_train_val(samples, SplitSettings(n, sample_seed, ratio, val_seed, leak_check=named(check)), index=index)
              for n in [*range(1, k + 1), None]]
    for small, big in zip(splits, splits[1:]):
        assert ids(sample_per_character(samples, small.max_per_user, sample_seed)) <= \
            ids(sample_per_character(samples, big.max_per_user, sample_seed))
        assert ids(small.val) <= ids(big.val)
        assert ids(small.train) <= ids(big.train)
        assert ids(small.pool_samples()) <= ids(big.pool_samples())
    every_val = set().union(*(ids(sp.val) for sp in splits))
    for sp in splits:
        assert not ids(sp.train) & every_val
        assert not ids(sp.epoch_train(1)) & every_val
        assert sp.stats.lost_to_split == 0 or check == "text"
    return splits


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 100), st.sampled_from([None, 7]), st.sampled_from(LEAK_CHECKS))
def test_training_sets_nested_across_n_on_scene_corpora(corpus_seed, sample_seed, val_seed, check):
    samples = extract_samples(synth.make_scene_corpus(corpus_seed, *msc._counts(0.006))).samples
    assert_nested(samples, 6, sample_seed, val_seed, check)


@SETTINGS
@given(st.lists(st.integers(1, 12), min_size=2, max_size=30), st.integers(0, 100), st.sampled_from(LEAK_CHECKS))
def test_training_sets_nested_across_n_on_unique_lines(counts, seed, check):
    samples = extract_samples(simple_corpus(counts)).samples
    assert_nested(samples, max(counts) + 1, seed, None, check, ratio=0.2)


def test_validation_share_near_val_ratio_at_every_n_on_a_full_size_corpus_slice():
    """Each N's share of the one validation set stays near val_ratio on a corpus with many
    characters (the guard of the dry run checks it for every run)."""
    samples = extract_samples(synth.make_scene_corpus(2, *msc._counts(0.1))).samples
    for sp in assert_nested(samples, 3, 42, None, "conversation"):
        assert abs(sp.stats.validation_share - 0.1) <= 0.02, sp.stats
