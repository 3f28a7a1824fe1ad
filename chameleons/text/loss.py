"""The training loss: token cross-entropy over the supervised tokens only, logits only where needed.

`causal_lm_loss` projects onto the vocabulary (151,936 entries for Qwen3) only at the positions
whose next token is supervised (the character's reply, a few dozen tokens of a sample of
hundreds), instead of materialising `[batch, seq, vocab]` logits for every position.

How: transformers 5 models accept `logits_to_keep` as a boolean `[batch, seq]` mask
(`modeling_utils.slice_logits_to_keep`): the model slices its final hidden states with it before
`lm_head`, returning `[n_kept, vocab]` logits. The call goes through the *outermost* module
(DeepSpeed engine, DDP, PEFT wrapper, or the bare model), so every wrapper's forward logic runs as
usual: DDP's reducer is armed for the backward pass, DeepSpeed ZeRO-3's parameter fetching is
driven by its module hooks (it registers them on every submodule, root included), PEFT adapters
are active. A model whose forward has no `logits_to_keep` falls back to running its decoder and
`lm_head` as submodules (see `_supervised_logits_by_parts`).
"""

import inspect

import torch
import torch.nn.functional as F

from .encoding import IGNORE_INDEX

# A packed batch's sample boundaries as the collator computed them (DataCollatorWithFlattening):
# flash-attention uses them as they are, instead of deriving them from position_ids in every layer.
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def causal_lm_of(model):
    """The Hugging Face causal LM inside DeepSpeed / DDP (`.module`) and PEFT (`get_base_model()`)."""
    m = model
    for _ in range(8):
        inner = getattr(m, "module", None)
        if isinstance(inner, torch.nn.Module):
            m = inner
            continue
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            base = m.get_base_model()
            if base is not m:
                m = base
                continue
        break
    return m


def _accepts(module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def supervised_positions(labels: torch.Tensor):
    """(keep, targets): `keep[b, t]` is True when `labels[b, t + 1]` is supervised; `targets` are
    those labels in the same (row-major) order as `hidden[keep]`."""
    next_labels = labels[:, 1:]
    next_supervised = next_labels != IGNORE_INDEX
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = next_supervised
    return keep, next_labels[next_supervised]


def router_aux_loss(router_logits, config, attention_mask=None):
    """transformers' own Qwen3-MoE load-balancing loss (Switch Transformer eq. 4-6), padding excluded."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    if router_logits is None:
        return None
    aux = load_balancing_loss_func(tuple(router_logits), config.num_experts, config.num_experts_per_tok,
                                   attention_mask)
    return aux if torch.is_tensor(aux) else None


def _supervised_logits_by_parts(model, lm, inputs, keep):
    """Fallback for a causal LM whose forward has no `logits_to_keep`: decoder, gather, `lm_head`.

    Calling submodules directly is safe under DeepSpeed ZeRO-3 (parameters are gathered by hooks
    on each submodule's own forward, not by the top module's), but it bypasses the outermost
    wrapper's forward: under torch DDP that would silently skip the gradient all-reduce, so it
    is refused there.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise RuntimeError("supervised-only logits need a model whose forward accepts logits_to_keep under DDP")
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    out = decoder(**inputs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    logits = lm.get_output_embeddings()(hidden[keep])
    return logits, getattr(out, "router_logits", None)


def _model_inputs(batch, config, want_router) -> dict:
    """What the model's forward gets from a batch: ids, mask or packed positions and offsets."""
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}  # a cache disables packed-sequence masking
    for key in ("attention_mask", "position_ids") + VARLEN_KEYS:
        if batch.get(key) is not None:
            inputs[key] = batch[key]
    if hasattr(config, "output_router_logits"):
        inputs["output_router_logits"] = bool(want_router)
    return inputs


def causal_lm_loss(model, batch, num_items_in_batch=None, router_aux_loss_coef: float = 0.0):
    """(loss, n_supervised_tokens) for a batch from `chameleons.text.batching` (padded or packed).

    loss = sum of fp32 token cross-entropies over the supervised tokens / `num_items_in_batch`,
    or / this batch's supervised count when it is None. With HF Trainer's `num_items_in_batch`
    (the supervised tokens of the whole optimizer step, all accumulation micro-batches and, with
    `average_tokens_across_devices`, all ranks) the micro-batch losses add up to the true mean
    token loss of the step.

    With `router_aux_loss_coef > 0` on an MoE model, adds `coef * aux * n / num_items_in_batch`
    (`coef * aux` when it is None), where `aux` is the micro-batch's load-balancing loss and `n`
    its supervised tokens: summed over a step, that is `coef` times the token-weighted mean aux
    of the step, so the coefficient means the same at any accumulation / world size (the plain
    HF forward instead adds `coef * aux` per micro-batch, i.e. `accumulation x coef`).

    The aux term is added as `term - term.detach()`: it trains the router (same gradient) but
    adds nothing to the returned value, so the logged loss is the mean token loss alone and
    compares with `eval_loss`.

    `n_supervised_tokens` is a 0-dim tensor (no device sync).
    """
    labels = batch["labels"]
    lm = causal_lm_of(model)
    config = lm.config
    keep, targets = supervised_positions(labels)
    n_supervised = keep.sum()

    want_router = router_aux_loss_coef > 0 and getattr(config, "num_experts", None)
    inputs = _model_inputs(batch, config, want_router)
    attention_mask = inputs.get("attention_mask")

    if _accepts(lm, "logits_to_keep"):
        out = model(**inputs, logits_to_keep=keep)
        logits, router_logits = out.logits, getattr(out, "router_logits", None)
    else:
        logits, router_logits = _supervised_logits_by_parts(model, lm, inputs, keep)
    logits = logits.reshape(-1, logits.shape[-1])
    if logits.shape[0] != targets.shape[0]:
        raise RuntimeError(f"{type(lm).__name__} returned {logits.shape[0]} logits for {targets.shape[0]} "
                           "supervised positions: its forward does not support a boolean logits_to_keep")

    token_loss_sum = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else n_supervised.clamp(min=1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(token_loss_sum.device)
    loss = token_loss_sum / denominator

    if want_router:
        aux = router_aux_loss(router_logits, config, attention_mask)
        if aux is not None:
            aux = aux.to(loss.device)
            if num_items_in_batch is not None:
                aux = aux * (n_supervised.to(loss.device) / denominator)
            term = router_aux_loss_coef * aux
            loss = loss + (term - term.detach())
    return loss, n_supervised
