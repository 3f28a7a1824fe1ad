"""The checks a run makes before it imports torch and transformers (5-10 s on a busy node): the
checkpoint to resume, the DeepSpeed config, the model and tokenizer sources, logging and the
data split are reported in a fraction of a second, before anything is written. Everything here
uses the standard library only; `training.check_run` adds the checks that need the libraries."""

import json
import os
import sys
from pathlib import Path
from dataclasses import dataclass, field

from . import checkpoints, ds_checkpoint, tracking
from ..core import sources
from ..core.errors import UserError
from ..core.launch import maybe_rank_zero
from ..text.encoding import BUILTIN_TOKENIZER


@dataclass
class Inputs:
    """What the checks found: the run starts from it."""

    resume: str | None
    zero_stage: int | None
    report_to: list
    notices: list = field(default_factory=list)
    printed: list = field(default_factory=list)  # notices already on the console (the log still gets them)
    wandb_env: dict = field(default_factory=dict)  # set when the run starts (tracking.apply_wandb_env)
    zero_config: dict | None = None  # the --deepspeed config's zero_optimization section, as written


def check_inputs(opts, config) -> Inputs:
    """Every input of a run that can be checked without torch, in the order a user would fix them."""
    zero_config = zero_section(opts.deepspeed)
    zero_stage = deepspeed_stage(opts.deepspeed, zero_config)
    resume = checkpoints.resolve_resume(opts.resume_from_checkpoint, opts.output_dir)
    if resume is not None:
        ds_checkpoint.check_resume(resume, opts.deepspeed, zero_stage, opts.nproc_per_node)
    m = config.model
    if not m.random_init:
        source = sources.require_source(m.name_or_path, f"{config.path}: model.name_or_path")
        if os.path.isdir(source):
            sources.check_model_folder(source)
    if m.tokenizer != BUILTIN_TOKENIZER:
        sources.require_source(m.tokenizer, f"{config.path}: model.tokenizer",
                               hint=f"set model.tokenizer to a tokenizer folder, a hub id, or {BUILTIN_TOKENIZER} "
                                    f"(the bundled Qwen3 tokenizer)")
    notices, printed = [], []
    if m.trust_remote_code:  # said now: the pre-run checks read the model's config, which runs its code
        notices.append(f"model.trust_remote_code is on: Python code from {m.name_or_path} will run in this process")
        printed.append(notices[-1])
        if maybe_rank_zero():
            print(notices[-1], file=sys.stderr, flush=True)
    if opts.partition_cache:
        notices += partition_cache_notices(opts.partition_cache, zero_stage, m)
    report_to, wandb_notice, wandb_env = tracking.wandb_settings(opts.wandb_project, opts.wandb_run_name,
                                                                 opts.output_dir)
    if opts.tensorboard:
        tracking.require_tensorboard()
        report_to = report_to + ["tensorboard"]
    return Inputs(resume=resume, zero_stage=zero_stage, report_to=report_to,
                  notices=notices + ([wandb_notice] if wandb_notice else []), printed=printed, wandb_env=wandb_env,
                  zero_config=zero_config)


def partition_cache_notices(folder, zero_stage, model) -> list:
    """--partition_cache must be a folder this user can write (checked before anything is
    written); it is used only for a pretrained model in a local folder under ZeRO-3 (a notice
    says why otherwise)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"--partition_cache {folder}: exists and is not a folder")
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--partition_cache {folder}: {probe} is not writable by this user")
    why = ("it needs DeepSpeed ZeRO-3" if zero_stage != 3 else "the model is drawn at random (nothing is read)"
           if model.random_init else None if os.path.isdir(model.name_or_path) else
           f"model.name_or_path {model.name_or_path} is not a local folder")
    return [f"--partition_cache is not used: {why}"] if why else []


def zero_section(path) -> dict | None:
    """The zero_optimization section of a --deepspeed config as written (None without DeepSpeed)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"--deepspeed {path}: {exc}") from None
    if not isinstance(ds, dict):
        raise UserError(f"--deepspeed {path}: must be a JSON object")
    return ds.get("zero_optimization") or {}


def deepspeed_stage(path, zero_config=None):
    """The ZeRO stage of a --deepspeed config (None without DeepSpeed); `zero_config`: its
    zero_optimization section when already read (`zero_section`)."""
    if not path:
        return None
    stage = (zero_section(path) if zero_config is None else zero_config).get("stage")
    if stage not in (None, 0, 1, 2, 3):
        raise UserError(f"--deepspeed {path}: zero_optimization.stage must be 0, 1, 2 or 3, found {stage!r}")
    return stage


def require_trainable(data_path, n_train: int, n_val: int):
    """Training needs a training and a validation sample; the dry run refuses the same line."""
    if n_train == 0 or n_val == 0:
        raise UserError(f"{data_path}: not enough samples to train ({n_train} training, {n_val} validation)")
