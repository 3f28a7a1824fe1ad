#!/usr/bin/env python
"""Generate continuations for a Chameleons file with one or more trained models (Chameleons).

The recipe, top to bottom: parse flags, read the config, the input file and the models'
tokenizer, build every prompt exactly as training built it, generate (resuming a killed run
from its shards), extract the answers, and write the output, its summary and an examples log;
with --evaluate, also score loss/perplexity on the targets and BLEU/ROUGE-L of the generations.

    python predict_Chameleons.py --model outputs/run --input_file test_leaderboard.json \
        --output_file outputs/run/test_pred.json   # settings from the model's run record
    torchrun --nproc_per_node=8 predict_Chameleons.py ...   # items split across ranks

See docs/PREDICTION.md.
"""

import sys
import time
from dataclasses import asdict
from pathlib import Path

from chameleons.core import launch
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.core.outputs import write_json, write_records, write_text
from chameleons.corpus import data
from chameleons.corpus.conversations import Conversations
from chameleons.text import encoding
from chameleons.run import run_record
from chameleons.evaluate import evaluation, fidelity, fidelity_summary
from chameleons.predict import generation, model_loading, prediction, predictor, ranks, shards
from chameleons.train import diskspace


def main(argv=None) -> int:
    started = time.time()
    launch.use_huge_pages()
    opts = prediction.parse_predict_args(argv)
    dist = ranks.Distributed.from_env()
    paths = shards.output_paths(opts.output_file)
    model_dirs = check_run(opts, dist)
    settings = run_record.resolve(opts, model_dirs)  # the models' run records, and the flags typed over them
    opts, spec, config = settings.opts, settings.spec, settings.config

    # Load: the input, the shared tokenizer, the history pool of the training file.
    records, jsonl = prediction.read_input(opts.input_file)
    diskspace.check_output_space(opts.output_file, Path(opts.input_file).stat().st_size,
                                 "the output holds every input record and its continuations")
    corpus = data.extract_samples(records, opts.input_file, for_prediction=True)
    if opts.evaluate and not any(s.target for s in corpus.samples):
        raise UserError(f"--evaluate: {opts.input_file} has no continuations to score against")
    training = training_data(opts, spec, settings.pool, dist)  # read once: history and fidelity
    samples, pool_samples = training or (None, None)
    builder = spec.prompt_builder(spec.history(pool_samples, samples) if training else None)
    # The checks above need no torch (a bad input is one line in well under a second); these do.
    model_loading.check_model_configs(model_dirs)
    tokenizer = model_loading.shared_tokenizer(model_dirs, config.model.tokenizer, warn=dist.warn)
    for line in settings.notices:  # all input is valid by now
        dist.notice(line)
    unrecorded = [d for d in model_dirs if settings.records[str(d)] is None]
    for line in prediction.training_run_warnings(unrecorded, opts, spec):
        dist.warn(line)
    sampling = generation.Sampling.from_options(opts)
    if sampling.greedy and opts.num_samples > 1 and len(model_dirs) == 1:
        dist.warn("--temperature 0 is greedy: the --num_samples continuations of an item will be identical")

    # Build prompts: the training encoder, prompt only.
    fmt = encoding.ChatFormat(tokenizer)
    max_length = opts.max_length or config.training.max_length
    rows = prediction.build_prompts(corpus.samples, builder, tokenizer, fmt, max_length)

    shards.check_output(opts.output_file, opts.overwrite)  # last check: tries a write
    fid = fidelity_setup(opts, training, corpus, model_dirs, dist)

    # Generate: every rank takes its share of the items not already in the shards. Models are
    # loaded when first needed, one at a time (an ensemble never holds two members).
    dist.init()
    generator = predictor.GeneratorSpec(opts.backend, tokenizer, fmt, sampling, max_length + opts.max_new_tokens,
                                        opts.tensor_parallel_size, opts.device_map,
                                        (config.model, config.training.seed) if opts.untrained else None)
    members = predictor.make_members(model_dirs, generator, dist)
    store = shards.PartStore(opts.output_file, dist.rank)
    meta = shards.run_meta(model_dirs, rows, sampling, opts.backend,
                           {**spec.prompt_flags(), "max_length": max_length}) \
        | ({"untrained": True} if opts.untrained else {})
    results, stats = prediction.generate_all(rows, predictor.Predictor(members, sampling, opts.batch_size),
                                             prediction.ShardRun(store, meta, opts.overwrite), dist)

    # Extract and write: answers were extracted per item; the output gets each item's own.
    summary = None
    if dist.is_main:
        prediction.attach_continuations(records, results)
        write_records(paths["output"], records, jsonl)
        write_text(paths["examples"], prediction.examples_log(rows, results, tokenizer, opts.log_examples))
        summary = run_summary(opts, paths, model_dirs, dist.world, max_length, sampling, corpus, rows, results,
                              stats, time.time() - started)
        if fid is not None:
            summary["fidelity"], summary["fidelity_file"] = character_fidelity(fid, corpus, results, paths, dist,
                                                                                  opts.untrained)

    # Evaluate: loss as training computes it (split across ranks), metrics of the first continuations.
    if opts.evaluate:
        evaluate(opts, config, corpus, builder, tokenizer, fmt, members, dist, results, paths["eval"])
        if dist.is_main:
            summary["evaluation_file"] = str(paths["eval"])

    if dist.is_main:
        finish(opts, paths, summary, started, store)
    dist.close()
    return 0


def check_run(opts, dist) -> list:
    """The checks that need no input read: the output can be placed, the backend fits the flags,
    every model folder is whole. The model folders, as paths."""
    shards.check_output(opts.output_file, opts.overwrite, probe=False)
    generation.check_backend(opts.backend, len(opts.model), dist.world, opts.evaluate, opts.tensor_parallel_size,
                             opts.device_map)
    model_dirs = model_loading.check_model_dirs(opts.model)
    if opts.untrained and (len(model_dirs) > 1 or opts.backend != "hf"):
        raise UserError("--untrained generates with the model one run started from: give one --model, --backend hf")
    if len(model_dirs) * opts.candidates_per_member < opts.num_samples:
        raise UserError(f"--candidates_per_member {opts.candidates_per_member} x {len(model_dirs)} models gives fewer "
                        f"candidates than --num_samples {opts.num_samples}")
    return model_dirs


def training_data(opts, spec, pool, dist):
    """The training file's samples and the run's pool of them (`prediction.training_pool`), read
    once for both users: use_history prompts (a missing file is an error) and rank 0's fidelity
    classifier (a missing file is a notice); None when neither needs them."""
    wants_fidelity = opts.fidelity == "on" and dist.is_main
    if not (spec.ablation.use_history or wants_fidelity):
        return None
    train_file = spec.training_file
    if not spec.ablation.use_history and not Path(train_file).is_file():
        dist.warn(f"fidelity: training file {train_file} not found: no fidelity figures (pass --data_file, or "
                  f"--fidelity off)")
        return None
    return prediction.training_pool(spec, pool)


def fidelity_setup(opts, training, corpus, model_dirs, dist):
    """Rank 0, --fidelity on: the speaker classifier of the first model's run (its training pool,
    never validation nor the input's references), cached in that model folder."""
    if opts.fidelity == "off" or not dist.is_main or training is None:
        return None
    train, train_pool = training
    return fidelity.setup(fidelity.TrainingPool(train, train_pool, Conversations(train)),
                          [s.target for s in corpus.samples if s.target]
                          + [c for s in corpus.samples for _, c in s.context], model_dirs[0], dist.warn,
                          opts.fidelity_context == "on")


def character_fidelity(fid, corpus, results, paths, dist, untrained: bool = False):
    """Per-item fidelity figures to <output>.fidelity.json; the run's summary, also printed."""
    rows, summary = fidelity.evaluate_items(fid, fidelity.prediction_items(corpus.samples, results), dist.warn)
    path = f"{paths['output']}.fidelity.json"
    write_json(path, {"summary": summary, "items": rows})
    print(("untrained model: " if untrained else "") + fidelity_summary.format_summary(summary), flush=True)
    return summary, path


def run_summary(opts, paths, model_dirs, world, max_length, sampling, corpus, rows, results, stats,
                seconds) -> dict:
    """<output>.summary.json: the settings, the counts, extraction problems, time and throughput."""
    own_turn_last = prediction.ends_on_character(corpus.samples)
    return {
        "input_file": str(opts.input_file),
        "output_file": str(paths["output"]),
        "models": [str(d) for d in model_dirs],
        "backend": opts.backend,
        "world_size": world,
        "untrained": opts.untrained,
        "ablation_config": opts.ablation_config,
        "prompt_style": opts.prompt_style,
        "max_length": max_length,
        "sampling": asdict(sampling),
        "counts": {
            **{k: v for k, v in corpus.summary().items() if k in ("records", "data_items", "characters")},
            "predicted": len(results),
            "ends_on_character": len(own_turn_last),
            "resumed": stats["resumed"],
            "generated_now": stats["generated_now"],
            "prompts_truncated": sum(1 for r in rows if r.truncated and r.ids),
            "prompts_too_long": sum(1 for r in rows if not r.ids),
            "shard_lines_unreadable": stats["shard_lines_unreadable"],
            "shard_lines_stale": stats["shard_lines_stale"],
        },
        "ends_on_character_items": own_turn_last,
        "extraction_problems": prediction.extraction_summary(results),
        "time": {"total_s": round(seconds, 3), "generation_s": stats["generation_seconds"]},
        "throughput": {
            "generated_tokens": stats["generated_tokens"],
            "items_per_s": round(stats["generated_now"] / stats["generation_seconds"], 3)
            if stats["generation_seconds"] else None,
            "tokens_per_s": round(stats["generated_tokens"] / stats["generation_seconds"], 1)
            if stats["generation_seconds"] else None,
        },
        "examples_log": str(paths["examples"]),
    }


def evaluate(opts, config, corpus, builder, tokenizer, fmt, members, dist, results, eval_path):
    """Rank 0 writes and prints the <output>.eval.json report: every member's loss on the
    targets, encoded as training encodes them, and BLEU/ROUGE-L of the first continuations."""
    scored, dropped, unlabelled = evaluation.supervised_rows(corpus.samples, builder, tokenizer, fmt,
                                                             config.training.max_length)
    member_rows = prediction.score_rows(scored, members, dist, opts.batch_size)
    if not dist.is_main:
        return
    labelled = [(results[s.sample_id]["continuations"][0], s.target) for s in corpus.samples
                if data.is_training_sample(s) and s.sample_id in results]
    report = {
        "input_file": str(opts.input_file),
        "max_length": config.training.max_length,
        "samples_scored": len(scored),
        "dropped_target_too_long": len(dropped),
        "unlabelled": unlabelled,
        "scores": evaluation.loss_report(members.dirs, member_rows),
        "generation": evaluation.reference_metrics([h for h, _ in labelled], [r for _, r in labelled]),
    }
    write_json(eval_path, report)
    print(evaluation.format_report(report), flush=True)


def finish(opts, paths, summary, started, store):
    """Rank 0: the summary written, the shards removed (the output is whole), one line printed."""
    summary["time"]["total_s"] = round(time.time() - started, 3)
    write_json(paths["summary"], summary)
    store.remove()
    c = summary["counts"]
    print(f"wrote {paths['output']}: {c['predicted']} items x {opts.num_samples} continuations "
          f"({c['resumed']} resumed, {c['generated_now']} generated); "
          f"{summary['extraction_problems']['continuations_with_problems']} extraction problems; "
          f"summary {paths['summary']}", flush=True)


if __name__ == "__main__":
    with user_errors_exit(launch.maybe_rank_zero), diskspace.full_disk_is_one_line(
            "the output", "the items generated so far are kept in <output_file>.parts; free space and rerun the "
                          "same command to resume from them"):
        sys.exit(main())
