"""What prediction reads from a model folder: its run spec (`run_spec.RunSpec`, which training
saves as `run_record.json`) and the history pool `use_history` prompts draw on
(`split_manifest.json`). `resolve` turns the specs of a prediction's models and its flags into one
spec: a flag typed on the command line wins (one notice line where it changes what a record
says), else the record, else the flag's default. A folder without `run_record.json` (older runs,
plain HF folders) has no record: its prompts come from the flags, as before.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core.config import config_from_raw, load_config
from ..core.errors import UserError
from ..core.outputs import FINISHED_MARKER, MANIFEST_NAME
from ..core.outputs import RUN_RECORD as RECORD_NAME
from .cli import DataOptions, shaping_flags
from .run_spec import Difference, RunSpec, checked_template, read_json, sections

SPLIT_FLAGS = shaping_flags(DataOptions, "split")


@dataclass(frozen=True)
class RunRecord:
    """One model folder's record: its run spec and history pool."""

    model_dir: str
    spec: RunSpec
    pool: dict  # {sample id: uid}


def read_record(model_dir) -> RunRecord | None:
    """The folder's run record, checked; None when the folder has none."""
    d = Path(model_dir)
    if not (d / RECORD_NAME).is_file():
        return None
    for name in (FINISHED_MARKER, MANIFEST_NAME):
        if not (d / name).is_file():
            raise UserError(f"--model {model_dir}: has {RECORD_NAME} but no {name} (the training run did not "
                            f"finish, or the folder is incomplete)")
    pool = read_json(d / MANIFEST_NAME).get("history_pool")
    if not isinstance(pool, dict):
        raise UserError(f"{d / MANIFEST_NAME}: key history_pool missing or of the wrong type")
    return RunRecord(str(model_dir), RunSpec.read(d), pool)


@dataclass(frozen=True)
class RecordedPool:
    """A run's history pool, to be taken from `opts.data_file` by sample id and checked by uid."""

    model_dir: str
    uids: dict


@dataclass(frozen=True)
class Settings:
    """Prediction's prompt settings, one set for every model."""

    opts: object  # the flags, with the spec's values where a flag was not typed
    spec: RunSpec  # what every prompt is built from
    pool: RecordedPool | None  # None: split the spec's training file with its split flags, as training did
    notices: list
    records: dict  # model dir -> RunRecord or None

    @property
    def config(self):
        return self.spec.config


def _member(opts, record: RunRecord | None, config_file) -> tuple:
    """One model's spec (the typed flags over its record, else the flags) and its recorded pool."""
    if record is None:
        return RunSpec.from_options(opts, config_file()), None
    typed, spec = opts.typed, record.spec
    config = config_file() if "config" in typed else config_from_raw(
        Path(record.model_dir, FINISHED_MARKER), sections(spec.config.resolved()), opts.overrides)
    flags = {**spec.flags, **{k: getattr(opts, k) for k in spec.flags if k in typed}}
    template = None
    if flags["prompt_style"] == "detailed":
        template = spec.template if "template_filename" not in typed and spec.template is not None \
            else checked_template(opts.template_filename)
    mine = RunSpec(flags, config, opts.data_file if "data_file" in typed else spec.training_file, template)
    config.ablation(flags["ablation_config"])
    pool = RecordedPool(record.model_dir, record.pool) \
        if mine.ablation.use_history and not typed & set(SPLIT_FLAGS) else None
    return mine, pool


def _prompt_differences(a: tuple, b: tuple) -> list:
    """What would prompt two members differently: `RunSpec.diff`, with recorded pools compared
    by their samples instead of the file and flags they came from."""
    (spec_a, pool_a), (spec_b, pool_b) = a, b
    diff = spec_a.diff(spec_b, "prompts")
    if pool_a and pool_b:
        diff = [d for d in diff if d.setting != "training file" and d.setting[2:] not in SPLIT_FLAGS]
        if pool_a.uids != pool_b.uids:
            diff.append(Difference("history pool", None, None, "--data_file and the data flags"))
    return diff


def _agree(model_dirs, members):
    """An ensemble is prompted one way: members that disagree on a setting are an error."""
    for d, member in zip(model_dirs[1:], members[1:]):
        for diff in _prompt_differences(members[0], member):
            shown = "differ" if diff.setting in ("history pool", "prompt template") else \
                f"{diff.old!r} vs {diff.new!r}"
            raise UserError(f"--model {model_dirs[0]} and --model {d} were trained with different {diff.setting} "
                            f"({shown}); pass {diff.settle} to predict with one")


def _notices(opts, pairs: list, members) -> list:
    """One line for each typed flag or --set that changes what a record says."""
    lines = []
    for (d, record), (spec, _) in zip(pairs, members):
        if record is None:
            continue
        if "config" in opts.typed:
            keys = [k.setting for k in record.spec.diff(spec) if "." in k.setting]
            if keys:
                lines.append(f"--config {opts.config} replaces the config in the run record of --model {d} "
                             f"({', '.join(keys)} differ)")
        for diff in record.spec.diff(spec, "prompts"):
            typed, old = _typed_as(opts, diff, record.spec)
            if typed:
                lines.append(f"{typed} overrides the run record (--model {d}: {old})")
    return list(dict.fromkeys(lines))  # a folder given twice says it once


def _typed_as(opts, diff, recorded: RunSpec) -> tuple:
    """The typed flag or --set that changed `diff.setting` (None: none was typed for it) and what
    the record said: the value of the key the --set names (`ablation_configs.a.use_profile` of
    the setting `ablation_configs.a`)."""
    setting = diff.setting
    if setting.startswith("--") or setting in ("training file", "prompt template"):
        name = {"training file": "data_file", "prompt template": "template_filename"}.get(setting, setting[2:])
        old = "differs" if setting == "prompt template" else repr(diff.old)
        return (f"--{name} {getattr(opts, name)}" if name in opts.typed else None), old
    if "config" in opts.typed:
        return None, None
    for text in opts.overrides:
        key = text.split("=", 1)[0]
        if key == setting or key.startswith(setting + ".") or setting.startswith(key + "."):
            return f"--set {text}", repr(_lookup(recorded.config.resolved(), key))
    return None, None


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def resolve(opts, model_dirs) -> Settings:
    """The settings every model is prompted with (see the module docstring); `opts.typed` names
    the flags given on the command line."""
    pairs = [(str(d), read_record(d)) for d in model_dirs]  # a folder may be given twice
    cache = []

    def config_file():
        if opts.config is None:
            missing = next(d for d, r in pairs if r is None)
            raise UserError(f"--model {missing}: no run record ({RECORD_NAME}); pass --config and the flags it was "
                            f"trained with")
        if not cache:
            cache.append(load_config(opts.config, opts.overrides))
        return cache[0]

    members = [_member(opts, r, config_file) for _, r in pairs]
    _agree([d for d, _ in pairs], members)
    spec, pool = members[0]
    resolved_opts = dataclasses.replace(opts, data_file=spec.training_file,
                                        **{k: v for k, v in spec.flags.items() if hasattr(opts, k)})
    return Settings(opts=resolved_opts, spec=spec, pool=pool, notices=_notices(opts, pairs, members),
                    records=dict(pairs))
