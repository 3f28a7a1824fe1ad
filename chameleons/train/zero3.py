"""ZeRO-3 sizes that follow the model instead of its hidden size, and what checkpoints cost.

transformers fills `auto` ZeRO-3 sizes from `hidden_size` alone (prefetch 0.9 x hidden^2, reduce
bucket hidden^2: 3.8 M and 4.2 M elements for Qwen3-30B-A3B). ZeRO-3 gathers a registered leaf
module (the sparse MoE block: 604 M elements there) as one unit, and DeepSpeed stops adding to a
prefetch once the bucket is full, so with 3.8 M no MoE block is ever fetched ahead of its use.
Here the sizes come from what ZeRO-3 really moves:

- `stage3_prefetch_bucket_size` = the largest unit gathered at once (a leaf module's parameters
  together, any other parameter alone): the next layer's MoE block can be in flight while this
  layer computes.
- `stage3_max_live_parameters` = 3 x that unit: the unit in use, the one prefetched, and room for
  the rest of a layer (DeepSpeed caps a prefetch at max_live minus what is already gathered).
- `stage3_max_reuse_distance` = 2 x that unit: a layer's gather is kept from its recomputation
  (gradient checkpointing) to its backward, which follow each other, and released after the
  forward, whose next use is a whole model's worth of gathers away. (For Qwen3-30B-A3B this is
  what the former fixed 1e9 did; for a small model 1e9 would keep everything gathered, so a small
  benchmark would not show the big model's traffic.)
- `reduce_bucket_size` = the largest parameter: every gradient fits the contiguous reduce buffer,
  and a layer's small gradients leave in one reduce-scatter instead of a call each.

Only keys set to `auto` are filled; a number in the DeepSpeed config wins.
"""

import os
import traceback
from contextlib import contextmanager

from ..core.errors import UserError
from ..core.sources import hub_offline


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # the full size also once ZeRO-3 has partitioned it


def gather_units(model) -> list:
    """Elements of every unit ZeRO-3 gathers at once: each leaf module's parameters together,
    every other parameter alone (tied weights counted once)."""
    from deepspeed.utils import z3_leaf_module

    units, inside = [], set()
    for module in model.modules():
        if z3_leaf_module(module) and not any(id(p) in inside for p in module.parameters()):
            params = {id(p): p for p in module.parameters()}
            inside.update(params)
            units.append(sum(_numel(p) for p in params.values()))
    seen = set(inside)
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            units.append(_numel(p))
    return units


def model_sizes(model) -> dict:
    unit = max(gather_units(model))
    largest_param = max(_numel(p) for p in model.parameters())
    return {"stage3_prefetch_bucket_size": unit, "stage3_max_live_parameters": 3 * unit,
            "stage3_max_reuse_distance": 2 * unit, "reduce_bucket_size": largest_param}


def fill_auto(ds_config: dict, model, one_node: bool = True) -> dict:
    """Sets the `auto` sizes of a ZeRO-3 config dict in place (before HF Trainer fills the rest
    from the hidden size); returns what it set. `pipeline_loading_checkpoint` (a resume loads
    one rank's states at a time instead of all of a node's at once) is on for a one-node run
    only: DeepSpeed 0.19.8 hands the turn from a node's last rank to the next node's first,
    which does not wait for it."""
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage") != 3:
        return {}
    filled = {k: v for k, v in model_sizes(model).items() if zero.get(k) == "auto"}
    if zero.get("pipeline_loading_checkpoint") == "auto":
        filled["pipeline_loading_checkpoint"] = one_node
    zero.update(filled)
    return filled


def model_config(model_cfg):
    """The configured model's transformers config: from `random_init`, its local folder or the
    Hugging Face cache, else (a hub id not downloaded yet, the hub reachable) its config.json
    fetched alone, as training will fetch it with the weights; None when none of these has it.
    The dry run and training read it the same way, so they plan the same expert parallelism and
    token budget."""
    from transformers import AutoConfig

    try:
        if model_cfg.random_init:
            spec = dict(model_cfg.random_init)
            return AutoConfig.for_model(spec.pop("model_type"), **spec)
        with remote_code_errors(model_cfg):
            try:
                return AutoConfig.from_pretrained(model_cfg.name_or_path, local_files_only=True,
                                                  trust_remote_code=model_cfg.trust_remote_code)
            except OSError:
                if os.path.isdir(model_cfg.name_or_path) or hub_offline():
                    raise
                return AutoConfig.from_pretrained(model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None


def unread_config_notice(model_cfg) -> str | None:
    """What the plan assumes when the model's config cannot be read anywhere (None when it can)."""
    if model_cfg.random_init or model_config(model_cfg) is not None:
        return None
    return (f"model.name_or_path {model_cfg.name_or_path}: its config could not be read (not on this machine, and "
            f"the hub did not serve it), so the run is planned without it: expert parallelism off, no token budget "
            f"from the memory model (max_tokens_per_micro_batch 'auto' leaves micro-batches unsplit), no memory or "
            f"checkpoint figures; download the model (or its config.json) first to plan with it")


@contextmanager
def remote_code_errors(model_cfg):
    """With `trust_remote_code`, an exception raised by the model folder's own code is one error
    line naming the file and line it came from, not a traceback."""
    try:
        yield
    except Exception as exc:
        if not model_cfg.trust_remote_code or isinstance(exc, (OSError, ValueError, KeyError)):
            raise
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise UserError(f"{model_cfg.name_or_path}: the model's own code failed in {frame.filename}, line "
                        f"{frame.lineno} ({type(exc).__name__}: {exc})") from None


def model_facts(model_cfg):
    """(transformers config, parameter count) of the configured model, built on the meta device by
    its class itself (not through `from_config`, which would partition it with zero.Init once a
    ZeRO-3 run has started); None when its config is not on this machine or its class is not one
    transformers ships."""
    import torch
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = model_config(model_cfg)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
    except (OSError, ValueError, KeyError):
        return None
    return config, sum(p.numel() for p in model.parameters())


def parameter_count(model_cfg):
    facts = model_facts(model_cfg)
    return None if facts is None else facts[1]


def checkpoint_cost(n_params, zero_stage, save_total_limit: int, world_size: int = 1,
                    ranks_per_node: int = None, weights_only: bool = True) -> dict:
    """Disk and host RAM of the run's saves, in bytes, for bf16 training (as on GPUs); see
    chameleons/train/saves.py for what each save holds.

    ZeRO-3: an evaluation-time save holds every rank's bf16 weight partition (2 bytes per
    parameter in all); a resumable one adds the fp32 master weights and AdamW's two moments (12).
    ZeRO-1/2 (every save resumable): the same states plus the bf16 model. No DeepSpeed: the bf16
    model, plus AdamW's bf16 moments when resumable. Kept at most: the newest resumable one, the
    best and the newest others up to `save_total_limit`, and the final bf16 model (under ZeRO-3
    every rank holds and writes its share: `export`; otherwise rank 0 the whole). Host RAM per node: a ZeRO-3 save copies at most each rank's
    share (torch.save moves one storage at a time to the host, so usually far less); a
    resume loads one rank's states at a time (DeepSpeed's pipelined loading, one node) and the
    best-model restore each rank's weight partition."""
    if n_params is None:
        return None
    ranks_per_node = ranks_per_node or world_size
    zero3 = zero_stage == 3
    states, model = (12, 0) if zero3 else (12, 2) if zero_stage in (1, 2) else (4, 2)
    full = (states + (2 if zero3 else model)) * n_params
    light = 2 * n_params if weights_only and zero_stage not in (1, 2) else full
    kept_light = max(0, save_total_limit - 1)  # the best and the newest others, beside the newest resumable one
    node_share = ranks_per_node / world_size if zero3 else 1
    return {"parameters": n_params, "zero_stage": zero_stage, "checkpoint_bytes": full,
            "evaluation_checkpoint_bytes": light, "kept": save_total_limit, "final_model_bytes": 2 * n_params,
            "disk_bytes": full + kept_light * light + 2 * n_params,
            "host_ram_bytes_save_node": int(full * node_share),
            "host_ram_bytes_resume_node": int(full / world_size) if zero3 else full,
            "host_ram_bytes_best_restore_node": int(light * node_share),
            "host_ram_bytes_export_node": int(2 * n_params * node_share)}
