#!/usr/bin/env python
"""Fine-tune a causal LM to speak like a film character (Chameleons).

The recipe, top to bottom: parse flags, read the config, load the dialogue file, sample per
character, split off validation, build prompts and tokenize, then (unless --dry_run) build the
model, train with HF Trainer (DeepSpeed when asked) and save the best model.

    torchrun --nproc_per_node=8 train_distributed_Chameleons.py --config config_Chameleons_30B.json \
        --deepspeed ds_config_zero3_optimized.json --ablation_config context_only \
        --output_dir outputs/run --max_samples_per_user 2 --sample_seed 42
"""

import dataclasses

from chameleons.core import launch, outputs, quiet
from chameleons.core.config import load_config
from chameleons.core.errors import user_errors_exit
from chameleons.corpus import data, splitting
from chameleons.text import encoding
from chameleons.run import cli, preflight, resubmit
from chameleons.run.run_spec import RunSpec


def main(argv=None) -> int:
    launch.adopt_slurm_ranks()
    quiet.quiet_console()
    opts = cli.parse_train_args(argv)
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    spec = RunSpec.from_options(opts, config)  # every setting that shapes the run, decided once
    if outputs.check_output_dir(opts.output_dir, overwrite=opts.overwrite_output_dir,
                                resume=opts.resume_from_checkpoint, dry_run=opts.dry_run):
        return resubmit.already_finished(opts.output_dir, spec)

    # Checks without torch (chameleons/run/preflight.py): a bad input is reported in well under a second.
    inputs = preflight.check_inputs(opts, config)
    corpus = data.load_corpus(spec.training_file)
    data.require_samples(corpus)
    split = splitting.split_train_val(corpus.samples, spec.split_settings())
    splitting.check_validation_share(split, opts.accept_val_share, corpus.path)
    inputs = dataclasses.replace(inputs, notices=inputs.notices + split.notices)
    preflight.require_trainable(corpus.path, split.stats.train, split.stats.validation)
    builder = spec.prompt_builder(spec.history(split.pool_samples(), corpus.samples, split.index))

    from chameleons.train import training  # torch, transformers: the checks that need them, then the run

    checks = training.check_run(opts, config, inputs)
    tokenizer = encoding.load_tokenizer(config.model.tokenizer)
    if opts.deepspeed and not opts.dry_run:
        launch.adopt_single_process()
    recipe = training.TrainingRun(opts, spec, checks, training.RunData(
        corpus, split, builder, tokenizer, config.resolve_path(config.data.cache_dir)))
    recipe.prepare()  # tokenize and plan
    if opts.dry_run:
        return recipe.write_dry_run()
    return recipe.run()


if __name__ == "__main__":
    with user_errors_exit(launch.maybe_rank_zero):
        code = main()
    launch.exit_worker(code)
