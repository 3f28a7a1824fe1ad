"""`sdpa_varlen`: SDPA run per sample on a packed row, as flash-attention's varlen kernel does.

Stock SDPA on a packed row computes the full (sum of lengths)^2 masked attention, which eats the
padding saving; here each sample attends only to itself, block by block on the diagonal. Rows
that are not packed (padded batches) go to stock SDPA unchanged.

This runs packed batches wherever flash-attention 2 does not: on CPU, and on a GPU without a
usable flash-attn (`chameleons.train.model_setup.choose_attention`). Not flex_attention there: it
compiles in every process and again when training and evaluation switch, and its backward on
packed rows has never run here (no CPU kernel in torch 2.13); this path's forward and backward
are what every CPU test trains with, need no compile, and each sample's call is PyTorch's fused
SDPA kernel. Its cost is one call per sample per layer, and one host read of the sample bounds
per forward (cached across the layers, which all get the same offsets tensor).
"""

import torch
import torch.nn.functional as F

from ..core.batching_kinds import SDPA_VARLEN as NAME

_last_bounds = [(None, None)]  # [(offsets or positions tensor, its bounds)]: one read per forward, not per layer


def _sample_bounds(position_ids, cu_seq_lens=None):
    """Start offsets of the samples of a packed row (the collator's cumulative lengths, else where
    the positions restart at 0), or None. Read from the device once per tensor: every layer of a
    forward gets the same one."""
    source = cu_seq_lens if cu_seq_lens is not None else position_ids
    seen, bounds = _last_bounds[0]  # one read of the pair: a thread switch cannot mix two batches
    if source is not None and seen is source:
        return bounds
    bounds = _read_bounds(position_ids, cu_seq_lens)
    _last_bounds[0] = (source, bounds)
    return bounds


def _read_bounds(position_ids, cu_seq_lens):
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    if cu_seq_lens is not None:
        bounds = cu_seq_lens.tolist()
        return bounds if len(bounds) > 2 and bounds[-1] == position_ids.shape[1] else None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return starts + [position_ids.shape[1]]


def sdpa_varlen_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention interface: five positional arguments, the rest (`scaling`,
    `position_ids`, the packed batch's `cu_seq_lens_q`...) as keywords."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids, scaling = kwargs.get("position_ids"), kwargs.get("scaling")
    bounds = _sample_bounds(position_ids, kwargs.get("cu_seq_lens_q"))
    if bounds is None or query.shape[2] != position_ids.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    out = torch.cat([F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                    is_causal=True, scale=scaling)
                     for a, b in zip(bounds[:-1], bounds[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def register():
    """Make `attn_implementation="sdpa_varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
