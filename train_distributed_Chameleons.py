#!/usr/bin/env python
"""Fine-tune a causal LM to speak like a film character (Chameleons).

The recipe, top to bottom: parse flags, read the config, load the dialogue file, sample per
character, split off validation, build prompts and tokenize, then (unless --dry_run) build the
model, train with HF Trainer (DeepSpeed when asked) and save the best model. With --sweep, every
run is checked, split, tokenized and planned first, then each is trained and saved in turn, in
this one process (chameleons/run/sweep.py).

    torchrun --nproc_per_node=8 train_distributed_Chameleons.py --config config_Chameleons_30B.json \
        --deepspeed ds_config_zero3_optimized.json --ablation_config context_only \
        --output_dir outputs/run --max_samples_per_user 2 --sample_seed 42
"""

import dataclasses
import functools
import sys
from typing import NamedTuple

from chameleons.core import launch, outputs, quiet
from chameleons.core.config import load_config
from chameleons.core.errors import user_errors_exit
from chameleons.corpus import data, splitting
from chameleons.text import encoding
from chameleons.run import cli, preflight, resubmit, sweep
from chameleons.run.run_spec import RunSpec


def main(argv=None) -> int:
    launch.adopt_slurm_ranks()
    launch.use_huge_pages()
    quiet.quiet_console()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    opts = cli.parse_train_args(argv)
    # One run, or every run of a --sweep: all of them checked and split before the first starts.
    load_corpus = functools.lru_cache(data.load_corpus)  # the runs of a sweep share one read of each file
    runs = [run for run in (check_and_split(point, load_corpus) for point in sweep.points(opts, argv)) if run]
    if not runs:
        return 0

    from chameleons.train import training  # torch, transformers: the checks that need them, then the runs

    load_tokenizer = functools.lru_cache(encoding.load_tokenizer)
    recipes = [recipe(training, run, load_tokenizer, sweep=len(runs) > 1) for run in runs]
    for run in recipes:
        run.prepare()  # tokenize and plan: a run that cannot train is found before any run trains
    code = 0
    for run in recipes:
        if run.opts.dry_run:
            run.write_dry_run()
            continue
        code = run.run()  # build the model, train, save
        if code:  # a stopped run stops the sweep; the same command with --resume_from_checkpoint auto goes on
            break
    training.finish_distributed()
    return code


class Checked(NamedTuple):
    opts: cli.TrainOptions
    spec: RunSpec
    inputs: preflight.Inputs
    corpus: data.Corpus
    split: splitting.Split
    builder: object  # prompts.PromptBuilder


def check_and_split(point, load_corpus) -> Checked | None:
    """A run's inputs checked without torch, its data split and its prompts built; None when its
    folder holds this run finished."""
    _, opts = point
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    if outputs.check_output_dir(opts.output_dir, overwrite=opts.overwrite_output_dir,
                                resume=opts.resume_from_checkpoint, dry_run=opts.dry_run):
        resubmit.already_finished(opts, config)
        return None
    spec = RunSpec.from_options(opts, config)  # every setting that shapes the run, decided once
    inputs = preflight.check_inputs(opts, config)  # a bad input is reported in well under a second
    corpus = load_corpus(spec.training_file)
    data.require_samples(corpus)
    split = splitting.split_train_val(corpus.samples, spec.split_settings())
    splitting.check_validation_share(split, opts.accept_val_share, corpus.path)
    inputs = dataclasses.replace(inputs, notices=inputs.notices + split.notices)
    preflight.require_trainable(corpus.path, split.stats.train, split.stats.validation)
    builder = spec.prompt_builder(spec.history(split.pool_samples(), corpus.samples, split.index))
    return Checked(opts, spec, inputs, corpus, split, builder)


def recipe(training, run: Checked, load_tokenizer, sweep: bool):
    """The checks that need torch, then the run's TrainingRun (not yet tokenized)."""
    checks = training.check_run(run.opts, run.spec.config, run.inputs)
    tokenizer = load_tokenizer(run.spec.config.model.tokenizer)
    if run.opts.deepspeed and not run.opts.dry_run:
        launch.adopt_single_process()
    cache_dir = run.spec.config.resolve_path(run.spec.config.data.cache_dir)
    return training.TrainingRun(run.opts, run.spec, checks,
                                training.RunData(run.corpus, run.split, run.builder, tokenizer, cache_dir),
                                keep_initial=sweep)


if __name__ == "__main__":
    with user_errors_exit(launch.maybe_rank_zero):
        code = main()
    launch.exit_worker(code)
