"""The run spec: every setting that shapes a run's split, prompts and model, decided once from
the flags and the config. Training saves it as the model folder's run record (`run_record.json`);
prediction, `tools/audit_split.py`, resubmission and the wandb config are built from it, and
`RunSpec.diff` is the one place that says which settings two runs differ in. Which flags belong
in it is said where each flag is declared (`cli.flag(..., shapes=...)`)."""

import dataclasses
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
# config keys that do not change what a run produces (data.train_file: the resolved "training file" stands for it)
IGNORED_KEYS = {"overrides", "data.cache_dir", "data.train_file", "training.logging_steps", "training.save_total_limit",
                "training.dataloader_num_workers", "training.ddp_timeout", "training.peak_tflops",
                "training.full_checkpoint_minutes"}
FLAG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.metadata.get("shapes")}


@dataclass(frozen=True)
class Difference:
    """One setting two specs disagree on; `settle` is the flag that decides it."""

    setting: str
    old: object
    new: object
    settle: str

    def __str__(self) -> str:
        if self.setting == "prompt template":
            return f"{self.setting} (differs)"
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
        template = checked_template(opts.template_filename) if opts.prompt_style == "detailed" else None
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
        """The settings of `scope` that differ, in a stable order: every config key (a section
        present on one side only, e.g. `lora`, counts), the flags both specs hold (an older record
        may lack a newer flag)."""
        mine, theirs = self.settings(scope), other.settings(scope)
        keys = (mine.keys() | theirs.keys()) - {k for k in mine.keys() ^ theirs.keys() if k.startswith("--")}
        return [Difference(k, mine.get(k), theirs.get(k), _settle(k)) for k in sorted(keys)
                if mine.get(k) != theirs.get(k)]

    def record(self) -> dict:
        return {"format": FORMAT, "flags": self.flags, "config": sections(self.config.resolved()),
                "overrides": list(self.config.overrides), "training_file": str(Path(self.training_file).resolve()),
                "prompt_template": self.template}

    def save(self, output_dir):
        write_json(Path(output_dir, RUN_RECORD), self.record())

    @classmethod
    def from_record(cls, head: dict, path: Path) -> "RunSpec":
        """A spec `record()` wrote (`path` names where it was read in errors)."""
        if head.get("format") != FORMAT:
            raise UserError(f"{path}: format {head.get('format')!r} is not one this version reads (1 or {FORMAT})")
        flags = _field(head, "flags", dict, path)
        missing = [name for name in shaping_flags(DataOptions) if name not in flags]
        if missing:
            raise UserError(f"{path}: key flags.{missing[0]} missing")
        return cls(flags, config_from_raw(path, _field(head, "config", dict, path)),
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
    config = config_from_raw(path, sections(_field(trained, "config", dict, path)))
    flags = {**FLAG_DEFAULTS, **{name: args[name] for name in shaping_flags(TrainOptions) if name in args}}
    if training_file is None:
        training_file = str(Path(args.get("data_file") or config.resolve_path(config.data.train_file)).resolve())
    if template is None and args.get("prompt_style") == "detailed":
        template = read_template(args.get("template_filename") or DEFAULT_TEMPLATE)
    return RunSpec(flags, config, training_file, template)


def checked_template(path=None) -> str:
    """A detailed template file's text, parsed under its own name (a malformed file is named, not
    the record that would carry it)."""
    source = path or DEFAULT_TEMPLATE
    text = read_template(source)
    parse_template(text, source)
    return text


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
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


def sections(resolved: dict) -> dict:
    """A resolved config's sections: a valid config file (its overrides already applied)."""
    return {k: v for k, v in resolved.items() if k != "overrides"}


def _flatten(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            out.update(_flatten(v, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _settle(setting: str) -> str:
    """The flag that decides `setting` (the file and the split flags together decide the history pool)."""
    if setting == "training file" or setting[2:] in shaping_flags(DataOptions, "split"):
        return "--data_file and the data flags"
    if setting.startswith("--"):
        return setting
    return "--template_filename" if setting == "prompt template" else f"--set {setting}=..."
