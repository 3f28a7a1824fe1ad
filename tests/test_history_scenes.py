"""History lines (`use_history`) on film-shaped corpora with the true identity of every line
tracked (tools/make_synthetic_corpus.py, --truth): no sample, training or validation, is shown
a line of its own scene (so none said after its target), also when scenes are copied under new
ids, re-normalised, split across records or reordered."""


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleons.corpus.data import extract_samples
from chameleons.corpus.leak_checks import named
from chameleons.corpus.splitting import SplitSettings, split_train_val
from chameleons.text.prompts import MAX_HISTORY_CHARS, HistoryIndex
from conftest import load_tool



msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")

NOISE = dict(duplicate_films=0.2, renormalise=0.3, split_records=0.2, reorder=0.2)


def corpus(seed, scale, noise):
    places = {}
    records = synth.make_scene_corpus(seed, *msc._counts(scale), places=places)
    records, truth = synth.make_adversarial(records, places, seed, **noise)
    samples = extract_samples(records).samples
    return samples, synth.line_ids_by_sample(truth, samples)


def own_scene_lines(split, history, samples, ids, epochs=range(2)):
    """(samples shown, shown a line only their own scene holds, ... said after their target)."""
    by_line = {}
    for p in split.pool_samples():
        by_line.setdefault((p.user_hash, p.target[:MAX_HISTORY_CHARS]), []).append(ids[p.sample_id][-1])
    shown = {s.sample_id: s for e in epochs for s in split.epoch_train(e)} | {s.sample_id: s for s in split.val}
    own = later = 0
    for s in shown.values():
        target = ids[s.sample_id][-1]
        scene = target // synth.SCENE_STRIDE
        for line in history.lines_for(s):
            sources = by_line[(s.user_hash, line)]
            if all(x // synth.SCENE_STRIDE == scene for x in sources):
                own += 1
                later += all(x > target for x in sources)
    return len(shown), own, later


@pytest.mark.parametrize("noise", [{}, NOISE], ids=["clean", "noisy"])
def test_no_history_line_from_the_own_scene(noise):
    samples, ids = corpus(3, 0.01, noise)
    split = split_train_val(samples, SplitSettings(None, 1, 0.1))
    shown, own, later = own_scene_lines(split, HistoryIndex.for_pool(split.pool_samples(), samples, split.index), samples, ids)
    assert shown > 500 and (own, later) == (0, 0)
    # the control: the pool alone (the old rule) shows training samples their own scene
    _, own_old, later_old = own_scene_lines(split, HistoryIndex(split.pool_samples()), samples, ids)
    assert own_old > shown and later_old > 0.2 * own_old


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.sampled_from([None, 1, 3]), st.sampled_from(["conversation", "text"]),
       st.fixed_dictionaries({k: st.sampled_from([0.0, 0.3]) for k in NOISE}))
def test_no_history_line_from_the_own_scene_any_split(corpus_seed, n, leak_check, noise):
    samples, ids = corpus(corpus_seed, 0.005, noise)
    split = split_train_val(samples, SplitSettings(n, 7, 0.15, leak_check=named(leak_check)))
    _, own, later = own_scene_lines(split, HistoryIndex.for_pool(split.pool_samples(), samples, split.index), samples, ids, range(3))
    assert (own, later) == (0, 0)


def test_history_never_repeats_the_samples_own_lines_retyped(build):
    """A line of the sample's own dialogue or its target, written with other case, spacing or
    final punctuation, is not shown as history (prediction samples have no conversation label)."""
    own = [build.item([("Bob", "Where were you?")], "At home, Bob."),
           build.item([("Bob", "At  home?")], "where were you")]
    other = [build.item([("Bob", f"q{i}")], f"Line {i}.") for i in range(3)]
    samples = extract_samples([build.record("A", own + other, name="Ann")]).samples
    history = HistoryIndex(samples)
    first = history.lines_for(samples[0])  # its context "Where were you?" is the other's target
    assert sorted(first) == ["Line 0.", "Line 1.", "Line 2."]
    assert sorted(history.lines_for(samples[1])) == ["At home, Bob.", "Line 0.", "Line 1.", "Line 2."]
