#!/usr/bin/env python
"""Fine-tune a causal LM to speak like a film character (Chameleons).

The recipe, top to bottom: parse flags, read the config, load the dialogue file, sample per
character, split off validation, build prompts and tokenize, then (unless --dry_run) build the
model, train with HF Trainer (DeepSpeed when asked) and save the best model.

    torchrun --nproc_per_node=8 train_distributed_Chameleons.py --config config_Chameleons_30B.json \
        --deepspeed ds_config_zero3_optimized.json --ablation_config context_only \
        --output_dir outputs/run --max_samples_per_user 2 --sample_seed 42
"""

from chameleons import cli, data, encoding, launch, outputs, planning, prompts, quiet, splitting
from chameleons.config import load_config
from chameleons.errors import user_errors_exit


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
        return 0
    from chameleons import training

    checks = training.check_run(opts, config)

    corpus = data.load_corpus(opts.data_file or config.resolve_path(config.data.train_file))
    data.require_samples(corpus)
    split = splitting.split_train_val(corpus.samples, opts.max_samples_per_user, opts.sample_seed, opts.val_ratio,
                                      opts.val_seed, opts.sample_group_by, opts.val_leak_check)
    tokenizer = encoding.load_tokenizer(config.model.tokenizer)
    builder = prompts.PromptBuilder(ablation, opts.prompt_style, prompts.HistoryIndex(split.pool_samples()),
                                    config.training.max_context_turns, opts.template_filename)
    cache_dir = config.resolve_path(config.data.cache_dir)

    if opts.dry_run:
        encoded = encoding.encode_split(split, builder, tokenizer, config.training, cache_dir, opts.resample_each_epoch)
        costs = planning.model_costs(config, checks.zero_stage, opts.nproc_per_node, opts.nproc_per_node)
        plan = {**planning.make_plan(corpus, split, encoded, config.training, opts.nproc_per_node, opts.max_epochs,
                                      opts.sec_per_step, **costs),
                "config": config.resolved()}
        print(planning.format_plan(plan), flush=True)
        outputs.write_json(outputs.run_path(opts.output_dir, "plan.json"), plan)
        return 0

    return training.run(opts, config, checks, corpus, split, builder, tokenizer, cache_dir)


if __name__ == "__main__":
    with user_errors_exit():
        code = main()
    launch.exit_worker(code)
