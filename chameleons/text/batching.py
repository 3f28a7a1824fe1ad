"""Micro-batches for training: padded, length-grouped or packed (padding-free).

Every mode trains on the same samples per micro-batch (the sampler hands the collator
`batch_size` rows); only the layout differs, so steps per epoch and samples per step are
identical across modes and the saving is the padding.

- `padded`: rows right-padded to the longest row of the micro-batch, with an attention mask.
- `length_grouped`: the same collator; the Trainer's length-grouped sampler puts rows of similar
  length together (see `trainer_args_for_batching`).
- `packed`: the micro-batch's rows concatenated into one row `[1, total_tokens]` by transformers'
  `DataCollatorWithFlattening`, `position_ids` restarting at 0 for every sample, no attention
  mask, and the samples' cumulative lengths (`cu_seq_lens_q/k`, `max_length_q/k`).
  flash-attention runs varlen on those; eager/sdpa/flex find the sample boundaries from the
  position ids (`masking_utils.find_packed_sequence_indices`) and mask across them;
  `sdpa_varlen` (chameleons/train/attention.py) runs SDPA per sample. No token attends across samples.
  See `check_packing_supported`.

Labels come from `encoding.build_labels` (the one place that decides which token is supervised;
the collators only pad or concatenate them, the loss shifts). It ignores the first token of every
sample, so no label crosses a sample boundary in a packed row, and the Trainer's
`num_items_in_batch` count (`labels[..., 1:] != -100`) equals the supervised count.
"""

from dataclasses import dataclass

import torch

from ..core.batching_kinds import BATCHING_KINDS, PACKING_ATTENTION
from ..core.errors import UserError
from .encoding import IGNORE_INDEX, build_labels


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
    """transformers' `DataCollatorWithFlattening` with labels from `encoding.build_labels`: the
    micro-batch as one row `[1, total_tokens]`, `position_ids` restarting per sample, and the
    varlen keys (`cu_seq_lens_q/k`, `max_length_q/k`) computed here, on the host, once per
    micro-batch; the loss passes them to the model, so flash-attention does not derive them from
    the position ids, with a host sync, in every layer.

    No `attention_mask`: its presence would turn off transformers' packed-sequence detection,
    which eager, sdpa and flex attention use. The model must run with `use_cache=False` (a cache
    also turns the detection off; the loss in `chameleons.text.loss` passes it).
    """

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=True)

    def __call__(self, features) -> dict:
        return self.flatten([{"input_ids": ids, "labels": build_labels(ids, prompt_len)}
                             for ids, prompt_len in _rows(features)])


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


def epoch_order(n: int, samples_per_step: int, seed: int, epoch: int, lengths=None, group_size: int = None) -> list:
    """Row order of one epoch, a function of the seed, the epoch and the samples per optimizer
    step only: a permutation (the one accelerate's seedable sampler draws, or transformers' length
    grouping when `lengths` are given), cycled to a whole number of optimizer steps. Without the
    padding, the Trainer's last step of an epoch holds what is left for 4 x 4 but a wrapped
    16-row micro-batch for 16 x 1, and the runs part from there on."""
    if n == 0:
        return []
    g = torch.Generator()
    if lengths is None:
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g.manual_seed(seed * 1_000_003 + epoch)
        order = get_length_grouped_indices(list(lengths), group_size, generator=g)
    total = -(-n // samples_per_step) * samples_per_step
    return [order[i % n] for i in range(total)]


class EpochSampler(torch.utils.data.Sampler):
    """Each epoch's rows in `epoch_order`, for every batching mode (replaces the Trainer's
    RandomSampler and LengthGroupedSampler, whose last step depends on the micro-batch layout).

    `lengths()` (length-grouped batching) returns the current length of every item of `dataset`,
    read afresh each epoch (the rows change with resampling; the stock sampler keeps epoch 0's).
    Every rank draws the same order, as accelerate's sharding requires. `group_size` is HF
    Trainer's length-grouping megabatch: `train_batch_size * gradient_accumulation_steps`.
    """

    def __init__(self, dataset, samples_per_step: int, seed: int = 0, lengths=None, group_size: int = None):
        self.dataset = dataset
        self.samples_per_step = samples_per_step
        self.seed = seed
        self.lengths = lengths
        self.group_size = group_size
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return -(-len(self.dataset) // self.samples_per_step) * self.samples_per_step

    def __iter__(self):
        lengths = None
        if self.lengths is not None:
            lengths = list(self.lengths())
            if len(lengths) != len(self.dataset):
                raise ValueError(f"lengths() gave {len(lengths)} lengths for {len(self.dataset)} items")
        # The dataset's epoch when it has one: after a mid-epoch resume accelerate wraps the
        # sampler so that its set_epoch is never called, while the dataset always learns its epoch.
        epoch = getattr(self.dataset, "epoch", None)
        epoch = self.epoch if epoch is None else int(epoch)
        return iter(epoch_order(len(self.dataset), self.samples_per_step, self.seed, epoch, lengths, self.group_size))


def budget_parts(lengths, budget: int) -> list:
    """Sample counts of the fewest consecutive parts of a packed micro-batch that each hold at most
    `budget` tokens (greedy; a sample is never cut, and none is longer than the budget)."""
    parts, tokens = [], 0
    for n in lengths:
        if parts and tokens + n <= budget:
            parts[-1] += 1
            tokens += n
        else:
            parts.append(1)
            tokens = n
    return parts or [0]


def exact_parts(lengths, budget: int, k: int) -> list:
    """`k` consecutive parts (sample counts), each within `budget`: the fewest parts, then the part
    with the most tokens halved until there are `k`. Every rank must run as many micro-batches as
    the one that needs most, or ZeRO-3's parameter gathers would not line up."""
    parts = budget_parts(lengths, budget)
    if not len(parts) <= k <= max(1, len(lengths)):
        raise ValueError(f"cannot cut {len(lengths)} samples into {k} parts within {budget} tokens")
    while len(parts) < k:
        bounds = [sum(parts[:i]) for i in range(len(parts) + 1)]
        tokens = [sum(lengths[a:b]) if b - a > 1 else -1 for a, b in zip(bounds, bounds[1:])]
        i = tokens.index(max(tokens))
        a, b = bounds[i], bounds[i + 1]
        run, cut = 0, a + 1  # the sample boundary nearest the part's token midpoint, one sample at least each side
        for j in range(a, b - 1):
            run += lengths[j]
            if run * 2 <= tokens[i]:
                cut = j + 1
        parts[i:i + 1] = [cut - a, b - cut]
    return parts


@dataclass(frozen=True)
class BatchMeta:
    """A training micro-batch's `meta`: its dataset rows and each sample's tokens and supervised
    tokens, as plain lists (no device copies, no syncs)."""

    rows: list
    lengths: list
    supervised: list

    def part(self, first: int, last: int) -> "BatchMeta":
        return BatchMeta(self.rows[first:last], self.lengths[first:last], self.supervised[first:last])


def split_packed(batch: dict, parts: list) -> list:
    """A packed micro-batch (with its `meta`) cut between samples into consecutive micro-batches
    of `parts[i]` samples. Labels need no change: `build_labels` already ignores every sample's
    first token."""
    lengths = batch["meta"].lengths
    out, first = [], 0
    for count in parts:
        last = first + count
        a, b = sum(lengths[:first]), sum(lengths[:last])
        part = {k: v[:, a:b] for k, v in batch.items() if k in ("input_ids", "position_ids", "labels")}
        if "cu_seq_lens_q" in batch:
            own = [n for n in lengths[first:last] if n > 0]
            cu = torch.tensor([0] + own, dtype=batch["cu_seq_lens_q"].dtype).cumsum(0)
            part["cu_seq_lens_q"] = part["cu_seq_lens_k"] = cu.to(batch["cu_seq_lens_q"].device)
            part["max_length_q"] = part["max_length_k"] = max(own)
        part["meta"] = batch["meta"].part(first, last)
        out.append(part)
        first = last
    return out


def split_to_budget(batch: dict, budget, device=None) -> list:
    """The micro-batch as it must run within `budget` tokens: itself, or consecutive parts of it,
    as many on every rank (one all-reduce of two integers agrees on the count)."""
    if budget is None or "meta" not in batch:
        return [batch]
    lengths = batch["meta"].lengths
    need, fewest_samples = len(budget_parts(lengths, budget)), len(lengths)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([need, -fewest_samples], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        need, fewest_samples = agreed[0].item(), -agreed[1].item()
    if need == 1:
        return [batch]
    if need > fewest_samples:
        raise RuntimeError(f"a rank's micro-batch needs {need} parts within {budget} tokens but another rank has only "
                           f"{fewest_samples} samples: ranks must get micro-batches of equal size")
    return split_packed(batch, exact_parts(lengths, budget, need))


@dataclass(frozen=True)
class StepShape:
    """How an optimizer step is cut: rows per micro-batch, ranks, micro-batches per rank."""

    batch_size: int
    world_size: int
    grad_accum: int


def micro_batch_plan(lengths, shape: StepShape, packed: bool, budget=None, seed: int = 0) -> dict:
    """Tokens per micro-batch and micro-batches per optimizer step over one shuffled epoch, cut as
    the trainer cuts it (consecutive `batch_size` rows, dealt to the ranks in turn, `grad_accum`
    per rank per step), before and after the budget split. Packed micro-batches count their real
    tokens, padded ones rows x longest row. For the dry run: epoch 0 in the trainer's order
    (`epoch_order`; length grouping is not modelled)."""
    batch_size, world_size, grad_accum = shape.batch_size, shape.world_size, shape.grad_accum
    order = epoch_order(len(lengths), batch_size * world_size * grad_accum, seed, 0)
    batches = [[lengths[i] for i in order[a:a + batch_size]] for a in range(0, len(order), batch_size)]
    tokens = sorted(sum(b) if packed else len(b) * max(b) for b in batches)
    per_step, after, over = [], [], 0
    group = world_size * grad_accum
    for s in range(0, len(batches), group):
        step = batches[s:s + group]
        runs = 0
        for slot in range(0, len(step), world_size):  # one micro-batch per rank, run in lockstep
            ranks = step[slot:slot + world_size]
            need = max(len(budget_parts(b, budget)) for b in ranks) if packed and budget else 1
            runs += need
            for b in ranks:
                over += bool(packed and budget and sum(b) > budget)
                parts = exact_parts(b, budget, need) if need > 1 else [len(b)]
                bounds = [sum(parts[:i]) for i in range(len(parts) + 1)]
                after.extend(sum(b[x:y]) if packed else len(b) * max(b) for x, y in zip(bounds, bounds[1:]))
        per_step.append(runs)
    per_step.sort()
    return {
        "packed": packed,
        "budget": budget if packed else None,
        "micro_batches": len(batches),
        "tokens_per_micro_batch_median": tokens[(len(tokens) - 1) // 2] if tokens else 0,
        "tokens_per_micro_batch_max": tokens[-1] if tokens else 0,
        "over_budget": over,
        "tokens_per_micro_batch_max_after_split": max(after) if after else 0,
        "micro_batches_per_step_median": per_step[(len(per_step) - 1) // 2] if per_step else 0,
        "micro_batches_per_step_max": per_step[-1] if per_step else 0,
    }


def count_padding(batch) -> tuple:
    """(real tokens, tokens computed) of a collated micro-batch."""
    computed = batch["input_ids"].numel()
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else computed
    return real, computed
