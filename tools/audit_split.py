#!/usr/bin/env python3
"""Leak report of a run's split: does any validation target's text reach a training prompt,
history line or target, in any epoch? (chameleons/text/split_audit.py says how it compares.)

    python tools/audit_split.py outputs/run
    python tools/audit_split.py --config config_Chameleons_30B.json --output_dir outputs/audit \
        --max_samples_per_user 2 --ablation_config profile_and_history_and_context --resample_each_epoch

With a run folder it reads the run spec the run recorded (run_record.json of a training run,
plan.json of a dry run; training_config.json or split_audit.json of older runs) and, when
present, split_manifest.json: the validation and
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
from chameleons.text import split_audit
from chameleons.run import cli
from chameleons.run.run_spec import RunSpec, read_json

MANIFEST = "split_manifest.json"
PLAN = "plan.json"


def recorded_spec(run_dir: Path) -> RunSpec:
    """The run spec a run folder recorded: a training run's run record, a dry run's plan, or the
    flags of an older dry run's split_audit.json."""
    spec = RunSpec.read(run_dir, legacy=True)
    for path in (run_dir / PLAN, run_dir / split_audit.AUDIT_NAME):  # a dry run's, or an earlier audit's
        if spec is None and path.is_file() and "run_spec" in read_json(path):
            spec = RunSpec.from_record(read_json(path)["run_spec"], path)
    if spec is None and (run_dir / split_audit.AUDIT_NAME).is_file():
        opts = _options_of(run_dir / split_audit.AUDIT_NAME)
        spec = RunSpec.from_options(opts, load_config(opts.config, opts.overrides, opts.config_flags()))
    if spec is None:
        raise UserError(f"{run_dir}: no run record, {PLAN} or {split_audit.AUDIT_NAME} with the run's settings (run a "
                        f"--dry_run into it, or give the training flags instead of a folder)")
    return spec


def _options_of(path: Path) -> cli.TrainOptions:
    args = read_json(path).get("args")
    if not isinstance(args, dict):
        raise UserError(f"{path}: no 'args' object (the run's flags)")
    known = {f.name for f in dataclasses.fields(cli.TrainOptions)}
    missing = sorted(f.name for f in dataclasses.fields(cli.TrainOptions) if f.name not in args
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise UserError(f"{path}: field args.{missing[0]} missing")
    return cli.TrainOptions(**{k: v for k, v in args.items() if k in known})


def options(argv) -> tuple[RunSpec, Path, bool]:
    """The spec to audit, the folder the report goes to, and whether that folder is the run's."""
    if len(argv) == 1 and not argv[0].startswith("-"):
        run_dir = Path(argv[0])
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a run folder")
        return recorded_spec(run_dir), run_dir, True
    opts = cli.parse_train_args(argv)
    return RunSpec.from_options(opts, load_config(opts.config, opts.overrides, opts.config_flags())), \
        Path(opts.output_dir), False


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


def run_audit(spec: RunSpec, run_dir: Path | None) -> dict:
    corpus = load_corpus(spec.training_file)
    split = splitting.split_train_val(corpus.samples, spec.split_settings())
    builder = spec.prompt_builder(spec.history(split.pool_samples(), corpus.samples, split.index))
    n_epochs = spec.flags["max_epochs"] if spec.flags["resample_each_epoch"] else 1
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
    return {**report, "samples_from": source, "run_spec": spec.record()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with user_errors_exit():
        spec, run_dir, recorded = options(argv)
        report = run_audit(spec, run_dir if recorded else None)
    out = run_dir / split_audit.AUDIT_NAME
    outputs.write_json(out, report)
    print(split_audit.summary_line(split_audit.summary(report)).split(None, 1)[1] + f"; samples {report['samples_from']}")
    for ex in report["examples"]:
        print(f"  leak: validation {ex['validation_sample']} {ex['text'][:80]!r} shown in the {ex['shown_in']} of "
              f"training sample {ex['training_sample']} (epoch {ex['epoch']})")
    print(f"wrote {out}")
    return 1 if report["leaked_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
