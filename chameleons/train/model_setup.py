"""The model a run trains, and what decides how it runs: the device, dtype and attention
policy, the model built or loaded (already partitioned under ZeRO-3), MoE leaves, LoRA."""

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import attention
from ..core import launch
from ..core.errors import UserError
from ..text.loss import causal_lm_of
from .zero3 import remote_code_errors


@dataclass(frozen=True)
class DevicePolicy:
    """Where and how the model runs: decided once, before the first write (`device_policy`)."""

    on_gpu: bool
    bf16: bool
    attn_implementation: str
    notices: tuple = ()
    huge_pages: bool = False

    @property
    def dtype(self):
        return torch.bfloat16 if self.bf16 else torch.float32

    def record(self) -> dict:
        """As training_config.json records it."""
        return {"on_gpu": self.on_gpu, "bf16": self.bf16, "attn_implementation": self.attn_implementation,
                "huge_pages": self.huge_pages}


def device_policy(disable_flash_attn: bool, attn_config: str, batching: str = "padded") -> DevicePolicy:
    """bf16 + flash-attention 2 on a GPU when usable, fp32 + SDPA on CPU (`choose_attention`)."""
    notices = []
    on_gpu = torch.cuda.is_available()
    if on_gpu and torch.cuda.device_count() > 1 and not launch.launched():
        raise UserError(f"{torch.cuda.device_count()} GPUs are visible but the trainer was not started by torchrun "
                        f"or srun: HF Trainer would run nn.DataParallel with a {torch.cuda.device_count()}x batch; "
                        f"launch with torchrun --nproc_per_node={torch.cuda.device_count()}, or set "
                        f"CUDA_VISIBLE_DEVICES to one GPU")
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    attn, notices = choose_attention(attn_config, on_gpu, on_gpu and flash_attn_2_available(), disable_flash_attn,
                                     batching)
    if attn == attention.NAME:
        attention.register()
    return DevicePolicy(on_gpu=on_gpu, bf16=bf16, attn_implementation=attn, notices=tuple(notices),
                        huge_pages=huge_pages_in_use())


def huge_pages_in_use(smaps: Path = Path("/proc/self/smaps")) -> bool:
    """Whether large CPU tensors are on transparent huge pages (`launch.use_huge_pages`): the
    kernel's own verdict (`THPeligible`) on the mapping of a 64 MiB probe tensor, which takes in
    torch's switch, the kernel's THP mode and a container's ban on THP alike. Untouched, the
    probe costs no memory."""
    probe = torch.empty(64 << 20, dtype=torch.uint8)  # held: freed, its mapping would be gone
    address = probe.data_ptr()
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return False
    inside = False
    for line in lines:
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):  # a mapping's header: start-end perms ...
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start <= address < end
        elif inside and first == "THPeligible:":
            return line.split()[1] == "1"
    return False


def choose_attention(requested: str, on_gpu: bool, flash2: bool, disable_flash_attn: bool, batching: str) -> tuple:
    """(the attention implementation that will run, notices): a pure function of the config's
    request, the device and whether flash-attention 2 is usable (`flash_attn_2_available`), so
    the plan and the run name the same kernel. Packed rows without flash-attention run SDPA per
    sample (`sdpa_varlen`, on a GPU too: why not flex_attention is in `attention`)."""
    notices = []
    attn = requested
    if attn == "auto":
        attn = "sdpa"
        if on_gpu and not disable_flash_attn and flash2:
            attn = "flash_attention_2"
        elif on_gpu and batching == "packed":
            attn = attention.NAME
            notices.append(f"flash-attention 2 is {'disabled' if disable_flash_attn else 'not usable'}: packed "
                           f"batches use {attn} (PyTorch's SDPA kernel per sample)")
        elif on_gpu and not disable_flash_attn:
            notices.append("flash-attention 2 is not usable: using SDPA attention")
    elif attn == "flash_attention_2" and (disable_flash_attn or not on_gpu):
        attn = "sdpa"
        notices.append("flash-attention 2 needs a GPU and is not disabled: using SDPA attention")
    elif attn == "flash_attention_2" and not flash2:
        raise UserError("model.attn_implementation flash_attention_2: no usable flash-attn 2 (transformers' "
                        "is_flash_attn_2_available: the flash-attn package, 2.3.3 or later; flash-attn-4 is not it), "
                        "or choose auto or sdpa")
    if attn == "sdpa" and batching == "packed":
        attn = attention.NAME
    return attn, notices


def flash_attn_2_available() -> bool:
    """transformers' own check, the one its model loading applies: `import flash_attn` also
    succeeds with only flash-attn-4 installed, which transformers then refuses."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def build_model(config, device: DevicePolicy, deepspeed_zero3: bool, read_weights: bool = True):
    """The model, partitioned at construction under ZeRO-3; without `read_weights` a pretrained
    model is built from its config only (its weights are copied in afterwards: initial_weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    m = config.model
    dtype = device.dtype
    extra = {}
    if m.experts_implementation != "auto":
        extra["experts_implementation"] = m.experts_implementation
    if deepspeed_zero3 and not device.on_gpu:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    if m.random_init:
        spec = dict(m.random_init)
        model_config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        _router_settings(model_config, m.router_aux_loss_coef)
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                                 attn_implementation=device.attn_implementation, **extra)
    else:
        try:
            with remote_code_errors(m):
                model_config = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code)
        except OSError as exc:
            raise UserError(f"model {m.name_or_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
        _router_settings(model_config, m.router_aux_loss_coef)
        with remote_code_errors(m):
            if read_weights:
                model = AutoModelForCausalLM.from_pretrained(m.name_or_path, config=model_config, dtype=dtype,
                                                             attn_implementation=device.attn_implementation,
                                                             trust_remote_code=m.trust_remote_code, **extra)
            else:
                with _weights_left_empty(deepspeed_zero3):
                    model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                                             trust_remote_code=m.trust_remote_code,
                                                             attn_implementation=device.attn_implementation, **extra)
    if deepspeed_zero3:
        register_moe_leaves(model)
    model.config.use_cache = False
    return model


@contextmanager
def _weights_left_empty(zero3: bool):
    """transformers' from_config under ZeRO-3 gathers every module on every rank to draw weights
    (`initialize_weights_zero3`: 17 s for a 0.5 B model on 2 CPU processes); a model whose every
    partition is copied in next needs none of them. Only for a pretrained model: a random-init
    one still draws them, so the random state after it is a separate run's."""
    if not zero3:
        yield
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    drawn = hf_deepspeed.initialize_weights_zero3
    hf_deepspeed.initialize_weights_zero3 = lambda model: None
    try:
        yield
    finally:
        hf_deepspeed.initialize_weights_zero3 = drawn


def settle_heap():
    """Moves every object alive now (imports, the corpus, tokenized rows: they live as long as the
    process) out of the garbage collector's sight: DeepSpeed runs a full collection several times
    per engine (AutoEP's expert partitioning, ZeRO-3's defragmenting, accelerate's release), and
    each one walked all of them (0.3 s apiece with the demo's data on a CPU)."""
    gc.collect()
    gc.freeze()


def _router_settings(model_config, coef):
    if hasattr(model_config, "router_aux_loss_coef"):
        model_config.router_aux_loss_coef = coef
        model_config.output_router_logits = coef > 0


def register_moe_leaves(model):
    """ZeRO-3 must gather a sparse MoE block as one unit, or ranks that route to different
    experts wait on each other forever."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = sorted({type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")},
                     key=lambda c: c.__name__)
    if classes:
        set_z3_leaf_modules(model, classes)
    return classes


def apply_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def describe_model(model) -> str:
    """Which implementations really run (transformers may fall back), and the size."""
    lm = causal_lm_of(model)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    cfg = lm.config
    return (f"model: {type(lm).__name__}, {total / 1e6:,.1f} M parameters ({trainable / 1e6:,.1f} M trainable), "
            f"attention {getattr(cfg, '_attn_implementation', 'n/a')}, "
            f"experts {getattr(cfg, '_experts_implementation', None) or 'n/a'}, dtype {lm.dtype}")
