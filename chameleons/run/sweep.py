"""A sweep in one launch: `--sweep FLAG=V1,V2` (repeatable; a dotted key such as
`training.learning_rate=1e-4,2e-4` is a config key, set as `--set` would; a switch such as
`resample_each_epoch=true,false` is given or left out) trains every combination, one after
another, each in its own folder under `--output_dir`.

Each run's options are the command's own argv with the swept values appended and its folder as
`--output_dir`, parsed again by the same parser: a swept value gets the flag's own type check and
error line, and a run's records are those of the separate command
`train_distributed_Chameleons.py <argv> --FLAG VALUE ... --output_dir <folder>`.
A run's folder is named from its swept values in the order given, `FLAG-VALUE` joined by `_`
(`sample_seed-42_ablation_config-context_only`), characters other than letters, digits, `.`, `-`
and `+` replaced by `_`."""

import dataclasses
import itertools
import re
from pathlib import Path

from ..core.errors import UserError
from ..core.launch import without_flag
from .cli import TrainOptions, parse_train_args, shaping_flags

NOT_SWEPT = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir", "dry_run", "sweep", "overrides")


def parse(texts: list) -> list:
    """[(key, [values])] of the --sweep flags, in the order given."""
    flags = {f.name for f in dataclasses.fields(TrainOptions) if "flag" in f.metadata} - set(NOT_SWEPT)
    swept, seen = [], set()
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--sweep {text}: expected FLAG=V1,V2,... (e.g. --sweep sample_seed=42,43)")
        if "." not in key and key not in flags:
            sweepable = ", ".join(name for name in shaping_flags(TrainOptions))
            raise UserError(f"--sweep {text}: {key} is not a flag a sweep can vary (a flag of the run: {sweepable}; "
                            f"or a config key such as training.learning_rate)")
        if key in seen:
            raise UserError(f"--sweep {text}: {key} is swept twice")
        seen.add(key)
        swept.append((key, [v.strip() for v in values.split(",")]))
    return swept


SWITCHES = {f.name for f in dataclasses.fields(TrainOptions) if f.metadata.get("action") == "store_true"}


def _as_flags(key: str, value: str) -> tuple:
    """The command-line words of one swept value: a config key as --set, a switch (a flag without
    a value, e.g. resample_each_epoch) given for true and left out for false."""
    if "." in key:
        return "--set", f"{key}={value}"
    if key in SWITCHES:
        if value.lower() not in ("true", "false"):
            raise UserError(f"--sweep {key}={value}: {key} is a switch; sweep it as {key}=true,false")
        return (f"--{key}",) if value.lower() == "true" else ()
    return f"--{key}", value


def run_name(point: list) -> str:
    """The folder name of one combination [(key, value)]."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]", "_", f"{key}-{value}") for key, value in point)


def points(opts: TrainOptions, argv: list) -> list:
    """[(name, options)] of every run: one (None, opts) without --sweep."""
    if not opts.sweep:
        return [(None, opts)]
    swept = parse(opts.sweep)
    switches = {f"--{key}" for key, _ in swept if key in SWITCHES}  # a swept switch is given by the sweep alone
    base = [a for a in without_flag(argv, "--sweep") if a not in switches]
    out = []
    for values in itertools.product(*(v for _, v in swept)):
        point = list(zip((k for k, _ in swept), values))
        name = run_name(point)
        extra = [a for key, value in point for a in _as_flags(key, value)]
        if any(name == seen for seen, _ in out):
            raise UserError(f"--sweep: two runs would share the folder {Path(opts.output_dir, name)} (a value given "
                            f"twice, or values that differ only in characters a folder name replaces)")
        out.append((name, parse_train_args([*base, *extra, "--output_dir", str(Path(opts.output_dir, name))])))
    return out
