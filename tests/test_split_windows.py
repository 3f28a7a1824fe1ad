"""No leak by place at any `max_context_turns` from 1 up (chameleons/corpus/splitting.py).

With a one-turn window a validation sample shows only its last context line and its target;
for generic exchanges ("What?" / "Yeah.") the same pair is said in many unrelated scenes. No
training sample (any epoch, or the pool) may show a validation target right after the same
visible lines, compared by line key, for windows 1, 2, 3 and 20.
"""

from pathlib import Path

import pytest

from chameleons.corpus.conversations import Conversations, line_key
from chameleons.corpus.data import extract_samples
from chameleons.corpus.splitting import SplitSettings, split_train_val
from chameleons.text.prompts import Ablation, PromptBuilder
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]




msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")
CONTEXT_ONLY = Ablation("context_only", False, False, True)


def visible(builder, s):
    return tuple(line_key(c) for _, c in builder.turns(s)) + (line_key(s.target),)


def shown_places(seq, w):
    """Every run of w + 1 consecutive lines a sample shows (its window, then its target)."""
    return {seq[i:i + w + 1] for i in range(max(0, len(seq) - w))}


@pytest.fixture(scope="module")
def generic_corpus():
    return extract_samples(synth.make_scene_corpus(11, *msc._counts(0.02), generic_share=0.35)).samples


@pytest.mark.parametrize("window", [1, 2, 3, 20])
@pytest.mark.parametrize("n", [None, 2])
def test_no_validation_target_at_its_visible_place_in_training(generic_corpus, window, n):
    samples = generic_corpus
    split = split_train_val(samples, SplitSettings(n, 5, 0.1))
    builder = PromptBuilder(CONTEXT_ONLY, "simple", None, window)
    val_places = {visible(builder, s) for s in split.val if s.context}
    assert len(val_places) > 20
    shown = set()
    for s in [t for e in range(3) for t in split.epoch_train(e)] + split.pool_samples():
        shown |= shown_places(visible(builder, s), min(window, len(s.context)))
    assert not val_places & shown
    assert split.stats.lost_to_split <= 0.01 * split.stats.sampled
    assert abs(split.stats.validation_share - 0.1) <= 0.03


def test_without_the_ending_rule_a_one_turn_window_leaks(generic_corpus, monkeypatch):
    """The control: with no rule for final pairs, the same corpus shows validation targets at
    their visible place to training with a one-turn window (so the test above can fail)."""
    def no_endings(self, samples, seqs):
        self.holders, self.ending, self.shared_ending = {}, {}, set()

    monkeypatch.setattr(Conversations, "_endings", no_endings)
    split = split_train_val(generic_corpus, SplitSettings(None, 5, 0.1))
    builder = PromptBuilder(CONTEXT_ONLY, "simple", None, 1)
    val_places = {visible(builder, s) for s in split.val if s.context}
    shown = set()
    for s in split.pool_samples():
        shown |= shown_places(visible(builder, s), min(1, len(s.context)))
    assert val_places & shown
