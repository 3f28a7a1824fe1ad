"""Continuations for a Chameleons file, the flow: the flags, the input, prompts built exactly as
training builds them, the models turned into results (one model, or an ensemble ranking its
members' candidates), every rank's share generated and merged, the answers attached to the
input, and the run's summaries. The parts it drives live beside it: `predictor` (the models
turned into results), `ranks` (the launcher's ranks), `generation` (sampling,
seeds, the HF and vLLM generators), `model_loading` (model folders, fingerprints, loading one
member at a time, the shared tokenizer) and `shards` (output paths and the resumable per-rank
shards).

Prompt identity: a prompt is `encode_samples(..., with_target=False)`, the same builder, chat
format and truncation rule that training used, so for a sample that training did not truncate
the ids are exactly training's `input_ids[:prompt_len]`. Only the budget can differ: training
truncates to `max_length - len(target)`, prediction (which has no target) to `--max_length`.

Ensembles (several `--model`): each member proposes `--candidates_per_member` candidates per
item, every member scores every candidate, and the candidates are ranked by the ensemble's mean
per-token log-likelihood, log((1/M) * sum_m p_m(token)) averaged over the candidate's tokens (the
same ensemble probability that `evaluation` scores targets with). The best `--num_samples` are
kept, distinct answers first. Members are used one at a time (load, generate or score every
item, free, next), so peak memory is one model: generation runs members 1..M, scoring M..1
(the last generator is still loaded), 2M - 1 loads in all; each member's proposals and scores
go to the shards, so a killed ensemble resumes without redoing a finished member. Trade-offs: it
costs M generations plus M x (M x candidates) scoring passes; it can only choose among what some
member proposed (true token-level ensemble decoding would step all members in lockstep, which
HF `generate` and vLLM do not offer); and likelihood ranking favours safe, consensus, often
shorter-in-surprise lines, so it trades diversity for fidelity. One model is never re-ranked:
its samples are kept in the order they were drawn.
"""

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import UserError
from ..core.outputs import FINISHED_MARKER
from ..corpus import data
from ..corpus.data import item_id, item_position, load_corpus, read_records
from ..corpus.splitting import split_train_val
from ..text.encoding import encode_samples
from ..run.cli import (DataOptions, OneLineParser, add_flags, flag, non_negative_float, non_negative_int,
                       parse_options, positive_float, positive_int, probability, shaping_flags, typed_flags)
from ..run.run_spec import read_json
from ..evaluate.evaluation import token_logprobs
from .generation import BACKENDS, DEVICE_MAPS, Sampling
from .model_loading import Members
from .predictor import unpromptable_result
from .ranks import Distributed
from .shards import PartStore



# ---------------------------------------------------------------- flags

DEFAULT = Sampling()  # the sampling flags' defaults


@dataclass(frozen=True, kw_only=True)
class PredictOptions(DataOptions):
    """Every flag of predict_Chameleons.py. The config, prompt and data flags default to what
    each model's run record says (`run_record`); `typed` names the flags the command line gave."""

    config: str | None = flag(None, "model/data config (default: the one in the models' run record; needed for "
                                    "models without one)")
    data_file: str | None = flag(None, "the TRAINING file, for use_history prompts (default: the run record's, "
                                       "else the config's data.train_file)")
    input_file: str = flag(help="Chameleons file to predict, e.g. test_leaderboard.json")
    model: list = flag(help="trained model folder (the trainer's --output_dir); repeat for an ensemble",
                       action="append", metavar="DIR")
    output_file: str = flag(help="the input with `continuations` added to every data item")
    overwrite: bool = flag(False, "replace an existing output (and partial results made with other settings)",
                           action="store_true")
    evaluate: bool = flag(False, "the input has continuations: also score loss/perplexity and BLEU/ROUGE-L "
                                 "(<output>.eval.json)", action="store_true")
    backend: str = flag("hf", "hf (default) or vllm (needs vllm and a GPU)", choices=BACKENDS)
    tensor_parallel_size: int = flag(1, "--backend vllm: GPUs one model is split over (one process)",
                                     type=positive_int)
    device_map: str = flag("rank", "--backend hf: 'rank' puts the model on this rank's device; 'auto' spreads one "
                                   "model over every visible GPU (one process, for a model too big for one GPU)",
                           choices=DEVICE_MAPS)
    num_samples: int = flag(DEFAULT.num_samples, "continuations per data item", type=positive_int)
    candidates_per_member: int | None = flag(None, "ensembles: candidates each member proposes per item (default: "
                                                   "--num_samples)", type=positive_int)
    temperature: float = flag(DEFAULT.temperature, "0 = greedy", type=non_negative_float)
    top_p: float = flag(DEFAULT.top_p, type=probability)
    top_k: int = flag(DEFAULT.top_k, "0 = off", type=non_negative_int)
    repetition_penalty: float = flag(DEFAULT.repetition_penalty, type=positive_float)
    max_new_tokens: int = flag(DEFAULT.max_new_tokens, type=positive_int)
    seed: int = flag(DEFAULT.seed, type=int)
    batch_size: int = flag(8, "prompts per generate call (per rank)", type=positive_int)
    max_length: int | None = flag(None, "prompt token budget (default: the config's training.max_length)",
                                  type=positive_int)
    log_examples: int = flag(5, "prompts and raw outputs written to <output>.examples.log", type=non_negative_int)
    fidelity: str = flag("on", "on: speaker-attribution and style figures per item (<output>.fidelity.json) and in the "
                               "summary, from a classifier of the training run's lines (chameleons/evaluate/fidelity.py)",
                         choices=["on", "off"])
    fidelity_context: str = flag("off", "on: the speaker classifier also sees the context line each line answers "
                                        "(docs/PREDICTION.md section 5)", choices=["on", "off"])
    untrained: bool = flag(False, "generate with the model the --model run started from (its base model; for a "
                                  "model.random_init run, weights drawn with the run's training.seed), scored like the "
                                  "trained model: the untrained baseline (tools/fidelity_versus.py)",
                           action="store_true")
    typed: frozenset = field(default=frozenset())


def predict_parser():
    return add_flags(OneLineParser(prog="predict_Chameleons.py", description="Generate continuations for a "
                                   "Chameleons file with one or more trained models. The flags shared with "
                                   "training (--config, --set, the prompt and data flags) default to what each "
                                   "model's run record says (docs/PREDICTION.md)."), PredictOptions)


def parse_predict_args(argv=None) -> PredictOptions:
    opts = parse_options(PredictOptions, predict_parser(), argv,
                         candidates_per_member=lambda values: values["num_samples"])
    return replace(opts, typed=typed_flags(PredictOptions, argv))

# ---------------------------------------------------------------- inputs

def training_run_warnings(model_dirs, opts, spec) -> list:
    """Where the flags that shape a prompt (and the file and split flags, with history) differ from
    the training run of a member without a run record (an older run's training_config.json, if
    present): compared as typed, since such a run recorded only its flags."""
    names = [*spec.prompt_flags(), "template_filename"]
    if spec.ablation.use_history:  # the history pool depends on how training split its file
        names += ["data_file", *shaping_flags(DataOptions, "split")]
    warnings = []
    for d in model_dirs:
        path = Path(d, FINISHED_MARKER)
        if not path.is_file():
            continue
        try:
            trained = read_json(path).get("args")
        except UserError:
            trained = None
        if not isinstance(trained, dict):
            warnings.append(f"--model {d}: {FINISHED_MARKER} is not readable; flags not checked")
            continue
        warnings += [f"--model {d} was trained with --{key} {trained[key]}, predicting with "
                     f"--{key} {getattr(opts, key)}" for key in names if key in trained and trained[key] != getattr(opts, key)]
    return warnings


def read_input(path):
    """Records, and whether the file is JSON Lines (the output keeps the input's layout)."""
    records = read_records(path)
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return records, not head.startswith("[")


def all_item_ids(records) -> list:
    """The `data.item_id` of every data item, as `Sample.sample_id` names them."""
    ids = []
    for r, record in enumerate(records):
        task = record.get("task") or {}
        for c, collection in enumerate(task.get("task_behavior_collections") or []):
            for i, _ in enumerate((collection or {}).get("data") or []):
                ids.append(item_id(r, c, i))
    return ids


def training_pool(spec, pool=None):
    """The TRAINING file's samples and the run's pool of them: the run record's (`pool`, a
    `run_record.RecordedPool`: its samples by id, each checked by content), else the file split
    as the spec says training split it."""
    path = spec.training_file
    train = load_corpus(path)
    if pool is None:
        split = split_train_val(train.samples, spec.split_settings())
        return train.samples, split.pool_samples()
    by_id = {s.sample_id: s for s in train.samples}
    for sid, uid in pool.uids.items():
        if sid not in by_id or by_id[sid].uid != uid:
            raise UserError(f"{path}: sample {sid} is not the one --model {pool.model_dir} was trained on (its "
                            f"split_manifest.json history pool): pass --data_file with the run's training file, "
                            f"or the data flags to split this one afresh")
    return train.samples, [by_id[sid] for sid in pool.uids]


@dataclass
class PromptRow:
    sample: object
    ids: list  # empty: the prompt cannot fit even with no dialogue or history
    truncated: bool

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id


def build_prompts(samples, builder, tokenizer, fmt, max_length: int, chunk: int = 1000) -> list:
    """Prompt ids of every sample, by training's own encoder (prompt only)."""
    rows = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        enc = encode_samples(part, builder, tokenizer, fmt, max_length, with_target=False)
        rows.extend(PromptRow(s, list(ids), bool(t)) for s, ids, t in zip(part, enc["input_ids"], enc["truncated"]))
    return rows


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class ShardRun:
    """Where this rank's results are appended, what an earlier run's must match to be resumed
    (`shards.run_meta`), and whether they are discarded instead (--overwrite)."""
    store: PartStore
    meta: dict
    overwrite: bool = False


def generate_all(rows, predictor, shard_run: ShardRun, dist: Distributed, progress: bool = True):
    """Every row's result on rank 0 ({sample_id: result}, or None on other ranks) and this run's
    counts. Rows done by an earlier run are read back, not regenerated; the rest are split
    across ranks, longest prompts first, and each result is appended to this rank's shard."""
    store = shard_run.store
    done = store.prepare(shard_run.meta, rows, predictor.sampling.num_samples, shard_run.overwrite) \
        if dist.is_main else None
    done_set = set(dist.broadcast(sorted(done) if dist.is_main else None))
    mine = [r for r in rows if r.sample_id not in done_set][dist.rank::dist.world]
    started = time.time()
    new = _generate_share(mine, predictor, store, dist, progress)
    local = {"results": new, "generated_tokens": predictor.generated_tokens, "seconds": time.time() - started}
    gathered = dist.gather(local)
    if not dist.is_main:
        return None, None
    return _merge_ranks(done, gathered, store)


def _generate_share(mine, predictor, store: PartStore, dist: Distributed, progress: bool) -> dict:
    """This rank's results ({sample_id: result}), each appended to its shard as it is made."""
    n = predictor.sampling.num_samples
    store.open()
    new, bars = {}, None
    try:
        for r in mine:
            if not r.ids:
                new[r.sample_id] = unpromptable_result(r, n)
                store.append(new[r.sample_id])
        work = sorted((r for r in mine if r.ids), key=lambda r: -len(r.ids))
        if progress and dist.is_main:
            bars = _StageBars(len(work), dist.world)
        for res in predictor.run(work, store, bars):
            new[res["sample_id"]] = res
            store.append(res)
    except UserError:
        # e.g. a member that cannot be loaded: its fix changes the model's fingerprint, so what this
        # run wrote could never be resumed; a run stopped by bad input leaves nothing behind
        if store.created:
            store.remove()
        raise
    finally:
        if bars is not None:
            bars.close()
        store.close()
    return new


class _StageBars:
    """Rank 0's progress, one tqdm bar per stage (generate; an ensemble's generate and score per
    member): a new stage closes the bars before it."""

    def __init__(self, total: int, world: int):
        from tqdm import tqdm

        self._tqdm, self.total, self.world, self.bars = tqdm, total, world, {}

    def __call__(self, stage: str, count: int):
        if stage not in self.bars:
            self.close()
            self.bars[stage] = self._tqdm(total=self.total, desc=f"{stage} (rank 0 of {self.world})", unit="item",
                                          file=sys.stderr)
        self.bars[stage].update(count)

    def close(self):
        for bar in self.bars.values():
            bar.close()


def _merge_ranks(done: dict, gathered: list, store: PartStore):
    """Rank 0: the results read back and every rank's new ones, and the run's counts."""
    results = dict(done)
    for part in gathered:
        results.update(part["results"])
    stats = {
        "resumed": len(done),
        "generated_now": sum(len(p["results"]) for p in gathered),
        "generated_tokens": sum(p["generated_tokens"] for p in gathered),
        "generation_seconds": round(max(p["seconds"] for p in gathered), 3),
        "shard_lines_unreadable": store.bad_lines,
        "shard_lines_stale": store.stale_lines,
    }
    return results, stats


def score_rows(scored, members: Members, dist: Distributed, batch_size: int):
    """--evaluate: every member's token log-probs of the supervised rows, the rows split across
    ranks and the member still in memory first; `[member][row]` on rank 0, None elsewhere."""
    mine = list(range(dist.rank, len(scored), dist.world))
    local = [None] * len(members)
    for k in members.order():
        local[k] = token_logprobs(members.model(k), [(scored[i].input_ids, scored[i].prompt_len) for i in mine],
                                  batch_size)
    members.release()
    gathered = dist.gather((mine, local))
    if not dist.is_main:
        return None
    member_rows = [[None] * len(scored) for _ in range(len(members))]
    for idx, per_member in gathered:
        for m, lps in enumerate(per_member):
            for i, lp in zip(idx, lps):
                member_rows[m][i] = lp
    return member_rows


# ---------------------------------------------------------------- outputs

def attach_continuations(records, results: dict):
    """Add `continuations` to every data item, from that item's own result only. Every item is
    predicted (the loader keeps them all for prediction), so a missing result is a bug: it stops
    the run rather than leave an item silently empty."""
    missing = [sid for sid in all_item_ids(records) if sid not in results]
    if missing:
        raise RuntimeError(f"no prediction for {len(missing)} items (first: {missing[0]})")
    for sid in all_item_ids(records):
        r, c, i = item_position(sid)
        records[r]["task"]["task_behavior_collections"][c]["data"][i]["continuations"] = \
            list(results[sid]["continuations"])


def ends_on_character(samples) -> list:
    """Items whose context ends on the character's own turn: predicted (the character goes on
    after its own line) but not what training counts as a sample, and not scored by --evaluate."""
    return [s.sample_id for s in samples if data.ends_on_character(s.context)]


def extraction_summary(results: dict) -> dict:
    counts, by_item = {}, {}
    for sid, res in sorted(results.items()):
        probs = res["problems"]
        for p in probs:
            if p:
                counts[p] = counts.get(p, 0) + 1
        if any(probs):
            by_item[sid] = probs
    return {"counts": dict(sorted(counts.items())), "items_with_problems": len(by_item),
            "continuations_with_problems": sum(counts.values()), "by_item": by_item}


def examples_log(rows, results: dict, tokenizer, limit: int) -> str:
    parts = []
    for row in rows[:limit]:
        res = results.get(row.sample_id)
        if res is None:
            continue
        parts.append(f"=== {row.sample_id} (user_hash {row.sample.user_hash}, {len(row.ids)} prompt tokens"
                     f"{', truncated' if row.truncated else ''}) ===")
        parts.append("--- prompt ---")
        parts.append(tokenizer.decode(row.ids, skip_special_tokens=False))
        for k, (raw, cont, prob) in enumerate(zip(res["raw"], res["continuations"], res["problems"]), 1):
            parts.append(f"--- raw output {k} ---")
            parts.append(raw)
            parts.append(f"--- continuation {k}{' [' + prob + ']' if prob else ''} ---")
            parts.append(cont)
        if row.sample.target:
            parts.append("--- reference ---")
            parts.append(row.sample.target)
        parts.append("")
    return "\n".join(parts) + "\n"
