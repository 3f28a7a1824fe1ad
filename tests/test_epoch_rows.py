"""Each epoch's training rows (encoding.EncodedSplit.train_rows): the split's draw
(splitting.Split.epoch_train) over the samples that could be encoded, so a character whose
sample did not fit `max_length` keeps the same number of rows in every epoch."""

from collections import Counter

from chameleons.corpus.data import extract_samples
from chameleons.corpus.splitting import SplitSettings, split_train_val
from chameleons.text.encoding import EncodedSplit

from conftest import simple_corpus


def _encoded(resample=True, unencodable_every=3):
    """The split, and an EncodedSplit over a stand-in dataset (its columns as lists) in which
    every `unencodable_every`-th row has length 0: dropped by the encoder."""
    samples = extract_samples(simple_corpus([9, 7, 12, 5, 10, 8])).samples
    split = split_train_val(samples, SplitSettings(3, 11, 0.2))
    rows = list(split.val) + [s for s in split.pool_samples() if s not in split.val]
    lengths = [0 if i % unencodable_every == 1 else 20 for i in range(len(rows))]
    dataset = {"sample_id": [s.sample_id for s in rows], "length": lengths}
    return split, EncodedSplit(dataset, split, resample)


def test_epoch_zero_is_the_splits_training_set_less_the_dropped_samples():
    split, encoded = _encoded()
    expected = [encoded.row_of[s.sample_id] for s in split.train if s.sample_id in encoded.row_of]
    assert encoded.train_rows(0) == expected
    assert len(expected) < len(split.train)  # some were dropped: the case under test


def test_every_epoch_keeps_each_characters_count_of_encodable_samples():
    split, encoded = _encoded()
    user_of = {encoded.row_of[s.sample_id]: s.user_hash for s in split.pool_samples() if s.sample_id in encoded.row_of}
    per_character = Counter(user_of[r] for r in encoded.train_rows(0))
    epochs = [encoded.train_rows(e) for e in range(1, 5)]
    for rows in epochs:
        assert all(r in user_of for r in rows)  # encodable pool samples only
        assert Counter(user_of[r] for r in rows) == per_character
        assert rows == sorted(rows) and len(set(rows)) == len(rows)
    assert any(set(rows) != set(encoded.train_rows(0)) for rows in epochs)  # later epochs draw afresh


def test_without_resampling_every_epoch_is_epoch_zero():
    _, encoded = _encoded(resample=False)
    assert encoded.train_rows(3) == encoded.train_rows(0)
