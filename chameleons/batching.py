"""Micro-batches for training: padded, length-grouped or packed (padding-free).

Every mode trains on the same samples per micro-batch (the sampler hands the collator
`batch_size` rows); only the layout differs, so steps per epoch and samples per step are
identical across modes and the saving is the padding.

- `padded`: rows right-padded to the longest row of the micro-batch, with an attention mask.
- `length_grouped`: the same collator; the Trainer's length-grouped sampler puts rows of similar
  length together (see `trainer_args_for_batching`).
- `packed`: the micro-batch's rows concatenated into one row `[1, total_tokens]`, `position_ids`
  restarting at 0 for every sample and no attention mask. transformers 5 finds the sample
  boundaries from the position ids (`masking_utils.find_packed_sequence_indices` for
  eager/sdpa/flex, `cu_seqlens` from position ids for flash-attention), so no token attends
  across samples. See `check_packing_supported`.

Labels come from `encoding.build_labels` (the one place that decides which token is supervised;
the collators only pad or concatenate them, the loss shifts). It ignores the first token of every
sample, so no label crosses a sample boundary in a packed row, and the Trainer's
`num_items_in_batch` count (`labels[..., 1:] != -100`) equals the supervised count.
"""

import torch

from .encoding import IGNORE_INDEX, build_labels
from .errors import UserError

BATCHING_KINDS = ("packed", "length_grouped", "padded")

# Attention implementations that keep packed samples apart when there is no attention mask and
# the position ids restart at 0 per sample. eager/sdpa/flex_attention: checked on CPU with a tiny
# Qwen3-MoE (packed logits equal per-sample logits, tests/test_batching_equality.py).
# flash_attention_2/3/4: transformers derives cu_seqlens from the position ids when the batch is
# one row (`modeling_flash_attention_utils._is_packed_sequence` / `prepare_fa_kwargs_from_position_ids`);
# read in the source, not run here (no GPU).
PACKING_ATTENTION = ("eager", "sdpa", "sdpa_varlen", "flex_attention", "flash_attention_2", "flash_attention_3",
                     "flash_attention_4")


def _rows(features):
    rows = []
    for f in features:
        ids = list(f["input_ids"])
        prompt_len = int(f["prompt_len"])
        if not 0 <= prompt_len <= len(ids):
            raise ValueError(f"prompt_len {prompt_len} outside 0..{len(ids)}")
        rows.append((ids, prompt_len))
    if not rows or not any(ids for ids, _ in rows):
        raise ValueError("empty micro-batch: every row has no tokens")
    return rows


class PaddedCollator:
    """Right-pad to the longest row: `input_ids`, `attention_mask`, `labels` (-100 on prompt and padding)."""

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required for padded batches")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features) -> dict:
        rows = _rows(features)
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, prompt_len) in enumerate(rows):
            n = len(ids)
            if n == 0:
                continue
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.tensor(build_labels(ids, prompt_len), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PackedCollator:
    """Concatenate the micro-batch into one row `[1, total_tokens]`; positions restart per sample.

    No `attention_mask`: its presence would turn off transformers' packed-sequence detection.
    The model must run with `use_cache=False` (a cache also turns the detection off; the loss in
    `chameleons.loss` passes it).
    """

    def __call__(self, features) -> dict:
        ids_all, pos_all, labels_all = [], [], []
        for ids, prompt_len in _rows(features):
            ids_all.extend(ids)
            pos_all.extend(range(len(ids)))
            labels_all.extend(build_labels(ids, prompt_len))
        return {
            "input_ids": torch.tensor([ids_all], dtype=torch.long),
            "position_ids": torch.tensor([pos_all], dtype=torch.long),
            "labels": torch.tensor([labels_all], dtype=torch.long),
        }


def make_collator(kind: str, pad_token_id: int = None):
    """The collator for `training.batching`: a callable(list of rows) -> dict of tensors.

    Rows are dicts with `input_ids` (prompt + completion ids) and `prompt_len`; other keys
    (`length`, `sample_id`, ...) are ignored.
    """
    if kind in ("padded", "length_grouped"):
        return PaddedCollator(pad_token_id)
    if kind == "packed":
        return PackedCollator()
    raise ValueError(f"unknown batching {kind!r} (choose from {', '.join(BATCHING_KINDS)})")


def check_packing_supported(attn_implementation) -> None:
    """Raise a UserError when packed batches would let samples attend to each other.

    Pass the model's resolved implementation (`model.config._attn_implementation`); `None` and
    `"auto"` mean transformers' default choice (sdpa, or flash-attention when asked for), both fine.
    """
    if attn_implementation in (None, "auto") or attn_implementation in PACKING_ATTENTION:
        return
    raise UserError(
        f"training.batching 'packed' needs an attention implementation that keeps packed samples apart "
        f"({', '.join(PACKING_ATTENTION)}); {attn_implementation!r} would let every sample attend to the "
        f"samples packed before it. Use model.attn_implementation 'sdpa' or 'flash_attention_2', or "
        f"training.batching 'length_grouped'.")


def trainer_args_for_batching(kind: str) -> dict:
    """TrainingArguments kwargs for a batching mode (transformers 5.24).

    transformers 5 replaced `group_by_length=True` with `train_sampling_strategy="group_by_length"`
    (LengthGroupedSampler over `train_batch_size * gradient_accumulation_steps`), reading the
    precomputed `length` column of a `datasets.Dataset`.

    `remove_unused_columns=False` in every mode: the collators need `prompt_len`, which is not a
    forward argument, and the Trainer removes unused columns *before* building the sampler, so
    with the default the `length` column would be gone too (the sampler would then re-measure
    every row's `input_ids`).
    """
    if kind not in BATCHING_KINDS:
        raise ValueError(f"unknown batching {kind!r} (choose from {', '.join(BATCHING_KINDS)})")
    args = {"remove_unused_columns": False}
    if kind == "length_grouped":
        args.update(train_sampling_strategy="group_by_length", length_column_name="length")
    return args


class LengthGroupedRowSampler(torch.utils.data.Sampler):
    """transformers' length grouping (`get_length_grouped_indices`, as its LengthGroupedSampler),
    over lengths read afresh at the start of every epoch.

    For a training set that is not a `datasets.Dataset` with a `length` column (such as rows that
    change each epoch with resampling), where the stock sampler would index every row once to
    measure `input_ids` and then keep epoch 0's lengths. `lengths()` returns the current length
    of every item of `dataset`, in order. The order depends only on `seed` and the epoch (set by
    accelerate through `set_epoch`), so every rank draws the same one, as sharding requires.
    `group_size` is HF Trainer's: `train_batch_size * gradient_accumulation_steps`.
    """

    def __init__(self, dataset, lengths, group_size: int, seed: int = 0):
        self.dataset = dataset
        self.lengths = lengths
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        lengths = list(self.lengths())
        if len(lengths) != len(self.dataset):
            raise ValueError(f"lengths() gave {len(lengths)} lengths for {len(self.dataset)} items")
        g = torch.Generator()
        # The dataset's epoch when it has one: after a mid-epoch resume accelerate wraps the
        # sampler so that its set_epoch is never called, while the dataset always learns its epoch.
        epoch = getattr(self.dataset, "epoch", None)
        g.manual_seed(self.seed * 1_000_003 + int(self.epoch if epoch is None else epoch))
        return iter(get_length_grouped_indices(lengths, self.group_size, generator=g))


def count_padding(batch) -> tuple:
    """(real tokens, tokens computed) of a collated micro-batch."""
    computed = batch["input_ids"].numel()
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else computed
    return real, computed
