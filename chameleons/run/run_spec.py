"""The run spec: every setting that shapes a run's split, prompts and model, decided once from
the flags and the config. Training saves it as the model folder's run record (`run_record.json`);
prediction, `tools/audit_split.py`, resubmission and the wandb config are built from it, and
`RunSpec.diff` is the one place that says which settings two runs differ in. Which flags belong
in it is said where each flag is declared (`cli.flag(..., shapes=...)`)."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.config import Config, config_from_raw
from ..core.errors import UserError
from ..core.outputs import FINISHED_MARKER, RUN_RECORD, write_json
from ..corpus.splitting import SplitSettings
from ..text.prompts import DEFAULT_TEMPLATE, HistoryIndex, PromptBuilder, parse_template, read_template
from .cli import DataOptions, TrainOptions, shaping_flags

FORMAT = 2  # format 1 (before the spec) kept the flags and config in training_config.json only
IGNORED_KEYS = {"overrides", "data.cache_dir"}  # config keys that do not change a run's result
SCOPES = ("run", "prompts")


@dataclass(frozen=True)
class Difference:
    """One setting two specs disagree on; `settle` is the flag that decides it."""

    setting: str
    old: object
    new: object
    settle: str

    def __str__(self) -> str:
        return f"{self.setting} ({json.dumps(self.old, default=str)} -> {json.dumps(self.new, default=str)})"


@dataclass(frozen=True)
class RunSpec:
    flags: dict  # the flags marked `shapes`, by name
    config: Config  # overrides applied
    training_file: str  # as given; the record and `settings` hold it absolute
    template: str | None  # the detailed template's text; None with the simple style

    @classmethod
    def from_options(cls, opts, config: Config) -> "RunSpec":
        """The spec a command's flags ask for (the template file is read here, once)."""
        flags = {name: getattr(opts, name) for name in shaping_flags(type(opts))}
        config.ablation(opts.ablation_config)  # an unknown name is one line before anything is read
        path = opts.data_file or config.resolve_path(config.data.train_file)
        template = None
        if opts.prompt_style == "detailed":
            source = opts.template_filename or DEFAULT_TEMPLATE
            template = read_template(source)
            parse_template(template, source)  # a malformed file is named here, not as the record
        return cls(flags, config, str(path), template)

    @property
    def ablation(self):
        return self.config.ablation(self.flags["ablation_config"])

    def split_settings(self) -> SplitSettings:
        return SplitSettings.from_flags(self.flags)

    def history(self, pool_samples, samples, index=None):
        """The history lines `use_history` prompts draw on (None without it)."""
        return HistoryIndex.for_pool(pool_samples, samples, index) if self.ablation.use_history else None

    def prompt_builder(self, history=None) -> PromptBuilder:
        """The one way every entry point (training, prediction, the audit tool) builds prompts."""
        return PromptBuilder(self.ablation, self.flags["prompt_style"], history,
                             self.config.training.max_context_turns, template_text=self.template)

    def prompt_flags(self) -> dict:
        """The flags that shape a prompt, by name."""
        return {k: self.flags[k] for k in shaping_flags(DataOptions, "prompts")}

    def settings(self, scope: str = "run") -> dict:
        """{setting: value}: with `run` every setting that shapes the result; with `prompts` those
        that shape a prompt (the split's flags and the file too when prompts show history)."""
        ablation = self.ablation
        if scope == "run":
            out = {f"--{k}": v for k, v in self.flags.items()}
            out.update({k: v for k, v in _flatten(self.config.resolved()).items() if k not in IGNORED_KEYS})
        else:
            out = {f"--{k}": v for k, v in self.prompt_flags().items()}
            out[f"ablation_configs.{ablation.name}"] = asdict(ablation)
            out["training.max_context_turns"] = self.config.training.max_context_turns
            out["training.max_length"] = self.config.training.max_length
        if scope == "run" or ablation.use_history:
            out.update({f"--{k}": self.flags[k] for k in shaping_flags(DataOptions, "split") if k in self.flags})
            out["training file"] = str(Path(self.training_file).resolve())
        out["prompt template"] = self.template
        return out

    def diff(self, other: "RunSpec", scope: str = "run") -> list:
        """The settings of `scope` both specs hold and disagree on, in a stable order."""
        mine, theirs = self.settings(scope), other.settings(scope)
        return [Difference(k, mine[k], theirs[k], _settle(k)) for k in sorted(mine.keys() & theirs.keys())
                if mine[k] != theirs[k]]

    def record(self) -> dict:
        return {"format": FORMAT, "flags": self.flags, "config": _sections(self.config.resolved()),
                "overrides": list(self.config.overrides), "training_file": str(Path(self.training_file).resolve()),
                "prompt_template": self.template}

    def save(self, output_dir):
        write_json(Path(output_dir, RUN_RECORD), self.record())

    @classmethod
    def from_record(cls, head: dict, path: Path) -> "RunSpec":
        """A spec `record()` wrote (`path` names where it was read in errors)."""
        if head.get("format") != FORMAT:
            raise UserError(f"{path}: format {head.get('format')!r} is not one this version reads (1 or {FORMAT})")
        return cls(_field(head, "flags", dict, path), config_from_raw(path, _field(head, "config", dict, path)),
                   _field(head, "training_file", str, path), _template(head, path))

    @classmethod
    def read(cls, folder, legacy: bool = False) -> "RunSpec | None":
        """A run folder's spec: its run record, or (`legacy`) a run without one rebuilt from its
        training_config.json; None when the folder has neither."""
        folder = Path(folder)
        path = folder / RUN_RECORD
        if path.is_file():
            head = read_json(path)
            if head.get("format") == 1:
                return _from_finished(folder, _field(head, "training_file", str, path), _template(head, path))
            return cls.from_record(head, path)
        if legacy and (folder / FINISHED_MARKER).is_file():
            return _from_finished(folder, None, None)
        return None


def _from_finished(folder: Path, training_file, template) -> RunSpec:
    """A run recorded before the spec: its flags and config from training_config.json."""
    path = folder / FINISHED_MARKER
    trained = read_json(path)
    args = _field(trained, "args", dict, path)
    config = config_from_raw(path, _sections(_field(trained, "config", dict, path)))
    flags = {name: args[name] for name in shaping_flags(TrainOptions) if name in args}
    if training_file is None:
        training_file = str(Path(args.get("data_file") or config.resolve_path(config.data.train_file)).resolve())
    if template is None and args.get("prompt_style") == "detailed":
        template = read_template(args.get("template_filename") or DEFAULT_TEMPLATE)
    return RunSpec(flags, config, training_file, template)


def read_json(path: Path) -> dict:
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


def _template(head: dict, path: Path):
    template = _field(head, "prompt_template", (str, type(None)), path)
    if template is not None:
        parse_template(template, path)
    return template


def _sections(resolved: dict) -> dict:
    return {k: v for k, v in resolved.items() if k != "overrides"}


def _flatten(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            out.update(_flatten(v, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _settle(setting: str) -> str:
    if setting.startswith("--"):
        return setting
    return {"training file": "--data_file", "prompt template": "--template_filename"}.get(
        setting, f"--set {setting}=..." if "." in setting else setting)
