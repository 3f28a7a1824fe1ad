"""Per-GPU memory of training, estimated from the configured model's shape, and the token budget
that `training.max_tokens_per_micro_batch: "auto"` derives from it.

An estimate from byte counts, not a measurement (the formulas are below; README "Memory guard"
gives the figures for Qwen3-30B-A3B). Per GPU, bf16 training:

- states: bf16 weights and gradients, fp32 master weights and AdamW's two fp32 moments, 16 bytes
  per parameter, partitioned as the ZeRO stage partitions them (ZeRO-3: all over the ranks;
  ZeRO-2: all but the weights; ZeRO-1: the optimizer's 12 only). Without DeepSpeed the model,
  its gradients and AdamW's moments are bf16 (8 bytes). LoRA: the frozen bf16 weights only.
- ZeRO-3 gathers: `stage3_max_live_parameters` (3 x the largest unit gathered at once, see
  chameleons/train/zero3.py) in bf16, plus one unit's gathered gradients and the reduce bucket. Under
  expert parallelism a rank gathers only its own experts (`state_bytes`).
- activations per token: with gradient checkpointing every layer keeps its bf16 input, and one
  layer at a time is recomputed and back-propagated (its activations and their gradients, 2x);
  without it every layer keeps its activations. A layer's activations: attention (norm, q, k, v,
  their norms and rotations, the attention output, the projection, the residual) and the MLP (for
  MoE: fp32 router logits and probabilities, and per routed expert its input copy, gate/up,
  activation, product and output).
- logits per supervised token (chameleons/text/loss.py projects only those): bf16 logits, their fp32
  log-softmax and its gradient, and the bf16 gradient: 12 bytes per vocabulary entry.
- reserved: 2 GiB (CUDA context, NCCL buffers) and 10% of the GPU (allocator fragmentation).
"""

from dataclasses import dataclass

GIB = 2 ** 30
DEFAULT_GPU_GIB = 80  # when no GPU is visible (a dry run on a login node): an 80 GB H100/A100
RESERVED_BYTES = 2 * GIB
RESERVED_FRACTION = 0.10
BUDGET_STEP = 128  # the budget is rounded down to a multiple of this


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a transformers config (widths in elements)."""

    parameters: int
    hidden: int
    layers: int
    vocab: int
    q_width: int  # attention heads x head_dim
    kv_width: int  # key/value heads x head_dim
    mlp_width: int  # intermediate width of a dense MLP, or of one expert
    routed: int  # experts per token; 0 for a dense model
    experts: int
    largest_unit: int  # elements ZeRO-3 gathers at once: a whole MoE block, else the largest matrix
    moe_block: int = 0  # elements of one layer's experts (and router)
    largest_matrix: int = 0  # the largest unit when no MoE block is gathered whole (the embedding)


def shape_of(hf_config, parameters: int) -> Shape:
    c = hf_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    experts = getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None) or 0
    routed = getattr(c, "num_experts_per_tok", 0) if experts else 0
    width = getattr(c, "moe_intermediate_size", None) if experts else None
    width = width or c.intermediate_size
    moe_block = experts * (3 * c.hidden_size * width + c.hidden_size)
    return Shape(parameters=parameters, hidden=c.hidden_size, layers=c.num_hidden_layers, vocab=c.vocab_size,
                 q_width=c.num_attention_heads * head_dim, kv_width=kv_heads * head_dim, mlp_width=width,
                 routed=routed, experts=experts, largest_unit=max(moe_block, c.vocab_size * c.hidden_size),
                 moe_block=moe_block, largest_matrix=c.vocab_size * c.hidden_size)


def state_bytes(shape: Shape, zero_stage, world_size: int, lora: bool = False, ep_size: int = 1) -> dict:
    """Bytes per GPU that do not depend on the micro-batch: `states` and `zero3_gathers`. With
    expert parallelism of `ep_size`, a rank gathers only its own experts (1 / ep_size of a MoE
    block: none at all when the group spans every rank) beside the non-expert matrices; the
    states are spread as before (each rank keeps 1 / ep_size of the experts, partitioned over
    world / ep_size ranks)."""
    p, w = shape.parameters, max(1, world_size)
    if lora:
        states = 2 * p / w if zero_stage == 3 else 2 * p
    elif zero_stage == 3:
        states = 16 * p / w
    elif zero_stage == 2:
        states = 2 * p + 14 * p / w
    elif zero_stage == 1:
        states = 4 * p + 12 * p / w
    else:
        states = 8 * p
    unit = shape.largest_unit
    if ep_size > 1 and shape.moe_block:
        local = shape.moe_block // ep_size if w > ep_size else 0
        unit = max(local, shape.largest_matrix)
    gathers = 2 * 5 * unit if zero_stage == 3 else 0
    return {"states": int(states), "zero3_gathers": gathers}


def layer_activation_elements(shape: Shape) -> int:
    """bf16-sized elements one token keeps in one layer's forward (fp32 router values count twice)."""
    h = shape.hidden
    attention = 3 * h + 4 * shape.q_width + 4 * shape.kv_width
    if shape.routed:
        mlp = h + 2 * 2 * shape.experts + shape.routed * (3 * h + 4 * shape.mlp_width)
    else:
        mlp = 2 * h + 4 * shape.mlp_width
    return attention + mlp


def activation_bytes_per_token(shape: Shape, checkpointing: bool) -> int:
    layer = 2 * layer_activation_elements(shape)
    if checkpointing:
        return shape.layers * 2 * shape.hidden + 2 * layer
    return shape.layers * layer + layer  # the backward's gradients of one layer on top


def logit_bytes_per_supervised_token(shape: Shape) -> int:
    return 12 * shape.vocab


def token_budget(gpu_bytes: int, fixed_bytes: int, per_token: float, max_length: int):
    """Tokens per micro-batch that fit beside `fixed_bytes` in what the GPU leaves after the
    reserve, rounded down to BUDGET_STEP; None when not even one `max_length` sample fits."""
    free = gpu_bytes * (1 - RESERVED_FRACTION) - RESERVED_BYTES - fixed_bytes
    tokens = int(free // per_token) // BUDGET_STEP * BUDGET_STEP if per_token > 0 else 0
    return tokens if tokens >= max_length else None


@dataclass(frozen=True)
class MemorySetup:
    """What the per-GPU figures depend on besides the world size and the batch."""

    shape: Shape
    zero_stage: int | None
    gpu_bytes: int
    checkpointing: bool
    lora: bool
    gpu_source: str = "given"  # where `gpu_bytes` comes from (see gpu_bytes); the plan shows it
    ep_size: int = 1  # expert parallelism (`expert_parallel.resolve`); 1 = off


def estimate(setup: MemorySetup, world_size: int, supervised_share: float, max_length: int) -> dict:
    """The per-GPU figures and the budget they give; `supervised_share` is the share of a
    micro-batch's tokens that are supervised (the dry run uses its 95th-percentile sample's)."""
    shape, gpu = setup.shape, setup.gpu_bytes
    fixed = state_bytes(shape, setup.zero_stage, world_size, setup.lora, setup.ep_size)
    act = activation_bytes_per_token(shape, setup.checkpointing)
    logits = logit_bytes_per_supervised_token(shape)
    per_token = act + supervised_share * logits
    return {"gpu_bytes": gpu, "zero_stage": setup.zero_stage, "world_size": world_size, "ep_size": setup.ep_size,
            **fixed,
            "reserved_bytes": int(gpu * RESERVED_FRACTION + RESERVED_BYTES),
            "activation_bytes_per_token": act, "logit_bytes_per_supervised_token": logits,
            "supervised_share": supervised_share, "bytes_per_token": per_token,
            "budget": token_budget(gpu, sum(fixed.values()), per_token, max_length)}


def peak_bytes(figures: dict, tokens: int) -> int:
    """Estimated peak of a micro-batch of `tokens` tokens (without the reserve)."""
    return int(figures["states"] + figures["zero3_gathers"] + tokens * figures["bytes_per_token"])


def gpu_bytes(configured_gib=None) -> tuple:
    """(bytes, where from): the config's `training.gpu_memory_gib`, else the visible GPU's, else
    DEFAULT_GPU_GIB."""
    if configured_gib is not None:
        return int(configured_gib * GIB), "training.gpu_memory_gib"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), props.name
    return DEFAULT_GPU_GIB * GIB, f"no GPU visible: {DEFAULT_GPU_GIB} GiB assumed"
