"""The conversation split on messy copies of a scene corpus (chameleons/corpus/splitting.py).

The corpora come from `tools/make_synthetic_corpus.py --scenes` with the ground truth it
reports (the id of every spoken line), then are made adversarial here, the id of every line
carried along: records copied under new character ids with one uniform transcription change
(lower case, final punctuation dropped, double spaces), records re-normalised in place (the
same scene held differently in two characters' records), records split in two. A leak is a
validation line, by its true id, shown by a training-eligible sample.
"""

import random
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chameleons.corpus import conversations, near_duplicates
from chameleons.corpus.conversations import COMMON_RECORDS, Conversations, line_key
from chameleons.corpus.data import extract_samples
from chameleons.corpus.leak_checks import NAMES as LEAK_CHECKS
from chameleons.corpus.leak_checks import named
from chameleons.corpus.splitting import SplitSettings, split_train_val
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]




msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")

CHANGES = {
    "lower": str.lower,
    "no_final_punct": lambda t: t.rstrip(".?!") or t,
    "double_spaces": lambda t: t.replace(" ", "  "),
    "upper": str.upper,
    "fullwidth_comma": lambda t: t.replace(",", "\uff0c"),
}


def _items(record):
    return record["task"]["task_behavior_collections"][0]["data"]


def _with_text(record, change, new_hash=None):
    out = {**record, "user_hash": new_hash or record["user_hash"]}
    data = [{"context": [{**t, "content": change(t["content"])} for t in it["context"]],
             "continuation": change(it["continuation"])} for it in _items(record)]
    out["task"] = {**record["task"], "task_behavior_collections": [{"data": data}]}
    return out


def edit_words(text):
    """A re-transcription: one word of a line of six or more words replaced, the same word each
    time the line is written (lines are copied into every later item of their scene)."""
    words = text.split()
    if len(words) < 6:
        return text
    k = zlib.crc32(text.encode()) % len(words)
    return " ".join(words[:k] + ["uh" if words[k] != "uh" else "um"] + words[k + 1:])


def messy_corpus(seed, scale=0.01, copy_share=0.15, renorm_share=0.3, split_share=0.2, changes=CHANGES):
    """(records, places): `places[(record, item)]` is the true line ids of each item."""
    places = {}
    records = synth.make_scene_corpus(seed, *msc._counts(scale), places=places)
    rng = random.Random(seed)
    truth = [[places[(r, i)] for i in range(len(_items(rec)))] for r, rec in enumerate(records)]
    out, out_truth = [], []
    for rec, ids in zip(records, truth):
        if rng.random() < renorm_share:
            rec = _with_text(rec, CHANGES[rng.choice(sorted(CHANGES))])
        if rng.random() < split_share and len(ids) >= 2:
            cut = rng.randrange(1, len(ids))
            for part, part_ids in ((slice(0, cut), ids[:cut]), (slice(cut, None), ids[cut:])):
                piece = {**rec, "task": {**rec["task"], "task_behavior_collections": [{"data": _items(rec)[part]}]}}
                out.append(piece)
                out_truth.append(part_ids)
        else:
            out.append(rec)
            out_truth.append(ids)
    for r in rng.sample(range(len(out)), round(copy_share * len(out))):  # copies under new ids
        change = changes[rng.choice(sorted(changes))]
        out.append(_with_text(out[r], change, new_hash=f"copy{r}-{out[r]['user_hash']}"))
        out_truth.append(out_truth[r])
    order = list(range(len(out)))
    rng.shuffle(order)
    return [out[k] for k in order], {(r, i): t for r, k in enumerate(order) for i, t in enumerate(out_truth[k])}


def place_map(samples, places):
    return {s.sample_id: places[(s.record_index, int(s.sample_id.rsplit(".i", 1)[1]))] for s in samples}


def leaked(split, place_of, epochs=range(1), targets_only=False):
    """True ids of validation lines (or only targets) that a training sample or the pool shows."""
    val = {p for s in split.val for p in (place_of[s.sample_id][-1:] if targets_only else place_of[s.sample_id])}
    shown = [s for e in epochs for s in split.epoch_train(e)] + split.pool_samples()
    return {p for s in shown for p in place_of[s.sample_id] if p in val}


def common_ids(samples, place_of):
    """True ids of lines said (by `line_key`) in more than COMMON_RECORDS records."""
    records_of, key_of = {}, {}
    for s in samples:
        for p, line in zip(place_of[s.sample_id], [c for _, c in s.context] + [s.target]):
            key_of[p] = line_key(line)
            records_of.setdefault(line_key(line), set()).add(s.record_index)
    return {p for p, k in key_of.items() if len(records_of[k]) > COMMON_RECORDS}


def test_line_key_folds_transcription_variants():
    variants = ["Well, I never said that!", "well i never said that", "WELL,  I NEVER SAID THAT.",
                "Well\uff0c I never said that\uff01", " well, i never   said that ? "]
    assert len({line_key(v) for v in variants}) == 1
    assert line_key("Café") == line_key("cafe") and line_key("don't") == line_key("dont")
    assert line_key("Yes.") != line_key("No.")
    assert line_key("...") == "..." and line_key("?!") != line_key("...")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.generate])
@given(st.integers(0, 10**6), st.sampled_from([None, 1, 3]), st.integers(0, 100),
       st.sampled_from(LEAK_CHECKS))
def test_no_leak_of_true_lines_on_messy_copies(corpus_seed, n, seed, check):
    """Copies, re-normalised records and split records: no validation line (text screening: no
    validation target) reaches training by its true identity (lines said in many records
    excepted where a huge conversation was cut),
    at the usual cost: validation about val_ratio, nothing lost at N=all by the conversation
    split."""
    records, places = messy_corpus(corpus_seed)
    samples = extract_samples(records).samples
    place_of = place_map(samples, places)
    split = split_train_val(samples, SplitSettings(n, seed, 0.1, leak_check=named(check)))
    bad = leaked(split, place_of, range(3), targets_only=check == "text")
    if split.stats.grouping and split.stats.grouping.huge_conversations_split:
        bad -= common_ids(samples, place_of)
    assert not bad
    if check == "conversation" and n is None:
        assert split.stats.lost_to_split == 0
        assert abs(split.stats.validation_share - 0.1) <= 0.01


@pytest.mark.parametrize("check", LEAK_CHECKS)
def test_exact_text_keys_would_leak_on_the_same_corpus(monkeypatch, check):
    """The control: with lines compared by their exact text the same corpora leak, so the test
    above can fail."""
    monkeypatch.setattr(conversations, "line_key", lambda text: text)
    total = 0
    for corpus_seed in range(3):
        records, places = messy_corpus(corpus_seed)
        samples = extract_samples(records).samples
        split = split_train_val(samples, SplitSettings(None, 1, 0.1, leak_check=named(check)))
        place_of = place_map(samples, places)
        total += len(leaked(split, place_of, targets_only=check == "text") - common_ids(samples, place_of))
    assert total > 0


def _near_duplicate_leaks(samples, place_of, seeds):
    total, merged = 0, 0
    for seed in seeds:
        split = split_train_val(samples, SplitSettings(None, seed, 0.1))
        total += len(leaked(split, place_of) - common_ids(samples, place_of))
        merged = split.stats.grouping.near_duplicate_scenes
    return total, merged


def test_re_transcribed_copies_are_one_conversation(monkeypatch):
    """Records copied under new ids with a word of every longer line replaced: their place keys
    differ from the original's almost everywhere, so only the near-duplicate matching puts
    them in the original's conversation. With it nothing leaks by true identity and the plan
    counts the merged scenes and records; with it switched off the same corpus leaks (the
    control)."""
    records, places = messy_corpus(3, copy_share=0.3, renorm_share=0.0, split_share=0.0,
                                   changes={"edit": edit_words})
    samples = extract_samples(records).samples
    place_of = place_map(samples, places)
    total, merged = _near_duplicate_leaks(samples, place_of, range(4))
    split = split_train_val(samples, SplitSettings(None, 0, 0.1))
    assert total == 0 and merged > 0
    assert 0 < split.stats.grouping.near_duplicate_records <= split.stats.grouping.near_duplicate_scenes
    assert split.stats.lost_to_split == 0 and abs(split.stats.validation_share - 0.1) <= 0.01
    monkeypatch.setattr(near_duplicates, "near_duplicate_joins", lambda *args: [])
    assert _near_duplicate_leaks(samples, place_of, range(4))[0] > 0


def test_clean_scene_corpus_has_few_near_duplicates():
    """Unrelated scenes are not merged: on a clean corpus (whose lines are overlapping slices
    of one word stream, so they share many phrases) hardly any scene is merged this way."""
    samples = extract_samples(synth.make_scene_corpus(4, *msc._counts(0.03))).samples
    index = Conversations(samples)
    assert index.near_duplicate_scenes <= 0.01 * len({s.record_index for s in samples})
