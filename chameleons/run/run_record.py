"""The run record: what a model folder tells prediction about the prompts it was trained on.

Training already writes most of it: `training_config.json` (every flag, and the resolved config
with the `--set` overrides applied) and `split_manifest.json` (validation, each epoch's training
samples, and the history pool `use_history` prompts draw on). `run_record.json`, written by
`write_run_record` at the start of a run, adds what those lack: the training file's absolute
path and the prompt template's text (a path may move or change; the text cannot). `read_record`
reads the three; `resolve` turns the records of a prediction's models and its flags into one set
of settings: a flag typed on the command line wins (one notice line where it changes what a
record says), else the record, else the flag's default. A folder without `run_record.json`
(older runs, plain HF folders) has no record: its prompts come from the flags, as before.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.config import config_from_raw, load_config
from ..core.errors import UserError
from ..core.outputs import FINISHED_MARKER, MANIFEST_NAME, write_json
from ..core.outputs import RUN_RECORD as RECORD_NAME
from ..text.prompts import DEFAULT_TEMPLATE, parse_template, read_template

FORMAT = 1
PROMPT_FLAGS = ("ablation_config", "prompt_style")
# the flags that decide how training split its file, hence the history pool
SPLIT_FLAGS = ("max_samples_per_user", "sample_seed", "sample_group_by", "val_ratio", "val_seed", "val_leak_check")


def write_run_record(output_dir, training_file, builder):
    """Rank 0, once the run folder is started: what prediction needs beyond the other run files."""
    write_json(Path(output_dir, RECORD_NAME), {
        "format": FORMAT,
        "training_file": str(Path(training_file).resolve()),
        "prompt_template": builder.template_text,
    })


def history_pool(split) -> dict:
    """{sample id: content uid} of the samples `use_history` prompts draw on (split_manifest.json)."""
    return {s.sample_id: s.uid for s in split.pool_samples()}


@dataclass(frozen=True)
class RunRecord:
    """One model folder's record, read from its three run files."""

    model_dir: str
    args: dict  # training's flags
    config: dict  # the resolved config, overrides applied
    training_file: str
    template: str | None  # the detailed template's text (None: the run used the simple style)
    pool: dict  # {sample id: uid}

    @property
    def source(self) -> Path:
        return Path(self.model_dir, FINISHED_MARKER)


def _read_json(path: Path, model_dir) -> dict:
    if not path.is_file():
        raise UserError(f"--model {model_dir}: has {RECORD_NAME} but no {path.name} (the training run did not "
                        f"finish, or the folder is incomplete)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: must be a JSON object")
    return value


def _field(value: dict, key: str, types, path: Path):
    if key not in value or not isinstance(value[key], types):
        raise UserError(f"{path}: key {key} missing or of the wrong type")
    return value[key]


def read_record(model_dir) -> RunRecord | None:
    """The folder's run record, checked; None when the folder has none."""
    d = Path(model_dir)
    if not (d / RECORD_NAME).is_file():
        return None
    head = _read_json(d / RECORD_NAME, model_dir)
    if head.get("format") != FORMAT:
        raise UserError(f"{d / RECORD_NAME}: format {head.get('format')!r} is not the one this version reads "
                        f"({FORMAT})")
    trained = _read_json(d / FINISHED_MARKER, model_dir)
    manifest = _read_json(d / MANIFEST_NAME, model_dir)
    template = _field(head, "prompt_template", (str, type(None)), d / RECORD_NAME)
    if template is not None:
        parse_template(template, d / RECORD_NAME)
    return RunRecord(model_dir=str(model_dir), args=_field(trained, "args", dict, d / FINISHED_MARKER),
                     config=_field(trained, "config", dict, d / FINISHED_MARKER),
                     training_file=_field(head, "training_file", str, d / RECORD_NAME), template=template,
                     pool=_field(manifest, "history_pool", dict, d / MANIFEST_NAME))


@dataclass(frozen=True)
class RecordedPool:
    """A run's history pool, to be taken from `opts.data_file` by sample id and checked by uid."""

    model_dir: str
    uids: dict


@dataclass(frozen=True)
class Settings:
    """Prediction's prompt settings, one set for every model."""

    opts: object  # the flags, with the records' values where a flag was not typed
    config: object
    template_text: str | None  # a record's template; None: read opts.template_filename (or the default)
    pool: RecordedPool | None  # None: split opts.data_file with opts' data flags, as training did
    notices: list
    records: dict  # model dir -> RunRecord or None


def _member(opts, record: RunRecord | None, config_file) -> dict:
    """One model's settings: the typed flags, then its record, then the flags' defaults."""
    typed = opts.typed

    def pick(name):
        return getattr(opts, name) if record is None or name in typed or name not in record.args \
            else record.args[name]

    if record is None or "config" in typed:
        config = config_file()
    else:
        config = config_from_raw(record.source, _sections(record.config), opts.overrides)
    values = {name: pick(name) for name in PROMPT_FLAGS + SPLIT_FLAGS}
    ablation = config.ablation(values["ablation_config"])
    template, recorded = None, False
    if values["prompt_style"] == "detailed":
        recorded = record is not None and "template_filename" not in typed and record.template is not None
        template = record.template if recorded else read_template(opts.template_filename or DEFAULT_TEMPLATE)
    pool, data_file = None, opts.data_file
    if record is not None and "data_file" not in typed:
        data_file = record.training_file
    elif data_file is None:
        data_file = str(config.resolve_path(config.data.train_file))
    if ablation.use_history and record is not None and not typed & set(SPLIT_FLAGS):
        pool = RecordedPool(record.model_dir, record.pool)
    return {"config": config, "values": values, "ablation": ablation, "template": template,
            "template_recorded": recorded, "pool": pool, "data_file": data_file}


def _differences(member: dict) -> dict:
    """What changes the prompt, by the setting's name and the flag that settles it."""
    config, ablation = member["config"], member["ablation"]
    out = {
        ("ablation_config", "--ablation_config"): member["values"]["ablation_config"],
        (f"ablation_configs.{ablation.name}", f"--set ablation_configs.{ablation.name}.KEY=..."):
            dataclasses.asdict(ablation),
        ("training.max_context_turns", "--set training.max_context_turns=N"): config.training.max_context_turns,
        ("training.max_length", "--set training.max_length=N"): config.training.max_length,
        ("prompt_style", "--prompt_style"): member["values"]["prompt_style"],
        ("prompt template", "--template_filename"): member["template"],
    }
    if ablation.use_history:
        pool = member["pool"]
        out[("history pool", "--data_file and the data flags")] = \
            pool.uids if pool else (member["data_file"], *(member["values"][k] for k in SPLIT_FLAGS))
    return out


def _agree(model_dirs, members):
    """An ensemble is prompted one way: members that disagree on a setting are an error."""
    first = _differences(members[0])
    for d, member in zip(model_dirs[1:], members[1:]):
        for (setting, settle), value in _differences(member).items():
            if first.get((setting, settle), value) != value:
                shown = "differ" if setting in ("history pool", "prompt template") else \
                    f"{first[(setting, settle)]!r} vs {value!r}"
                raise UserError(f"--model {model_dirs[0]} and --model {d} were trained with different {setting} "
                                f"({shown}); pass {settle} to predict with one")


def _notices(opts, pairs: list, members) -> list:
    """One line for each typed flag or --set that changes what a record says."""
    recorded = [(d, r, m) for (d, r), m in zip(pairs, members) if r is not None]
    lines = []

    def changed(text, pairs):
        was = [f"--model {d}: {old!r}" for d, old, new in pairs if old != new]
        if was:
            lines.append(f"{text} overrides the run record ({'; '.join(was)})")

    if "config" in opts.typed:
        for d, r, m in recorded:
            keys = _changed_keys(_sections(r.config), _sections(m["config"].resolved()))
            if keys:
                lines.append(f"--config {opts.config} replaces the config in the run record of --model {d} "
                             f"({', '.join(keys)} differ)")
    for name in PROMPT_FLAGS + SPLIT_FLAGS:
        if name in opts.typed and (name in PROMPT_FLAGS or any(m["ablation"].use_history for _, _, m in recorded)):
            changed(f"--{name} {getattr(opts, name)}", [(d, r.args.get(name), getattr(opts, name))
                                                        for d, r, _ in recorded])
    if "data_file" in opts.typed:
        changed(f"--data_file {opts.data_file}", [(d, r.training_file, str(Path(opts.data_file).resolve()))
                                                  for d, r, m in recorded if m["ablation"].use_history])
    if "template_filename" in opts.typed:
        differ = [f"--model {d}" for d, r, m in recorded if m["template"] is not None and m["template"] != r.template]
        if differ:
            lines.append(f"--template_filename {opts.template_filename} overrides the template in the run record of "
                         f"{', '.join(differ)}")
    if "config" not in opts.typed:
        for text in opts.overrides:
            dotted = text.split("=", 1)[0]
            changed(f"--set {text}", [(d, _lookup(r.config, dotted), _lookup(m["config"].resolved(), dotted))
                                      for d, r, m in recorded])
    return list(dict.fromkeys(lines))  # a folder given twice says it once


def _sections(resolved: dict) -> dict:
    return {k: v for k, v in resolved.items() if k != "overrides"}


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list:
    """The dotted keys whose values differ between two configs."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


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
    first = members[0]
    resolved_opts = dataclasses.replace(opts, data_file=first["data_file"], **first["values"])
    template = first["template"] if first["template_recorded"] else None
    return Settings(opts=resolved_opts, config=first["config"], template_text=template, pool=first["pool"],
                    notices=_notices(opts, pairs, members), records=dict(pairs))
