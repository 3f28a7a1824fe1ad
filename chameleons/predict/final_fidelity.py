"""The training run's final fidelity evaluation (`--final_fidelity_items N`, off by default):
once the best model is saved, one continuation is generated for a fixed subset of validation
and scored as prediction scores it (`fidelity`), into <output_dir>/final_fidelity.json.

The subset is the one `tools/validation_subset.py` writes for the run (`validation_subset`: one
function for both), so a later `predict_Chameleons.py --fidelity on` of that file scores the
same items. Prompts are the validation rows training encoded (the ids its eval loss saw).

Every rank takes part: under ZeRO-3 a forward pass gathers each layer's parameters from every
rank, so `generate` is a collective. The items are split across ranks with padding (accelerate's
`split_between_processes`), so every rank makes the same number of `generate` calls; inside one
call transformers turns on `synced_gpus` itself when DeepSpeed ZeRO-3 is configured and the
world size is above 1 (`GenerationMixin._extract_generation_mode_kwargs`), which keeps a rank
whose sequences ended stepping until every rank's have. Results are gathered with accelerate's
`gather_object`; rank 0 scores and writes.
"""

import hashlib

from ..core.errors import UserError
from ..core.outputs import run_path, write_json
from ..evaluate import fidelity
from ..evaluate.fidelity_summary import format_summary

FILE_NAME = "final_fidelity.json"


def validation_subset(samples, validation_ids, n: int, trained=None, group_by: str = "user_hash") -> list:
    """The first n validation samples of characters the run trained on (`trained`: their group
    keys; None: any character) in the order of each item's content hash: not file position, seed
    or the order of the ids, so every run sharing the validation set and its characters gets the
    same items. `validation_ids` is the corpus's whole validation set (every sample of the
    validation conversations, never in any N's training): the run's own sampled validation holds
    no trained character at N = 1."""
    by_id = {s.sample_id: s for s in samples}
    missing = [i for i in validation_ids if i not in by_id]
    if missing:
        raise UserError(f"split_manifest.json: validation id {missing[0]} is not an item of the data file "
                        f"({len(missing)} missing): pass the run's training file as --data_file")
    kept = (by_id[i] for i in validation_ids if trained is None or by_id[i].group_key(group_by) in trained)
    return sorted(kept, key=lambda s: hashlib.blake2b(s.uid.encode()).hexdigest())[:n]


def default_sampling(seed: int):
    """Prediction's default sampling (one continuation per item), with the run's seed."""
    from .generation import Sampling

    return Sampling(seed=seed)


def generate_share(trainer, tokenizer, rows, batch_size: int) -> list:
    """(sample_id, continuation) of this rank's share of `rows` [(sample, prompt ids)], gathered
    from every rank (padding repeats an item; its duplicate is dropped by the caller)."""
    import torch
    from accelerate.utils import gather_object

    from ..text.encoding import ChatFormat
    from ..text.prompts import extract_answer
    from .generation import HFGenerator, prepare_for_inference, sample_seed

    model = trainer.model
    prepare_for_inference(model).eval()  # after the save: the saved config keeps training's settings
    generator = HFGenerator(model, tokenizer, ChatFormat(tokenizer), default_sampling(trainer.args.seed), 1)
    out = []
    with trainer.accelerator.split_between_processes(rows, apply_padding=True) as mine, torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            seeds = [[sample_seed(trainer.args.seed, 0, s.uid, 0)] for s, _ in batch]
            for (s, _), cands in zip(batch, generator.generate([ids for _, ids in batch], seeds)):
                out.append((s.sample_id, extract_answer(cands[0].text)[0]))
    return gather_object(out)


def final_fidelity(opts, trainer, encoded, data, max_length: int, runlog):
    """--final_fidelity_items N: generate for the run's fixed validation subset (every rank) and
    write the per-item figures and the summary (rank 0); the summary, or None when off or on
    ranks other than 0. A classifier that cannot be built is one notice, as in prediction.
    `data`: the run's `training.RunData` (the corpus, its prompt builder and tokenizer: items of the
    whole validation set are prompted as training prompts them, with the run's `max_length`)."""
    from ..text.encoding import ChatFormat, encode_samples

    if not opts.final_fidelity_items:
        return None
    split = encoded.split
    trained = {g for g, n in encoded.encodable_split().sizes.items() if n > 0}
    chosen = validation_subset(data.corpus.samples, sorted(split.whole_val), opts.final_fidelity_items, trained,
                               split.group_by)
    cols = encode_samples(chosen, data.builder, data.tokenizer, ChatFormat(data.tokenizer), max_length)
    rows = [(s, list(ids[:n])) for s, ids, n in zip(chosen, cols["input_ids"], cols["prompt_len"]) if ids]
    chosen = [s for s, _ in rows]
    generated = dict(generate_share(trainer, data.tokenizer, rows, trainer.args.per_device_eval_batch_size))
    if trainer.args.process_index != 0:
        return None
    return score_and_write(opts.output_dir, split, chosen, generated, runlog)


def score_and_write(output_dir, split, chosen, generated: dict, runlog):
    """Rank 0: the classifier of the run's training pool, the figures, the file and one line."""
    from ..corpus.conversations import Conversations

    notices = []
    warn = notices.append
    samples = list(split.val) + split.pool_samples()
    films = split.index if isinstance(split.index, Conversations) else Conversations(samples)
    held_out = [s.target for s in chosen] + [c for s in chosen for _, c in s.context]  # baselines come from contexts
    fid = fidelity.setup(fidelity.TrainingPool(samples, split.pool_samples(), films), held_out, output_dir, warn)
    record = {"items_requested": len(chosen), "notices": notices}
    if fid is None:
        line = f"final fidelity: no figures ({'; '.join(notices)})"
    else:
        items = [fidelity.Item(s.sample_id, s.uid, s.user_hash, [c for _, c in s.context], [generated[s.sample_id]],
                               s.target, sources=s.sources) for s in chosen]
        rows, summary = fidelity.evaluate_items(fid, items, warn)
        record.update(summary=summary, items=rows)
        line = f"final {format_summary(summary)}"
        if fid.fitted_now:
            fidelity.save_cache(output_dir, fid.attributor, warn)
    path = run_path(output_dir, FILE_NAME)
    write_json(path, record)
    runlog.line(f"{line}; {path}")
    print(line, flush=True)
    return record.get("summary")
