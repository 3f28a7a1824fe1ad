"""Command-line flags, as typed options: each flag is a field of a frozen dataclass (its type,
default and help written once), and the parser is built from the fields. The names are the ones
users' scripts already pass. Library code receives these objects or single fields, never the
parser's Namespace.

Not `transformers.HfArgumentParser`: it replaces each field's `type` with the annotation, so the
range checks below (`positive_int`...) and `--set`'s repeatable append cannot be expressed."""

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass

from ..core.errors import EXIT_BAD_INPUT
from ..core.launch import world_size
from ..corpus import leak_checks
from ..corpus.data import GROUP_BY
from ..text.prompts import PROMPT_STYLES


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


def step_limit(text):
    """--max_steps: -1 (no limit: the epochs decide) or at least 1; HF treats 0 and other negatives as -1."""
    value = int(text)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, or -1 for no limit, got {value}")
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


SHAPES = ("split", "prompts", "training")  # what a flag that changes a run's result shapes


def flag(default=dataclasses.MISSING, help=None, *, name=None, shapes=None, **argparse_kwargs):
    """A field that is also the flag `--<field name>` (or `name`); a field without a default is a
    required flag. `shapes` (one of SHAPES) puts the flag in the run spec (`run_spec.RunSpec`);
    `argparse_kwargs` go to `add_argument` (type, choices, action, metavar)."""
    assert shapes in (None, *SHAPES), shapes
    metadata = {"flag": name, "help": help, "shapes": shapes, **argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def add_flags(parser, options_class, defaults: bool = True):
    """One flag per `flag()` field (other fields are not flags); without `defaults`, a flag not
    given is left out of the parsed values."""
    for f in dataclasses.fields(options_class):
        if "flag" not in f.metadata:
            continue
        kwargs = {k: v for k, v in f.metadata.items() if k not in ("flag", "shapes")}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default if defaults else argparse.SUPPRESS
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory() if defaults else argparse.SUPPRESS
        else:
            kwargs["required"] = True
        parser.add_argument(f.metadata["flag"] or f"--{f.name}", dest=f.name, **kwargs)
    return parser


def parse_options(options_class, parser, argv=None, **fill):
    """The flags of `argv` as an `options_class`; `fill` sets fields left at None (a default that
    depends on the environment or on another flag)."""
    values = vars(parser.parse_args(argv))
    for key, value in fill.items():
        if values[key] is None:
            values[key] = value(values) if callable(value) else value
    return options_class(**values)


def shaping_flags(options_class, shapes: str | None = None) -> tuple:
    """The flags that shape a run (those marked `shapes`), or only those that shape `shapes`."""
    return tuple(f.name for f in dataclasses.fields(options_class)
                 if f.metadata.get("shapes") and shapes in (None, f.metadata["shapes"]))


def typed_flags(options_class, argv=None) -> frozenset:
    """The fields whose flags `argv` gives (call after a full parse has checked it): where a run
    record and the command line disagree, only these win."""
    return frozenset(vars(add_flags(OneLineParser(), options_class, defaults=False).parse_args(argv)))


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """Which config, file, prompts and per-character sample a run uses: shared by training and
    prediction (which takes them from a model's run record where they are not typed)."""

    config: str = flag(help="model/data config, e.g. config_Chameleons_30B.json")
    data_file: str | None = flag(None, "Chameleons file to train on (default: the config's data.train_file)")
    ablation_config: str = flag("context_only", "one of the config's ablation_configs", shapes="prompts")
    prompt_style: str = flag(PROMPT_STYLES[0], choices=PROMPT_STYLES, shapes="prompts")
    template_filename: str | None = flag(None, "template for --prompt_style detailed (default templates/detailed.txt)")
    max_samples_per_user: int | None = flag(None, "keep at most N samples per character (default: all)",
                                            type=optional_positive_int, shapes="split")
    sample_seed: int = flag(42, type=int, shapes="split")
    sample_group_by: str = flag(GROUP_BY[0], choices=GROUP_BY, shapes="split")
    val_ratio: float = flag(0.1, type=ratio, shapes="split")
    val_seed: int | None = flag(None, "seed of the validation split (default: --sample_seed)", type=int, shapes="split")
    val_leak_check: str = flag(leak_checks.CONVERSATION.name, leak_checks.describe(), choices=leak_checks.NAMES,
                               shapes="split")
    overrides: list = flag(
        [], "override one config key, repeatable (e.g. --set training.learning_rate=2e-5); the value is read as "
            "JSON where it parses (2e-5, true, null, [\"q_proj\"]), else as a plain string",
        name="--set", action="append", metavar="SECTION.KEY=VALUE")
    accept_val_share: bool = flag(False, "train even when validation is 0 samples or more than 3 points from "
                                         "--val_ratio (the run's sampled set, after the split)", action="store_true")


@dataclass(frozen=True, kw_only=True)
class TrainOptions(DataOptions):
    """Every flag of train_distributed_Chameleons.py. `--seed` and `--evals_per_epoch` are
    shorthands for `--set training.seed=...` / `--set training.evals_per_epoch=...`: the run
    reads both from the config (see `config_flags`)."""

    deepspeed: str | None = flag(None, "DeepSpeed config JSON (ZeRO-2/3)", shapes="training")
    output_dir: str = flag()
    overwrite_output_dir: bool = flag(False, "allow writing over a finished run", action="store_true")
    max_epochs: int = flag(3, type=positive_int, shapes="training")
    max_steps: int = flag(-1, "stop after this many optimizer steps (for smoke tests); -1: no limit", type=step_limit,
                          shapes="training")
    early_stopping_patience: int = flag(3, "evaluations without improvement; 0 disables", type=non_negative_int,
                                        shapes="training")
    early_stopping_threshold: float = flag(0.001, type=non_negative_float, shapes="training")
    evals_per_epoch: int | None = flag(None, "default: the config's (2)", type=positive_int)
    resample_each_epoch: bool = flag(False, "draw a fresh per-character subset every epoch (epoch 0 = the plain "
                                            "sample)", action="store_true", shapes="split")
    resume_from_checkpoint: str | None = flag(None, "'auto' (newest complete checkpoint) or a path")
    wandb_project: str = flag("none", "'none' turns wandb off")
    tensorboard: bool = flag(False, "also log to TensorBoard under <output_dir>/runs (needs `pip install "
                                    "tensorboard`)", action="store_true")
    wandb_run_name: str | None = flag(None)
    wandb_group: str | None = flag(None, "wandb group (default: <ablation>_N<max_samples_per_user>, e.g. "
                                         "context_only_N2)")
    disable_flash_attn: bool = flag(False, "use SDPA attention instead of flash-attention 2", action="store_true",
                                    shapes="training")
    dry_run: bool = flag(False, "load, sample, split and tokenize; write plan.json; no model", action="store_true")
    sec_per_step: float = flag(16.0, "seconds per optimizer step for the dry run's time estimates (16: measured "
                                     "on 8 GPUs)", type=non_negative_float)
    nproc_per_node: int | None = flag(None, "world size for the dry run's step counts (default: WORLD_SIZE or 1)",
                                      type=positive_int)
    seed: int | None = flag(None, "training seed (default: the config's training.seed)", type=int)
    partition_cache: str | None = flag(None, "folder where a pretrained model's ZeRO-3 partitions are kept, each rank "
                                             "its own file, so that the next launch with the same model reads them "
                                             "in parallel instead of the whole model (chameleons/train/"
                                             "initial_weights.py)")
    final_fidelity_items: int = flag(0, "after saving the best model, generate for the first N items of the run's fixed "
                                        "validation subset and score character fidelity into final_fidelity.json "
                                        "(chameleons/predict/final_fidelity.py); 0 = off", type=non_negative_int,
                                    shapes="training")

    sweep: list = flag([], "train every combination of these values one after another in this one launch, each run "
                           "in <output_dir>/<FLAG-VALUE_...> (chameleons/run/sweep.py); repeatable, e.g. --sweep "
                           "sample_seed=42,43 --sweep ablation_config=context_only,profile_only",
                       action="append", metavar="FLAG=V1,V2")

    def config_flags(self) -> list:
        """The flags that stand for a config key, as `config.load_config` takes them."""
        return [(f"--{key} {value}", f"training.{key}", value) for key, value in
                (("seed", self.seed), ("evals_per_epoch", self.evals_per_epoch)) if value is not None]

    def as_record(self) -> dict:
        """Every flag by name, as run files record them (training_config.json's `args`)."""
        return dataclasses.asdict(self)


def train_parser():
    return add_flags(OneLineParser(prog="train_distributed_Chameleons.py",
                                   description="Fine-tune a causal LM to speak like a film character."), TrainOptions)


def parse_train_args(argv=None) -> TrainOptions:
    return parse_options(TrainOptions, train_parser(), argv, nproc_per_node=lambda _: world_size())
