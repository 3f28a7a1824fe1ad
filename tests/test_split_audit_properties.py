"""Property tests of the split, judged by the independent audit (chameleons/text/split_audit.py):
over generated film corpora made messy as real transcriptions are (films copied under new ids,
records re-normalised, split in two, reordered; tools/make_synthetic_corpus.py), no validation
target's normalised text reaches a training prompt, history line or target in any epoch,
except lines said in many unrelated scenes, which the report lists apart.

The corpora have unique random lines (`unique_lines`): by chance the generator repeats a long
random line in two unrelated scenes, which the audit rightly reports and no split by scene can
prevent. The generator's generic lines ("Really?") are common by construction, but in a corpus
of a few hundred items a rare one may be said in just two scenes, one of them at a scene's start
(no line before it, so the audit cannot tell the two apart): such a report is accepted only when
the ground truth (`--truth` ids) shows training another line with those words."""


import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from chameleons.core.config import Ablation
from chameleons.core.errors import UserError
from chameleons.corpus.data import extract_samples
from chameleons.corpus.splitting import SplitSettings, check_validation_share, split_train_val
from chameleons.text.prompts import HistoryIndex, PromptBuilder
from chameleons.text.split_audit import audit_split, normalised
from conftest import load_tool



msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")

ALL_ON = Ablation("profile_and_history_and_context", True, True, True)
SHARE = st.sampled_from([0.0, 0.15, 0.4])
GENERIC = {normalised(g) for g in synth.GENERIC_LINES}


def messy_samples(seed, scale, generic, noise):
    """Samples, and sample id -> the true ids of its lines (context, then target)."""
    places = {}
    records = synth.make_scene_corpus(seed, *msc._counts(scale), generic_share=generic, places=places,
                                    unique_lines=True)
    records, truth = synth.make_adversarial(records, places, seed, **noise)
    samples = extract_samples(records).samples
    return samples, synth.line_ids_by_sample(truth, samples)


def audited(samples, n, seed, val_seed, ratio, turns, epochs=3):
    split = split_train_val(samples, SplitSettings(n, seed, ratio, val_seed))
    builder = PromptBuilder(ALL_ON, "simple", HistoryIndex.for_pool(split.pool_samples(), samples, split.index), turns)
    return split, audit_split(split, builder, samples, epochs)


def unexplained_leaks(split, report, samples, ids, epochs=3):
    """Reported leaks that are not a generic line which, by its true id, training never shows."""
    shown = {x for e in range(epochs) for s in split.epoch_train(e) for x in ids[s.sample_id]}
    shown |= {x for s in split.pool_samples() for x in ids[s.sample_id]}
    by_id = {s.sample_id: s for s in samples}
    return [(v, by_id[v].target) for v in report["leaked_samples"]
            if normalised(by_id[v].target) not in GENERIC or ids[v][-1] in shown]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@example(0, 0.004, 0.0, {"duplicate_films": 0.0, "duplicate_style": "spaces", "renormalise": 0.0, "split_records": 0.4,
                         "reorder": 0.0}, 1, 0, 10, 0.05, 20)  # 24 sampled, none in validation (a run seen in CI)
@given(st.integers(0, 10**6), st.sampled_from([0.004, 0.008]), st.sampled_from([0.0, 0.1, 0.2]),
       st.fixed_dictionaries({"duplicate_films": SHARE, "duplicate_style": st.sampled_from([None, *synth.NOISE_STYLES]),
                              "renormalise": SHARE, "split_records": SHARE, "reorder": SHARE}),
       st.sampled_from([None, 1, 2, 5]), st.integers(0, 1000), st.integers(0, 1000), st.floats(0.05, 0.3),
       st.sampled_from([None, 1, 3, 20]))
def test_no_validation_target_reaches_training_by_normalised_text(corpus_seed, scale, generic, noise, n, seed,
                                                                   val_seed, ratio, turns):
    samples, ids = messy_samples(corpus_seed, scale, generic, noise)
    split, report = audited(samples, n, seed, val_seed, ratio, turns)
    assert report["validation_targets"] == len(split.val)
    if not split.val:  # a small draw can miss the corpus's validation set: training refuses such a split
        with pytest.raises(UserError, match="validation is 0 of"):
            check_validation_share(split, accept=True)
        return
    assert report["leaked_targets"] == len(report["leaked_samples"])
    assert not unexplained_leaks(split, report, samples, ids), (report["examples"][:3], split.stats)


def test_messy_full_mix_figures():
    """One fixed messy corpus, every variant at once: 0 leaks at N = 2 and N = all."""
    noise = dict(duplicate_films=0.1, renormalise=0.3, split_records=0.2, reorder=0.2)
    samples, _ = messy_samples(11, 0.02, synth.GENERIC_SHARE, noise)
    for n in (2, None):
        split, report = audited(samples, n, 42, 42, 0.1, None)
        assert report["leaked_targets"] == 0, (n, report["leaked_targets"], report["examples"][:3])
        assert split.stats.validation > 0
