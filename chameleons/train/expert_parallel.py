"""Expert parallelism for MoE models under ZeRO-3, through DeepSpeed's AutoEP.

Plain ZeRO-3 all-gathers every expert of a layer on every rank for every micro-batch. With AutoEP
each rank of an expert-parallel group keeps `num_experts / size` experts whole and tokens travel to
them by all-to-all: the gathered bytes of the experts disappear. DeepSpeed does the training;
this module decides the size (`training.expert_parallel_size`, filled into the DeepSpeed config's
`"auto"` values), bridges one library incompatibility, and writes the final model back in the
layout transformers saves, with every expert, because DeepSpeed's consolidated ZeRO-3 save refuses
AutoEP layers.
"""

import inspect
import json
import math
from dataclasses import dataclass

from ..core import launch
from ..core.errors import UserError
from .zero3 import model_config

SECTION = "expert_parallel"
# DeepSpeed AutoEP presets whose replaced layers `export.own_state` maps back to transformers' names
SAVABLE = {"qwen3_moe": "qwen3_moe", "qwen2_moe": "qwen3_moe"}
SIZE_KEY = "training.expert_parallel_size"


@dataclass(frozen=True)
class MoeShape:
    """The configured model's type and number of experts: num_experts None for a dense model,
    both None when its config is not on this machine."""

    model_type: str | None = None
    num_experts: int | None = None


def moe_shape(model_cfg) -> MoeShape:
    config = model_config(model_cfg)
    if config is None:
        return MoeShape()
    return MoeShape(config.model_type,
                    getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None))


def resolve(requested: int, zero_stage, world: int, local_world: int, moe: MoeShape, lora: bool) -> dict:
    """The expert-parallel size a run uses: `requested` (0 = the GPUs of a node) where it can run,
    else 1 with the reason. An explicit size above 1 that cannot run is an error."""
    model_type, num_experts = moe.model_type, moe.num_experts
    off = None
    if zero_stage != 3:
        off = "ZeRO-3 only"
    elif model_type is None:
        off = "the model's config is not on this machine"
    elif not num_experts:
        off = "not a MoE model"
    elif model_type not in SAVABLE:
        off = f"no AutoEP preset this trainer saves for model type {model_type!r}"
    elif lora:
        off = "not with LoRA (peft wraps the layers AutoEP replaces)"
    elif world == 1:
        off = "one process"
    elif requested == 1:
        off = f"{SIZE_KEY} is 1"
    if off is None:
        size = math.gcd(local_world, num_experts) if requested == 0 else requested
        if requested > 1 and (world % size or num_experts % size):
            raise UserError(f"{SIZE_KEY} {requested} must divide the world size ({world}) and the number of "
                            f"experts ({num_experts})")
        if size == 1:
            off = "one GPU per node"
    if off is not None:
        if requested > 1:
            raise UserError(f"{SIZE_KEY} {requested}: expert parallelism cannot run here ({off}); set it to 0 or 1")
        return {"enabled": False, "size": 1, "preset": None, "reason": off}
    return {"enabled": True, "size": size, "preset": SAVABLE[model_type],
            "reason": "the GPUs of a node" if requested == 0 else f"{SIZE_KEY} {requested}"}


def autoep_options(on_gpu: bool, size: int) -> dict:
    """AutoEP's faster settings where DeepSpeed 0.19.8 runs them: the gate and up projections as one
    grouped GEMM (also on CPU, same losses); on a GPU with more than one expert-parallel rank the
    all-to-all split sizes copied to the host asynchronously (without it every MoE forward waits
    on the GPU for `.cpu().tolist()`), and the routed outputs combined by the fused Triton kernel
    (qwen3_moe applies its scores after the experts, which that kernel needs; it refuses CPU
    tensors, so not there)."""
    import importlib.util

    fast_gpu = on_gpu and size > 1
    return {"gate_up_impl": "fused", "async_split_plan": fast_gpu,
            "combine_impl": "fused_weighted_sum" if fast_gpu and importlib.util.find_spec("triton") else "weighted_sum"}


def plan_for_run(opts, zero_stage, config, on_gpu: bool = False) -> dict:
    """`resolve` for this run (a dry run counts --nproc_per_node processes on one node) with the
    AutoEP settings it fills in (`autoep_options`); off when the DeepSpeed config has no
    `expert_parallel` section to fill."""
    world = opts.nproc_per_node if opts.dry_run else launch.world_size()
    local_world = opts.nproc_per_node if opts.dry_run else launch.local_world_size()
    moe = moe_shape(config.model) if zero_stage == 3 else MoeShape()
    try:
        plan = resolve(config.training.expert_parallel_size, zero_stage, world, local_world, moe, bool(config.lora))
    except UserError as exc:
        given = [o for o in config.overrides if o.startswith(SIZE_KEY + "=")]
        raise UserError(f"{config.path}{', --set ' + given[-1] if given else ''}: {exc}") from None
    if plan["enabled"] and SECTION not in _read_json(opts.deepspeed):
        plan = {"enabled": False, "size": 1, "preset": None,
                "reason": f"the DeepSpeed config {opts.deepspeed} has no {SECTION!r} section"}
    if plan["enabled"]:
        plan["options"] = autoep_options(on_gpu, plan["size"])
    return plan


RECORD = "expert_parallel.json"


def record(checkpoint_dir, model):
    """Notes in a checkpoint the expert-parallel size its states were sharded with."""
    layers = autoep_layers(model)
    with open(f"{checkpoint_dir}/{RECORD}", "w") as f:
        json.dump({"size": next(iter(layers.values())).ep_size if layers else 1}, f)


def check_resume(checkpoint_dir, plan: dict):
    """A checkpoint's DeepSpeed states only load with the expert-parallel size they were written
    with (0 follows the GPUs of a node, so a resume on other nodes can change it)."""
    if checkpoint_dir is None:
        return
    try:
        with open(f"{checkpoint_dir}/{RECORD}") as f:
            saved = json.load(f)["size"]
    except (OSError, ValueError, KeyError):
        return  # written before expert parallelism existed: trained without it, or not ours to judge
    now = plan["size"] if plan["enabled"] else 1
    if saved != now:
        raise UserError(f"--resume_from_checkpoint {checkpoint_dir}: its states were written with expert parallelism "
                        f"size {saved}, this run would use {now} ({plan['reason']}); resume with "
                        f"--set {SIZE_KEY}={saved} on a world size it divides")


def _read_json(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--deepspeed {path}: {exc}") from None


def fill_auto(ds_config: dict, plan: dict) -> dict:
    """Sets the `auto` values of the DeepSpeed config's `expert_parallel` section in place from
    `plan` (a number or name there wins); DeepSpeed never sees the string "auto", which it would
    read as true. Returns the section as DeepSpeed will read it."""
    section = ds_config.get(SECTION)
    if section is None:
        return {}
    options = plan.get("options") or {}
    resolved = {"enabled": plan["enabled"], "autoep_size": plan["size"], "preset_model": plan["preset"], **options}
    for key in options:  # a key the user's config leaves out is ours to set; one it sets wins
        section.setdefault(key, "auto")
    for key, value in list(section.items()):
        if value == "auto":
            if key not in resolved:
                raise UserError(f"DeepSpeed config: {SECTION}.{key} is 'auto', which only "
                                f"{', '.join(resolved)} may be")
            section[key] = resolved[key]
    return section


def configure(hf_deepspeed_config, plan: dict) -> str:
    """Fills the DeepSpeed config (HF's, before the engine exists) and bridges transformers for
    AutoEP when it will run; returns the log line of what runs."""
    section = fill_auto(hf_deepspeed_config.config, plan) if hf_deepspeed_config is not None else {}
    runs = {"enabled": bool(section.get("enabled")) and section.get("autoep_size", 1) > 1,
            "size": section.get("autoep_size", 1), "preset": section.get("preset_model"),
            "options": {k: section[k] for k in (plan.get("options") or {}) if k in section}}
    if runs["enabled"]:
        bridge_output_capture_registry()
    if (runs["enabled"], runs["size"], runs["options"]) != (plan["enabled"], plan["size"], plan.get("options", {})):
        runs["reason"] = "as the DeepSpeed config sets it"
        return describe(runs)
    return describe(plan)


def describe(plan: dict) -> str:
    if plan["enabled"]:
        options = "".join(f", {k} {v}" for k, v in (plan.get("options") or {}).items())
        return (f"expert parallelism: on, size {plan['size']} (DeepSpeed AutoEP, preset {plan['preset']}; "
                f"{plan['reason']}{options})")
    return f"expert parallelism: off ({plan['reason']})"


def bridge_output_capture_registry():
    """Version bridge, transformers 5.24 with DeepSpeed 0.19.8 AutoEP. DeepSpeed treats
    `transformers.utils.output_capturing._CAN_RECORD_REGISTRY` as a dict keyed by class name and
    calls `get(key, default)`; transformers' `_CanRecordRegistry.get(self, model)` takes a model
    only (TypeError). Applied only while `get` has that one-argument form: string keys then read
    the dict as DeepSpeed expects, anything else goes to transformers' own lookup."""
    from transformers.utils import output_capturing

    registry_class = type(getattr(output_capturing, "_CAN_RECORD_REGISTRY", None))
    original = getattr(registry_class, "get", None)
    if original is None or getattr(original, "bridged", False) or \
            list(inspect.signature(original).parameters) != ["self", "model"]:
        return False

    def get(self, key, *default):
        return dict.get(self, key, *default) if isinstance(key, str) else original(self, key)

    get.bridged = True
    registry_class.get = get
    return True


def autoep_layers(model) -> dict:
    """The AutoEP layers DeepSpeed put in the model, by module name (none when EP did not run)."""
    try:
        from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, AutoEPMoELayer)}


def all_experts(layers: dict, name: str, local):
    """The full [num_experts, ...] tensor of an expert weight from each rank's local experts (the
    placement DeepSpeed recorded on the layer); any other tensor as it is."""
    import torch
    from deepspeed.checkpoint.autoep_affine import autoep_experts_for_rank

    owner = next((layers[k] for k in layers if name.startswith(k + ".experts.")), None)
    if owner is None:
        return local
    shards = [torch.empty_like(local) for _ in range(owner.ep_size)]
    torch.distributed.all_gather(shards, local.contiguous(), group=owner.ep_group)
    whole = local.new_empty((owner.num_experts, *local.shape[1:]))
    for rank, shard in enumerate(shards):
        whole[autoep_experts_for_rank(owner.expert_placement_descriptor, rank)] = shard
    return whole


def to_hf_names(state: dict, layers: dict) -> dict:
    """AutoEP's names back to transformers' Qwen-MoE ones: router.gate -> gate, experts w1/w3
    (gate, up) -> gate_up_proj, w2 -> down_proj, shared_experts -> shared_expert; the router's
    alias under the block's `gate` name is dropped."""
    import torch

    for prefix in layers:
        for key in [k for k in state if k.startswith(prefix + ".gate.")]:
            del state[key]
        experts = prefix + ".experts."
        w1, w2, w3 = (state.pop(experts + w) for w in ("w1", "w2", "w3"))
        state[experts + "gate_up_proj"] = torch.cat([w1, w3], dim=1)
        state[experts + "down_proj"] = w2
        renames = {".router.gate.": ".gate.", ".shared_experts.": ".shared_expert.",
                   ".shared_experts_gate.": ".shared_expert_gate."}
        for key in [k for k in state if k.startswith(prefix + ".")]:
            for old, new in renames.items():
                if key.startswith(prefix + old):
                    state[prefix + new + key[len(prefix + old):]] = state.pop(key)
    return state
