"""The final model as Hugging Face writes it (`AutoModelForCausalLM.from_pretrained(run_dir)`),
written by every rank under ZeRO-3 instead of gathered on rank 0.

Why not the libraries': DeepSpeed's consolidated 16-bit save (what HF Trainer calls) assembles
the whole model in rank 0's host RAM (57 GiB for Qwen3-30B-A3B) and writes it alone while the
other ranks wait, and raises NotImplementedError for AutoEP layers. Here each rank owns whole
decoder layers (layer i: rank i mod world; the embeddings, final norm and head: the last rank)
and writes them as one safetensors shard; rank 0 writes the index and the config. Every tensor
is still gathered by all ranks (ZeRO-3 has no gather to one rank), but each keeps only its own
share: host RAM per rank is about 2 bytes a parameter / world in bf16."""

import json
import re
from pathlib import Path

import torch

from . import expert_parallel, initial_weights

INDEX = "model.safetensors.index.json"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def owner(name: str, world: int) -> int:
    """The rank that writes this tensor: a decoder layer's whole on one rank (AutoEP's expert
    names map back per layer), everything else on the last."""
    found = _LAYER.search(name)
    return int(found.group(1)) % world if found else world - 1


def shard_names(world: int, ranks_with_tensors) -> dict:
    """rank -> its shard's file name, numbered over the ranks that hold tensors (HF's pattern)."""
    ranks = sorted(ranks_with_tensors)
    return {r: f"model-{k + 1:05d}-of-{len(ranks):05d}.safetensors" for k, r in enumerate(ranks)}


def own_state(model, rank: int, world: int) -> dict:
    """This rank's tensors whole, under transformers' names (experts fused, all of them).
    Collective: every parameter is gathered on every rank in the same order."""
    import deepspeed

    layers = expert_parallel.autoep_layers(model)
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), (p, []))[1].append(name)
    state = {}
    for p, names in by_id.values():
        with deepspeed.zero.GatheredParameters([p]):
            whole = expert_parallel.all_experts(layers, names[0], p.data)
            if owner(names[0], world) == rank:
                whole = whole.detach().to("cpu", copy=True)
                state.update({n: whole for n in names})
    for name, buffer in initial_weights.persistent_buffers(model).items():
        if owner(name, world) == rank:
            state[name] = buffer.detach().to("cpu", copy=True)
    state = expert_parallel.to_hf_names(state, {k: v for k, v in layers.items() if owner(k + ".", world) == rank})
    return hf_layout(model, state)


def hf_layout(model, state: dict) -> dict:
    """What `save_pretrained` writes of these tensors: tied aliases dropped (the name the model
    expects kept), transformers' load-time conversions reverted (fused experts back to one tensor
    per expert), as it does per shard; a layer's tensors are all in one state here."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(state, model))
    return {k: v.contiguous() for k, v in state.items()}


def save_sharded(model, output_dir, rank: int, world: int) -> Path:
    """Every rank writes its shard; rank 0 then the index and the config (collective)."""
    from safetensors.torch import save_file

    state = own_state(model, rank, world)
    listing = [None] * world
    torch.distributed.all_gather_object(listing, sorted((k, v.numel() * v.element_size()) for k, v in state.items()))
    names = shard_names(world, [r for r, keys in enumerate(listing) if keys])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if state:
        save_file(state, str(out / names[rank]), metadata={"format": "pt"})
    if rank == 0:
        weight_map = {k: names[r] for r, keys in enumerate(listing) for k, _ in keys}
        total = sum(size for keys in listing for _, size in keys)
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                             "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        model.config.save_pretrained(out)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(out)
    torch.distributed.barrier()
    return out
