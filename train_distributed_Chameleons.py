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
import sys

from chameleons.core import launch, outputs, quiet
from chameleons.core.config import load_config
from chameleons.core.errors import user_errors_exit
from chameleons.corpus import data, splitting
from chameleons.text import encoding, prompts, split_audit
from chameleons.run import cli, preflight, resubmit
from chameleons.train import expert_parallel, planning


def main(argv=None) -> int:
    launch.adopt_slurm_ranks()
    quiet.quiet_console()
    opts = cli.parse_train_args(argv)
    config = load_config(opts.config, opts.overrides, opts.config_flags())
    ablation = config.ablation(opts.ablation_config)
    if outputs.check_output_dir(opts.output_dir, overwrite=opts.overwrite_output_dir,
                                resume=opts.resume_from_checkpoint, dry_run=opts.dry_run):
        if launch.rank() == 0:
            print(f"already finished: {opts.output_dir}", flush=True)
            notice = resubmit.finished_run_notice(opts.output_dir, opts.as_record(), config.resolved())
            if notice:
                print(notice, file=sys.stderr, flush=True)
        return 0

    # Checks without torch (chameleons/run/preflight.py): a bad input is reported in well under a second.
    inputs = preflight.check_inputs(opts, config)
    corpus = data.load_corpus(opts.data_file or config.resolve_path(config.data.train_file))
    data.require_samples(corpus)
    split = splitting.split_train_val(corpus.samples, splitting.SplitSettings.from_options(opts))
    splitting.check_validation_share(split, opts.accept_val_share, corpus.path)
    inputs = dataclasses.replace(inputs, notices=inputs.notices + split.notices)
    preflight.require_trainable(corpus.path, split.stats.train, split.stats.validation)
    history = prompts.HistoryIndex.for_pool(split.pool_samples(), corpus.samples, split.index) \
        if ablation.use_history else None
    builder = prompts.PromptBuilder(ablation, opts.prompt_style, history, config.training.max_context_turns,
                                    opts.template_filename)

    from chameleons.train import training  # torch, transformers: the checks that need them, then the run

    checks = training.check_run(opts, config, inputs)
    tokenizer = encoding.load_tokenizer(config.model.tokenizer)
    cache_dir = config.resolve_path(config.data.cache_dir)

    if opts.dry_run:
        tok = encoding.Tokenization(tokenizer, config.training.max_length, cache_dir)
        encoded = encoding.encode_split(split, builder, tok, opts.resample_each_epoch)
        audit = split_audit.audit_split(split, builder, corpus.samples,
                                        opts.max_epochs if opts.resample_each_epoch else 1)
        schedule = planning.Schedule(opts.nproc_per_node, opts.max_epochs, opts.sec_per_step)
        plan = {**planning.make_plan(corpus, split, encoded, config.training, schedule, checks.costs),
                "config": config.resolved(), "notices": checks.notices, "expert_parallel": checks.expert_parallel,
                "device": checks.device.record(),
                "split_audit": split_audit.summary(audit)}
        preflight.require_trainable(corpus.path, plan["split"]["train_encoded"], plan["split"]["validation_encoded"])
        print(planning.format_plan(plan), flush=True)
        print(expert_parallel.describe(checks.expert_parallel), flush=True)
        outputs.write_json(outputs.run_path(opts.output_dir, "plan.json"), plan)
        outputs.write_json(outputs.run_path(opts.output_dir, split_audit.AUDIT_NAME), {**audit, "args": opts.as_record()})
        return 0

    if opts.deepspeed:
        launch.adopt_single_process()
    return training.run(opts, config, checks, training.RunData(corpus, split, builder, tokenizer, cache_dir))


if __name__ == "__main__":
    with user_errors_exit(launch.maybe_rank_zero):
        code = main()
    launch.exit_worker(code)
