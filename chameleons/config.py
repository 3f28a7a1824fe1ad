"""The model/data config (`config_*.json`): validated up front, unknown keys are errors."""

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .prompts import ABLATION_KEYS, Ablation

ABLATION_NAMES = ("profile_and_history_and_context", "profile_and_history", "profile_and_context",
                  "history_and_context", "profile_only", "history_only", "context_only")
BATCHING = ("packed", "length_grouped", "padded")

# key: (types, default); a default of REQUIRED means the key must be given.
REQUIRED = object()
_NUM = (int, float)
SCHEMA = {
    "model": {
        "name_or_path": (str, None),
        "tokenizer": (str, None),
        "random_init": (dict, None),
        "attn_implementation": (str, "auto"),
        "experts_implementation": (str, "auto"),
        "router_aux_loss_coef": (_NUM, 0.001),
        "gradient_checkpointing": (bool, True),
        "trust_remote_code": (bool, False),
    },
    "data": {
        "train_file": (str, REQUIRED),
        "cache_dir": (str, ".cache/chameleons"),
    },
    "training": {
        "batch_size": (int, REQUIRED),
        "eval_batch_size": (int, None),
        "gradient_accumulation_steps": (int, 1),
        "learning_rate": (_NUM, REQUIRED),
        "weight_decay": (_NUM, 0.0),
        "warmup_steps": (int, 0),
        "lr_scheduler_type": (str, "cosine"),
        "max_grad_norm": (_NUM, 1.0),
        "max_length": (int, REQUIRED),
        "max_context_turns": (int, None),
        "logging_steps": (int, 10),
        "save_total_limit": (int, 3),
        "evals_per_epoch": (int, 2),
        "seed": (int, 42),
        "batching": (str, "packed"),
        "dataloader_num_workers": (int, 0),
    },
    "lora": {
        "r": (int, REQUIRED),
        "alpha": (_NUM, REQUIRED),
        "dropout": (_NUM, 0.0),
        "target_modules": (list, REQUIRED),
    },
}
SECTIONS_REQUIRED = ("model", "data", "training", "ablation_configs")


@dataclass
class Config:
    path: Path
    model: dict
    data: dict
    training: dict
    ablations: dict
    lora: dict = None
    raw: dict = None

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


def _section(path, name, values, schema):
    if not isinstance(values, dict):
        raise UserError(f"{path}: section {name!r} must be an object")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise UserError(f"{path}: unknown key {name}.{unknown[0]} (allowed: {', '.join(schema)})")
    out = {}
    for key, (types, default) in schema.items():
        if key not in values:
            if default is REQUIRED:
                raise UserError(f"{path}: missing key {name}.{key}")
            out[key] = default
            continue
        value = values[key]
        if value is None and default is not REQUIRED:
            out[key] = default
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and types in (int, _NUM))
        if not ok:
            want = types.__name__ if isinstance(types, type) else "number"
            raise UserError(f"{path}: key {name}.{key} must be {want}, found {json.dumps(value)}")
        out[key] = value
    return out


def load_config(path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a JSON object") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: must be a JSON object with sections {', '.join(SECTIONS_REQUIRED)}")
    unknown = sorted(set(raw) - set(SECTIONS_REQUIRED) - {"lora"})
    if unknown:
        raise UserError(f"{path}: unknown section {unknown[0]!r} (allowed: {', '.join(SECTIONS_REQUIRED)}, lora)")
    for name in SECTIONS_REQUIRED:
        if name not in raw:
            raise UserError(f"{path}: missing section {name!r}")
    model = _section(path, "model", raw["model"], SCHEMA["model"])
    if not model["name_or_path"] and not model["random_init"]:
        raise UserError(f"{path}: key model.name_or_path is required (or model.random_init for a random tiny model)")
    if model["random_init"] and "model_type" not in model["random_init"]:
        raise UserError(f"{path}: key model.random_init.model_type missing")
    if not model["tokenizer"]:
        if not model["name_or_path"]:
            raise UserError(f"{path}: key model.tokenizer is required with model.random_init")
        model["tokenizer"] = model["name_or_path"]
    data = _section(path, "data", raw["data"], SCHEMA["data"])
    training = _section(path, "training", raw["training"], SCHEMA["training"])
    for key in ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps", "evals_per_epoch"):
        if training[key] < 1:
            raise UserError(f"{path}: key training.{key} must be at least 1, found {training[key]}")
    for key in ("max_context_turns", "eval_batch_size"):
        if training[key] is not None and training[key] < 1:
            raise UserError(f"{path}: key training.{key} must be at least 1, found {training[key]}")
    if training["save_total_limit"] < 2:
        raise UserError(f"{path}: key training.save_total_limit must be at least 2 (the best checkpoint and the "
                        f"latest, to resume from), found {training['save_total_limit']}")
    if training["eval_batch_size"] is None:
        training["eval_batch_size"] = training["batch_size"]
    if training["batching"] not in BATCHING:
        raise UserError(f"{path}: key training.batching must be one of {', '.join(BATCHING)}, found {training['batching']!r}")
    ablations_raw = raw["ablation_configs"]
    if not isinstance(ablations_raw, dict) or not ablations_raw:
        raise UserError(f"{path}: section 'ablation_configs' must be a non-empty object")
    ablations = {}
    for name, spec in ablations_raw.items():
        if not isinstance(spec, dict):
            raise UserError(f"{path}: ablation_configs.{name} must be an object")
        unknown = sorted(set(spec) - set(ABLATION_KEYS))
        if unknown:
            raise UserError(f"{path}: unknown key ablation_configs.{name}.{unknown[0]} (allowed: {', '.join(ABLATION_KEYS)})")
        for key in ABLATION_KEYS:
            if not isinstance(spec.get(key), bool):
                raise UserError(f"{path}: key ablation_configs.{name}.{key} must be true or false")
        ablations[name] = Ablation(name=name, **{k: spec[k] for k in ABLATION_KEYS})
    lora = _section(path, "lora", raw["lora"], SCHEMA["lora"]) if raw.get("lora") is not None else None
    return Config(path=path, model=model, data=data, training=training, ablations=ablations, lora=lora, raw=raw)
