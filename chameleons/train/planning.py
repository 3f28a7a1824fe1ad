"""What a run will do, before any model is loaded: the dry run's plan.json and its printout."""

import math
from dataclasses import dataclass, replace

from . import memory, zero3
from ..corpus import leak_checks, splitting
from ..corpus.sampling import GUIDE_SIZES, sampled_counts
from ..text import split_audit


def steps_per_epoch(n_train: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """As HF Trainer counts them: batches per rank, then optimizer steps (a partial last one counts)."""
    if n_train == 0:
        return 0
    batches_per_rank = math.ceil(n_train / (batch_size * world_size))
    return math.ceil(batches_per_rank / grad_accum)


def _percentile(sorted_values, q):
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def token_stats(lengths, prompt_lens, truncated) -> dict:
    kept = [(n, p) for n, p in zip(lengths, prompt_lens) if n > 0]
    values = sorted(n for n, _ in kept)
    total = sum(values)
    supervised = sum(n - p for n, p in kept)
    return {
        "encoded": len(lengths),
        "kept": len(kept),
        "dropped_target_too_long": len(lengths) - len(kept),
        "truncated": sum(1 for t, n in zip(truncated, lengths) if t and n > 0),
        "length_min": values[0] if values else 0,
        "length_median": _percentile(values, 0.5),
        "length_p95": _percentile(values, 0.95),
        "length_max": values[-1] if values else 0,
        "tokens_total": total,
        "supervised_tokens": supervised,
        "supervised_share": round(supervised / total, 4) if total else 0.0,
    }


def encoded_token_stats(encoded) -> dict:
    """Over the rows this run uses (epoch 0's training set and validation), dropped ones included."""
    ds = encoded.dataset
    lengths, prompt_lens, truncated = ds["length"][:], ds["prompt_len"][:], ds["truncated"][:]
    used = set(s.sample_id for s in encoded.split.val) | set(s.sample_id for s in encoded.split.train)
    rows = [i for i, sid in enumerate(encoded.dataset_ids) if sid in used]
    return token_stats([lengths[i] for i in rows], [prompt_lens[i] for i in rows], [truncated[i] for i in rows])


def guide_splits(corpus, split) -> dict:
    """The split for every N of the guide table, by the same rule as the run's own split (the
    run's own for its N), so the table promises what training will get."""
    out = {}
    for n in GUIDE_SIZES:
        if n == split.max_per_user:
            out[n] = split.stats
        else:
            out[n] = splitting.split_train_val(corpus.samples, replace(split.settings, max_per_user=n),
                                               index=split.index).stats
    return out


@dataclass(frozen=True)
class Schedule:
    """What the plan's schedule is computed from: the processes, the epochs, and the seconds per
    optimizer step its hours assume (--sec_per_step)."""

    world_size: int
    max_epochs: int
    sec_per_step: float


@dataclass(frozen=True)
class ModelCosts:
    """The configured model's checkpoint cost (the disk check and the plan) and memory setup (the
    plan's estimate and token budget); None when its config is not on this machine."""

    checkpoints: dict | None = None
    memory_setup: memory.MemorySetup | None = None
    startup: dict | None = None  # what the run is expected to pay before its first step


READ_BYTES_PER_S = 2e9  # assumed read speed of the model's files (a local NVMe or a good network disk)
SET_UP_S = 15  # imports, process group, tokenizer, DeepSpeed and AutoEP set-up: measured on CPU here


def startup_estimate(n_params: int, random_init: bool, world_size: int = 1, cached: bool = False,
                     ranks_per_node: int | None = None) -> dict:
    """Launch to the first step, expected: rank 0 reads the bf16 model whole (transformers under
    ZeRO-3 loads on rank 0 and partitions from there) at READ_BYTES_PER_S, or, from a partition
    cache (`initial_weights`), every node its ranks' shares at once (they share its disk); plus
    the set-up."""
    share = min(ranks_per_node or world_size, world_size) / world_size if cached else 1
    read = 0 if random_init else int(2 * n_params * share)
    return {"model_read_bytes": read, "assumed_read_bytes_per_s": READ_BYTES_PER_S, "set_up_s": SET_UP_S,
            "expected_s": round(read / READ_BYTES_PER_S + SET_UP_S), "partition_cache": cached}


def make_plan(corpus, split, encoded, training, schedule: Schedule, costs: ModelCosts | None = None) -> dict:
    """plan.json: the data, the split, token lengths, the schedule and its hours, the memory
    estimate and the token budget, micro-batch sizes, the checkpoint cost and the guide table."""
    from ..text.batching import StepShape, micro_batch_plan  # imports torch: not needed by the checks before the plan

    costs = costs or ModelCosts()
    world_size, max_epochs, sec_per_step = schedule.world_size, schedule.max_epochs, schedule.sec_per_step
    tokens = encoded_token_stats(encoded)
    figures = memory_figures(costs.memory_setup, world_size, supervised_share_p95(encoded), training.max_length)
    budget = token_budget(training, figures)
    n_train, n_val = len(encoded.train_rows(0)), len(encoded.val_rows)
    bs, ga = training.batch_size, training.gradient_accumulation_steps
    per_epoch = steps_per_epoch(n_train, bs, world_size, ga)
    by_record = sampled_counts(corpus.samples, "record", GUIDE_SIZES)
    table = []
    for n, stats in guide_splits(corpus, split).items():
        key = "all" if n is None else n
        train = stats.train
        steps = steps_per_epoch(train, bs, world_size, ga)
        table.append({
            "max_samples_per_user": key,
            "samples": stats.sampled,
            "samples_if_grouped_by_record": by_record[key],
            "validation_samples": stats.validation,
            "validation_share": stats.validation_share,
            "train_samples": train,
            "lost_to_split": stats.lost_to_split,
            "steps_per_epoch": steps,
            "hours_per_epoch": round(steps * sec_per_step / 3600, 2),
            "hours_max_epochs": round(steps * sec_per_step * max_epochs / 3600, 1),
        })
    return {
        "data": corpus.summary(),
        "sampling": {
            "max_samples_per_user": split.max_per_user,
            "sample_seed": split.sample_seed,
            "group_by": split.group_by,
            "resample_each_epoch": encoded.resample,
        },
        "split": {**split.stats.as_dict(), "val_ratio": split.val_ratio, "train_encoded": n_train, "validation_encoded": n_val},
        "tokens": tokens,
        "schedule": {
            "world_size": world_size,
            "batch_size": bs,
            "gradient_accumulation_steps": ga,
            "samples_per_optimizer_step": bs * world_size * ga,
            "steps_per_epoch": per_epoch,
            "max_epochs": max_epochs,
            "max_steps": per_epoch * max_epochs,
            "sec_per_step": sec_per_step,
            "hours_per_epoch": round(per_epoch * sec_per_step / 3600, 2),
        },
        "micro_batches": micro_batch_plan([encoded.lengths[r] for r in encoded.train_rows(0)], StepShape(bs, world_size, ga),
                                          training.batching == "packed", budget, training.seed),
        "memory": figures,
        "checkpoints": costs.checkpoints,
        "startup": costs.startup,
        "guide_table": table,
    }


def model_costs(config, zero_stage, world_size: int, ranks_per_node: int, ep_size: int = 1,
                cached: bool = False) -> ModelCosts:
    """The checkpoint cost and memory setup of the configured model, from its shape (built once,
    on the meta device); both None when its config is not on this machine."""
    facts = zero3.model_facts(config.model)
    if facts is None:
        return ModelCosts()
    hf_config, n_params = facts
    gpu, source = memory.gpu_bytes(config.training.gpu_memory_gib)
    setup = memory.MemorySetup(shape=memory.shape_of(hf_config, n_params), zero_stage=zero_stage, gpu_bytes=gpu,
                               checkpointing=config.model.gradient_checkpointing, lora=bool(config.lora),
                               gpu_source=source, ep_size=ep_size)
    n = None if config.lora else n_params
    cost = zero3.checkpoint_cost(n, zero_stage, config.training.save_total_limit, world_size,
                                 min(world_size, ranks_per_node), config.training.full_checkpoint_minutes > 0)
    return ModelCosts(checkpoints=cost, memory_setup=setup,
                      startup=startup_estimate(n_params, bool(config.model.random_init), world_size, cached,
                                               ranks_per_node))


def supervised_share_p95(encoded) -> float:
    """The 95th-percentile supervised share of a training sample (the memory model's logits)."""
    prompt_lens = encoded.dataset["prompt_len"][:]
    shares = sorted((encoded.lengths[r] - prompt_lens[r]) / encoded.lengths[r] for r in encoded.train_rows(0))
    return round(_percentile(shares, 0.95), 4)


def memory_figures(setup, world_size: int, share: float, max_length: int):
    if setup is None:
        return None
    figures = memory.estimate(setup, world_size, share, max_length)
    return {**figures, "gpu_source": setup.gpu_source}


def token_budget(training, figures):
    """The budget the run uses: the configured number, none ("off", or batches that are not
    packed), or the memory model's ("auto"; at least max_length, so a sample is never cut)."""
    value = training.max_tokens_per_micro_batch
    if training.batching != "packed" or value == "off":
        return None
    if value != "auto":
        return value
    if figures is None:
        return None
    return figures["budget"] or training.max_length


def _startup_line(startup) -> list:
    if startup is None:
        return []
    read = startup["model_read_bytes"]
    who = ("every node reads its ranks' partitions from the partition cache" if startup.get("partition_cache")
           else "rank 0 reads the model")
    what = (f"{who} ({read / 2**30:,.1f} GiB) at an assumed {startup['assumed_read_bytes_per_s'] / 1e9:g} GB/s, "
            if read else "the model is drawn at random, ")
    return [f"start-up   about {startup['expected_s']:,} s expected from launch to the first step: {what}plus about "
            f"{startup['set_up_s']} s of imports and DeepSpeed set-up; the log's start-up line says what it took"]


def _checkpoint_line(ck) -> str:
    if ck is None:
        return "checkpoint cost not estimated (model config not on this machine, or LoRA)"
    gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
    stage = {3: "ZeRO-3", 2: "ZeRO-2", 1: "ZeRO-1"}.get(ck["zero_stage"], "no DeepSpeed")
    final = ("the final bf16 model is written at the end, every rank its share" if ck["zero_stage"] == 3 else
             "the bf16 model is in every checkpoint")
    return (f"checkpoint {ck['parameters'] / 1e9:,.2f} B parameters, {stage}: {gib(ck['evaluation_checkpoint_bytes'])} "
            f"per evaluation-time checkpoint (weights), {gib(ck['checkpoint_bytes'])} per resumable one (every "
            f"training.full_checkpoint_minutes and on a stop); {ck['kept']} kept at most (the newest resumable, the best, "
            f"the newest) + final model {gib(ck['final_model_bytes'])} = {gib(ck['disk_bytes'])} of disk; host RAM per node "
            f"at most {gib(ck['host_ram_bytes_save_node'])} at a resumable save, {gib(ck['host_ram_bytes_resume_node'])} "
            f"at a resume, {gib(ck['host_ram_bytes_best_restore_node'])} at the best-model restore; {final} "
            f"({gib(ck['host_ram_bytes_export_node'])} of host RAM per node)")


def _memory_line(plan: dict) -> str:
    m, mb = plan.get("memory"), plan["micro_batches"]
    if m is None:
        return "memory     not estimated (model config not on this machine)"
    gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
    mib = lambda b: f"{b / 2**20:,.2f} MiB"  # noqa: E731
    stage = f"ZeRO-{m['zero_stage']}" if m["zero_stage"] else "no DeepSpeed"
    fits = (f"{m['budget']:,} tokens" if m["budget"] else
            "none: not even one max_length sample fits, the run is likely to run out of memory")
    used = "no budget" if mb["budget"] is None else f"budget in use {mb['budget']:,}"
    largest = mb["tokens_per_micro_batch_max"]
    after = mb["tokens_per_micro_batch_max_after_split"] if mb["budget"] else largest
    ep = f", expert parallel size {m['ep_size']}: only its own experts gathered" if m.get("ep_size", 1) > 1 else ""
    return (f"memory     estimated per GPU of {gib(m['gpu_bytes'])} ({m['gpu_source']}; {stage}, {m['world_size']} "
            f"ranks{ep}): states {gib(m['states'])} + ZeRO-3 gathers {gib(m['zero3_gathers'])} + reserve "
            f"{gib(m['reserved_bytes'])}; per token {mib(m['activation_bytes_per_token'])} of activations + "
            f"{mib(m['logit_bytes_per_supervised_token'])} of logits per supervised token (95th-percentile share "
            f"{m['supervised_share']:.1%}); the memory model's budget {fits}, {used}; largest micro-batch "
            f"{largest:,} tokens: peak {gib(memory.peak_bytes(m, largest))}, {gib(memory.peak_bytes(m, after))} "
            f"as it runs")


def _micro_line(sc: dict, mb: dict) -> str:
    kind = "real tokens" if mb["packed"] else "computed: rows x longest row"
    if mb["budget"] is None:
        held = "no token budget"
    elif mb["over_budget"] == 0:
        held = f"budget {mb['budget']:,} held by every micro-batch"
    else:
        held = (f"budget {mb['budget']:,} exceeded by {mb['over_budget']:,} of {mb['micro_batches']:,}: those run in "
                f"parts of at most {mb['tokens_per_micro_batch_max_after_split']:,} tokens")
    return (f"micro      {sc['batch_size']} samples per micro-batch, tokens median {mb['tokens_per_micro_batch_median']:,} "
            f"/ max {mb['tokens_per_micro_batch_max']:,} ({kind}); {held}; micro-batches per rank per optimizer step "
            f"median {mb['micro_batches_per_step_median']} / max {mb['micro_batches_per_step_max']} (one shuffled epoch)")


def _device_line(device) -> list:
    """The device, precision and attention kernel the run will use (`model_setup.device_policy`,
    the same decision training logs)."""
    if not device:
        return []
    return [f"device     {'GPU' if device['on_gpu'] else 'CPU'}, {'bf16' if device['bf16'] else 'fp32'}, "
            f"attention {device['attn_implementation']}, large host tensors on "
            f"{'huge pages' if device.get('huge_pages') else '4 KiB pages'}"]


def format_plan(plan: dict) -> str:
    d, sp, t, sc = plan["data"], plan["split"], plan["tokens"], plan["schedule"]
    skipped = ", ".join(f"{k} {v:,}" for k, v in d["skipped"].items()) or "none"
    lines = [
        f"data       {d['file']}: {d['records']:,} records, {d['data_items']:,} data items, "
        f"{d['samples']:,} samples, {d['characters']:,} characters ({d['characters_by_record']:,} by record)",
        f"skipped    {skipped}",
        f"sampling   max_samples_per_user={plan['sampling']['max_samples_per_user']} "
        f"seed={plan['sampling']['sample_seed']} group_by={plan['sampling']['group_by']}: {sp['sampled']:,} sampled",
        f"split      train {sp['train']:,} / validation {sp['validation']:,} = {sp['validation_share']:.2%} of the "
        f"sampled set (val_ratio {sp['val_ratio']}, val_seed {sp['val_seed']}, leak check {sp['leak_check']}); "
        f"lost to the split {sp['lost_to_split']:,}; {sp['validation_characters_without_train']} validation "
        f"characters have no training sample; {sp.get('fidelity_candidates', 0):,} validation items of characters it "
        f"trains on for --final_fidelity_items",
        leak_checks.named(sp["leak_check"]).plan_line(sp),
        f"tokens     length min {t['length_min']} / median {t['length_median']} / p95 {t['length_p95']} / max "
        f"{t['length_max']}; truncated {t['truncated']:,}, dropped {t['dropped_target_too_long']:,}; "
        f"supervised share {t['supervised_share']:.1%}",
        f"schedule   world size {sc['world_size']} x batch {sc['batch_size']} x accumulation "
        f"{sc['gradient_accumulation_steps']} = {sc['samples_per_optimizer_step']} samples/step; "
        f"{sc['steps_per_epoch']:,} steps/epoch, {sc['hours_per_epoch']} h/epoch at {sc['sec_per_step']} s/step",
        _micro_line(sc, plan["micro_batches"]),
        *_device_line(plan.get("device")),
        _memory_line(plan),
        _checkpoint_line(plan.get("checkpoints")),
        *_startup_line(plan.get("startup")),
        "",
        f"{'N':>5} {'samples':>9} {'by record':>10} {'validation':>11} {'share':>7} {'train':>9} {'lost':>7} "
        f"{'steps/epoch':>12} "
        f"{'h/epoch':>9} {'h x ' + str(sc['max_epochs']) + ' ep':>10}",
    ]
    for row in plan["guide_table"]:
        lines.append(f"{str(row['max_samples_per_user']):>5} {row['samples']:>9,} {row['samples_if_grouped_by_record']:>10,} "
                     f"{row['validation_samples']:>11,} {row['validation_share']:>7.1%} {row['train_samples']:>9,} "
                     f"{row['lost_to_split']:>7,} "
                     f"{row['steps_per_epoch']:>12,} {row['hours_per_epoch']:>9} {row['hours_max_epochs']:>10}")
    if plan.get("split_audit"):
        lines.insert(5, split_audit.summary_line(plan["split_audit"]))
    overrides = (plan.get("config") or {}).get("overrides")
    head = [f"overrides  {' '.join(overrides)}"] if overrides else []
    head += [f"notice     {notice}" for notice in plan.get("notices") or ()]  # e.g. trust_remote_code
    return "\n".join(head + lines)
