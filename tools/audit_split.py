#!/usr/bin/env python3
"""Leak report of a run's split: does any validation target's text reach a training prompt,
history line or target, in any epoch? (chameleons/text/split_audit.py says how it compares.)

    python tools/audit_split.py outputs/run
    python tools/audit_split.py --config config_Chameleons_30B.json --output_dir outputs/audit \
        --max_samples_per_user 2 --ablation_config profile_and_history_and_context --resample_each_epoch

With a run folder it reads the flags the run recorded (training_config.json of a finished run, or
split_audit.json of a dry run) and, when present, split_manifest.json: the validation and
training samples the run really used, which it also compares with the split recomputed from the
flags. Otherwise the flags are training's own. Writes <run folder>/split_audit.json, prints the
summary and up to 10 examples; exit code 0 without leaks, 1 with leaks, 2 on bad input.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core import outputs
from chameleons.core.config import load_config
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.corpus import splitting
from chameleons.corpus.data import load_corpus
from chameleons.text import prompts, split_audit
from chameleons.run import cli

FLAG_FILES = ("training_config.json", split_audit.AUDIT_NAME)
MANIFEST = "split_manifest.json"


def recorded_options(run_dir: Path) -> cli.TrainOptions:
    """The flags a run folder recorded, as training parsed them."""
    for name in FLAG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                args = json.loads(path.read_text(encoding="utf-8")).get("args")
            except (json.JSONDecodeError, AttributeError):
                raise UserError(f"{path}: not readable JSON with an 'args' object") from None
            if not isinstance(args, dict):
                raise UserError(f"{path}: no 'args' object (the run's flags)")
            known = {f.name for f in dataclasses.fields(cli.TrainOptions)}
            missing = sorted(f.name for f in dataclasses.fields(cli.TrainOptions)
                             if f.name not in args and f.default is dataclasses.MISSING
                             and f.default_factory is dataclasses.MISSING)
            if missing:
                raise UserError(f"{path}: field args.{missing[0]} missing")
            return cli.TrainOptions(**{k: v for k, v in args.items() if k in known})
    raise UserError(f"{run_dir}: no {' or '.join(FLAG_FILES)} with the run's flags (run a --dry_run into it, or "
                    f"give the training flags instead of a folder)")


def options(argv) -> tuple[cli.TrainOptions, Path | None]:
    if len(argv) == 1 and not argv[0].startswith("-"):
        run_dir = Path(argv[0])
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a run folder")
        return recorded_options(run_dir), run_dir
    return cli.parse_train_args(argv), None


def _manifest_sets(run_dir, by_id):
    """(validation samples, each epoch's training samples) from split_manifest.json, or None."""
    path = None if run_dir is None else run_dir / MANIFEST
    if path is None or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        val_ids = manifest["validation"]
        epoch_ids = [e["train"] for e in manifest["epochs"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not a split manifest (needs 'validation' and 'epochs[].train')") from None
    unknown = [i for i in val_ids + [i for ids in epoch_ids for i in ids] if i not in by_id]
    if unknown:
        raise UserError(f"{path}: sample {unknown[0]} is not in the data file (another file or version?)")
    return [by_id[i] for i in val_ids], [[by_id[i] for i in ids] for ids in epoch_ids]


def run_audit(opts: cli.TrainOptions, run_dir: Path | None) -> dict:
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    ablation = config.ablation(opts.ablation_config)
    corpus = load_corpus(opts.data_file or config.resolve_path(config.data.train_file))
    split = splitting.split_train_val(corpus.samples, splitting.SplitSettings.from_options(opts))
    history = prompts.HistoryIndex.for_pool(split.pool_samples(), corpus.samples, split.index) if ablation.use_history else None
    builder = prompts.PromptBuilder(ablation, opts.prompt_style, history, config.training.max_context_turns,
                                    opts.template_filename)
    n_epochs = opts.max_epochs if opts.resample_each_epoch else 1
    recorded = _manifest_sets(run_dir, {s.sample_id: s for s in corpus.samples})
    if recorded is None:
        report = split_audit.audit_split(split, builder, corpus.samples, n_epochs)
        source = "recomputed from the flags"
    else:
        val, epochs = recorded
        report = {**split_audit.audit(val, epochs, corpus.samples, builder), "grouping": split_audit.grouping(split)}
        same = sorted(s.sample_id for s in val) == sorted(s.sample_id for s in split.val) and all(
            sorted(s.sample_id for s in ep) == sorted(s.sample_id for s in split.epoch_train(e))
            for e, ep in enumerate(epochs))
        source = MANIFEST + (", as the flags recompute it" if same else ", which the flags do NOT recompute")
    return {**report, "samples_from": source, "args": opts.as_record()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with user_errors_exit():
        opts, run_dir = options(argv)
        report = run_audit(opts, run_dir)
    out = (run_dir or Path(opts.output_dir)) / split_audit.AUDIT_NAME
    outputs.write_json(out, report)
    print(split_audit.summary_line(split_audit.summary(report)).split(None, 1)[1] + f"; samples {report['samples_from']}")
    for ex in report["examples"]:
        print(f"  leak: validation {ex['validation_sample']} {ex['text'][:80]!r} shown in the {ex['shown_in']} of "
              f"training sample {ex['training_sample']} (epoch {ex['epoch']})")
    print(f"wrote {out}")
    return 1 if report["leaked_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
