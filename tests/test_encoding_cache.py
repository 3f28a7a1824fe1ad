"""The tokenized cache is reused only when everything that shapes the ids is the same."""

import copy

from chameleons.corpus.data import extract_samples
from chameleons.text.encoding import Tokenization, encode_dataset, tokenizer_fingerprint
from chameleons.text.prompts import Ablation, PromptBuilder

from conftest import simple_corpus


def test_cache_key_covers_profile_and_sample_ids(tmp_path, tokenizer):
    records = simple_corpus([3, 2])
    builder = PromptBuilder(Ablation("profile_and_context", True, False, True))
    first = extract_samples(records).samples
    tok = Tokenization(tokenizer, 256, tmp_path, progress=False)
    _, key = encode_dataset(first, builder, tok, ["x"])
    _, again = encode_dataset(extract_samples(copy.deepcopy(records)).samples, builder, tok, ["x"])
    assert again == key
    changed = copy.deepcopy(records)
    changed[0].setdefault("user", {}).setdefault("profile", {})["age"] = 99
    _, other = encode_dataset(extract_samples(changed).samples, builder, tok, ["x"])
    assert other != key
    shifted = [{"user_hash": "empty", "task": {"task_behavior_collections": []}}] + copy.deepcopy(records)
    _, moved = encode_dataset(extract_samples(shifted).samples, builder, tok, ["x"])
    assert moved != key  # same samples, other sample ids (r1..., not r0...)


def test_tokenizer_fingerprint_is_computed_once_and_follows_a_changed_tokenizer(tokenizer):
    """A sweep's runs share one tokenizer: its vocabulary is hashed once, yet a token added or a
    chat template replaced gives another key, and an equal copy the same one."""
    before = tokenizer_fingerprint(tokenizer)
    copy_of = copy.deepcopy(tokenizer)
    assert tokenizer_fingerprint(copy_of) == before

    def no_second_hash():
        raise AssertionError("the vocabulary was read again")

    copy_of.get_vocab = no_second_hash
    assert tokenizer_fingerprint(copy_of) == before
    del copy_of.get_vocab
    copy_of.add_tokens(["<chameleons_test_token>"])
    grown = tokenizer_fingerprint(copy_of)
    assert grown != before
    copy_of.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(copy_of) not in (before, grown)
