"""Command-line flags of the trainer; the names are the ones users' scripts already pass."""

import argparse
import math
import sys

from .errors import EXIT_BAD_INPUT
from .launch import world_size


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line and exit code 2."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def optional_positive_int(text):
    if text.lower() in ("none", "all"):
        return None
    return positive_int(text)


def ratio(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def probability(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def non_negative_float(text):
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
    return value


def _default_world_size():
    return world_size()


def add_data_args(p):
    p.add_argument("--config", required=True, help="model/data config, e.g. config_Chameleons_30B.json")
    p.add_argument("--data_file", help="Chameleons file to train on (default: the config's data.train_file)")
    p.add_argument("--ablation_config", default="context_only", help="one of the config's ablation_configs")
    p.add_argument("--prompt_style", default="simple", choices=["simple", "detailed"])
    p.add_argument("--template_filename", help="template for --prompt_style detailed (default templates/detailed.txt)")
    p.add_argument("--max_samples_per_user", type=optional_positive_int, default=None,
                   help="keep at most N samples per character (default: all)")
    p.add_argument("--sample_seed", type=int, default=42)
    p.add_argument("--sample_group_by", choices=["user_hash", "record"], default="user_hash")
    p.add_argument("--val_ratio", type=ratio, default=0.1)
    p.add_argument("--val_seed", type=int, default=None, help="seed of the validation split (default: --sample_seed)")
    p.add_argument("--val_leak_check", choices=["conversation", "text"], default="conversation",
                   help="how validation lines are kept out of training: whole conversations go to validation (a line "
                        "is identified by its place in the scene), or 'text': drop every training sample showing a "
                        "validation line's text (strict, loses much scene data)")


def train_parser():
    p = OneLineParser(prog="train_distributed_Chameleons.py",
                      description="Fine-tune a causal LM to speak like a film character.")
    add_data_args(p)
    p.add_argument("--deepspeed", help="DeepSpeed config JSON (ZeRO-2/3)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--overwrite_output_dir", action="store_true", help="allow writing over a finished run")
    p.add_argument("--max_epochs", type=positive_int, default=3)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (for smoke tests)")
    p.add_argument("--early_stopping_patience", type=non_negative_int, default=3, help="evaluations without improvement; 0 disables")
    p.add_argument("--early_stopping_threshold", type=non_negative_float, default=0.001)
    p.add_argument("--evals_per_epoch", type=positive_int, default=None, help="default: the config's (2)")
    p.add_argument("--resample_each_epoch", action="store_true",
                   help="draw a fresh per-character subset every epoch (epoch 0 = the plain sample)")
    p.add_argument("--resume_from_checkpoint", default=None, help="'auto' (newest complete checkpoint) or a path")
    p.add_argument("--wandb_project", default="none", help="'none' turns wandb off")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard under <output_dir>/runs (needs `pip install tensorboard`)")
    p.add_argument("--wandb_run_name", default=None)
    p.add_argument("--wandb_group", default=None,
                   help="wandb group (default: <ablation>_N<max_samples_per_user>, e.g. context_only_N2)")
    p.add_argument("--disable_flash_attn", action="store_true", help="use SDPA attention instead of flash-attention 2")
    p.add_argument("--dry_run", action="store_true", help="load, sample, split and tokenize; write plan.json; no model")
    p.add_argument("--sec_per_step", type=non_negative_float, default=16.0,
                   help="seconds per optimizer step for the dry run's time estimates (16: measured on 8 GPUs)")
    p.add_argument("--nproc_per_node", type=positive_int, default=None,
                   help="world size for the dry run's step counts (default: WORLD_SIZE or 1)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the config's training.seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, repeatable (e.g. --set training.learning_rate=2e-5); the value "
                        "is read as JSON where it parses (2e-5, true, null, [\"q_proj\"]), else as a plain string")
    return p


def parse_train_args(argv=None):
    args = train_parser().parse_args(argv)
    if args.nproc_per_node is None:
        args.nproc_per_node = _default_world_size()
    return args
