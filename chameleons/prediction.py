"""Continuations for a Chameleons file, the flow: the flags, the input, prompts built exactly as
training builds them, the models turned into results (one model, or an ensemble ranking its
members' candidates), every rank's share generated and merged, the answers attached to the
input, and the run's summaries. The parts it drives live beside it: `generation` (sampling,
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

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import data, launch, model_loading
from .cli import (DataOptions, OneLineParser, add_flags, flag, non_negative_float, non_negative_int, parse_options,
                  positive_float, positive_int, probability, typed_flags)
from .data import item_id, item_position, load_corpus, read_records
from .encoding import encode_samples
from .errors import UserError
from .evaluation import ensemble_token_logprobs, mean_loglik, token_logprobs
from .generation import BACKENDS, DEVICE_MAPS, Candidate, HFGenerator, Sampling, VllmGenerator, sample_seed
from .model_loading import Members
from .prompts import HistoryIndex, extract_answer
from .shards import PartStore
from .splitting import split_train_val

PROBLEM_PROMPT_TOO_LONG = "prompt_too_long"
TRAINING_CONFIG = "training_config.json"


# ---------------------------------------------------------------- flags

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
    num_samples: int = flag(1, "continuations per data item", type=positive_int)
    candidates_per_member: int | None = flag(None, "ensembles: candidates each member proposes per item (default: "
                                                   "--num_samples)", type=positive_int)
    temperature: float = flag(0.7, "0 = greedy", type=non_negative_float)
    top_p: float = flag(0.9, type=probability)
    top_k: int = flag(50, "0 = off", type=non_negative_int)
    repetition_penalty: float = flag(1.0, type=positive_float)
    max_new_tokens: int = flag(128, type=positive_int)
    seed: int = flag(42, type=int)
    batch_size: int = flag(8, "prompts per generate call (per rank)", type=positive_int)
    max_length: int | None = flag(None, "prompt token budget (default: the config's training.max_length)",
                                  type=positive_int)
    log_examples: int = flag(5, "prompts and raw outputs written to <output>.examples.log", type=non_negative_int)
    fidelity: str = flag("on", "on: speaker-attribution and style figures per item (<output>.fidelity.json) and in the "
                               "summary, from a classifier of the training run's lines (chameleons/fidelity.py)",
                         choices=["on", "off"])
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


# ---------------------------------------------------------------- ranks

class Distributed:
    """RANK/WORLD_SIZE from the launcher; a gloo group carries the (small) Python objects."""

    def __init__(self, rank=0, world=1, local_rank=0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._group = False

    @classmethod
    def from_env(cls):
        """The launcher's variables, read as training reads them (`launch`) and checked: a bad one
        is one error line, not a traceback later."""
        rank, world, local = launch.rank(), launch.world_size(), launch.local_rank()
        if world < 1:
            raise UserError(f"environment variable WORLD_SIZE={world} must be at least 1")
        if not 0 <= rank < world:
            raise UserError(f"environment variable RANK={rank} must be in 0..WORLD_SIZE-1 ({world - 1})")
        if local < 0:
            raise UserError(f"environment variable LOCAL_RANK={local} must not be negative")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self):
        if self.world > 1 and not self._group:
            from datetime import timedelta

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
            self._group = True

    def device(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's object, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        box = [None] * self.world if self.is_main else None
        dist.gather_object(obj, box, dst=0)
        return box

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False

    def warn(self, message: str):
        if self.is_main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def notice(self, message: str):
        if self.is_main:
            print(f"notice: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs

def training_run_warnings(model_dirs, opts: PredictOptions, ablation) -> list:
    """Where the flags differ from the training run of a member without a run record (an older
    run's training_config.json, if present)."""
    warnings = []
    checked = ["ablation_config", "prompt_style", "template_filename"]
    if ablation.use_history:  # the history pool depends on how training split its file
        checked += ["data_file", "max_samples_per_user", "sample_seed", "sample_group_by", "val_ratio", "val_seed",
                    "val_leak_check"]
    for d in model_dirs:
        path = Path(d) / TRAINING_CONFIG
        if not path.is_file():
            continue
        try:
            trained = json.loads(path.read_text(encoding="utf-8")).get("args", {})
        except (json.JSONDecodeError, AttributeError, OSError):
            warnings.append(f"--model {d}: {TRAINING_CONFIG} is not readable JSON; flags not checked")
            continue
        if not isinstance(trained, dict):
            continue
        for key in checked:
            if key in trained and trained[key] != getattr(opts, key):
                warnings.append(f"--model {d} was trained with --{key} {trained[key]}, predicting with "
                                f"--{key} {getattr(opts, key)}")
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


def history_index(ablation, training):
    """use_history prompts draw on the training run's pool; `training` is what `training_pool`
    returned (read once by the caller: the fidelity classifier learns from the same lines)."""
    if not ablation.use_history:
        return None
    samples, pool_samples = training
    return HistoryIndex.for_pool(pool_samples, samples)


def training_pool(config, opts: DataOptions, pool=None):
    """The TRAINING file's samples and the run's pool of them: the run record's (`pool`, a
    `run_record.RecordedPool`: its samples by id, each checked by content), else the file split
    with the training flags."""
    path = opts.data_file or config.resolve_path(config.data.train_file)
    train = load_corpus(path)
    if pool is None:
        split = split_train_val(train.samples, opts.max_samples_per_user, opts.sample_seed, opts.val_ratio,
                                opts.val_seed, opts.sample_group_by, opts.val_leak_check)
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

def make_members(model_dirs, backend: str, tokenizer, fmt, sampling: Sampling, dist, max_model_len: int,
                 tensor_parallel_size: int = 1, device_map: str = "rank") -> Members:
    """The run's models behind its backend, each loaded when first needed. vLLM: the engine is
    the generator; HF: the model is loaded on this rank's device, an ensemble member proposing
    --candidates_per_member candidates, a lone model --num_samples."""
    if backend == "vllm":
        return Members(model_dirs, lambda d: VllmGenerator(d, tokenizer, fmt, sampling, max_model_len,
                                                           tensor_parallel_size), lambda g: g)
    device = dist.device()
    n = sampling.candidates_per_member if len(model_dirs) > 1 else sampling.num_samples
    return Members(model_dirs, lambda d: model_loading.load_model(d, device, device_map, dist.warn),
                   lambda m: HFGenerator(m, tokenizer, fmt, sampling, n))


def choose_best(candidates, scores, k: int) -> list:
    """Indices of the k best candidates by score (ties: proposal order), distinct answers first."""
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    seen, first, rest = set(), [], []
    for i in order:
        key = extract_answer(candidates[i].text)[0] or candidates[i].text
        (rest if key in seen else first).append(i)
        seen.add(key)
    return (first + rest)[:k]


class Predictor:
    """Turns prompt rows into finished results (one JSON-able dict per item).

    One model: batch by batch, each batch's results final at once. An ensemble: member by
    member (see the module docstring), each member's proposals and scores written to the shards
    as they are made, so peak memory is one model and a resumed run skips finished members."""

    def __init__(self, members: Members, sampling: Sampling, batch_size: int, score_batch_size: int = None):
        self.members = members
        self.sampling = sampling
        self.batch_size = batch_size
        self.score_batch_size = score_batch_size or batch_size
        self.generated_tokens = 0

    def seeds(self, member: int, rows, n: int) -> list:
        return [[sample_seed(self.sampling.seed, member, r.sample.uid, j) for j in range(n)] for r in rows]

    def _propose(self, member: int, rows) -> list:
        gen = self.members.generator(member)
        out = gen.generate([r.ids for r in rows], self.seeds(member, rows, gen.n))
        self.generated_tokens += sum(len(c.token_ids) for cands in out for c in cands[:gen.draws])
        return out

    def __call__(self, rows) -> list:
        """One model: a batch's final results."""
        return [make_result(row, cands[:self.sampling.num_samples]) for row, cands in zip(rows, self._propose(0, rows))]

    def run(self, rows, store=None, progress=None):
        """Final results of `rows` (longest prompts first), as they are finished."""
        batches = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if len(self.members) == 1:
            if progress:
                progress("generate", 0)
            for batch in batches:
                yield from self(batch)
                if progress:
                    progress("generate", len(batch))
            return
        yield from self._ensemble(rows, batches, store, progress)

    def _ensemble(self, rows, batches, store, progress):
        """Generate with members 1..M, then score with M..1 (the last generator is still in memory):
        2M - 1 loads, one model at a time."""
        m_count = len(self.members)
        uid_of = {r.sample_id: r.sample.uid for r in rows}
        proposals = {sid: [None] * m_count for sid in uid_of}
        for m in range(m_count):
            self._proposals_of(m, batches, uid_of, proposals, store, progress)
        flat = {sid: [c for per_member in props for c in per_member] for sid, props in proposals.items()}
        logprobs = {sid: [None] * m_count for sid in uid_of}
        for m in reversed(range(m_count)):
            self._scores_of(m, batches, uid_of, flat, logprobs, store, progress)
        for row in rows:
            cands, per_member = flat[row.sample_id], logprobs[row.sample_id]
            scores = [mean_loglik(ensemble_token_logprobs([per_member[m][j] for m in range(m_count)]))
                      for j in range(len(cands))]
            keep = choose_best(cands, scores, self.sampling.num_samples)
            yield make_result(row, [cands[i] for i in keep], [scores[i] for i in keep])

    def _proposals_of(self, m: int, batches, uid_of, proposals, store, progress):
        """Member m's candidates of every item into `proposals[sample_id][m]`: read back from its
        shard stage where an earlier run made them, else generated and appended there."""
        stage, label = f"gen.m{m}", f"generate {m + 1}/{len(self.members)}"
        if progress:
            progress(label, 0)
        for sid, line in store.read_stage(stage, uid_of).items():
            proposals[sid][m] = [Candidate.from_json(c) for c in line["cands"]]
        for batch in batches:
            todo = [r for r in batch if proposals[r.sample_id][m] is None]
            if todo:
                for r, cands in zip(todo, self._propose(m, todo)):
                    proposals[r.sample_id][m] = cands
                    store.append_stage(stage, {"sample_id": r.sample_id, "uid": r.sample.uid,
                                               "cands": [c.to_json() for c in cands]})
            if progress:
                progress(label, len(batch))

    def _scores_of(self, m: int, batches, uid_of, flat, logprobs, store, progress):
        """Member m's token log-probs of every item's candidates (`flat`) into
        `logprobs[sample_id][m]`: read back from its shard stage, else scored and appended there."""
        stage, label = f"score.m{m}", f"score {len(self.members) - m}/{len(self.members)}"
        if progress:
            progress(label, 0)
        for sid, line in store.read_stage(stage, uid_of).items():
            if len(line["lps"]) == len(flat[sid]):
                logprobs[sid][m] = line["lps"]
        for batch in batches:
            todo = [r for r in batch if logprobs[r.sample_id][m] is None]
            if todo:
                pairs = [(r.ids + c.token_ids, len(r.ids)) for r in todo for c in flat[r.sample_id]]
                lps = token_logprobs(self.members.model(m), pairs, self.score_batch_size)
                k = 0
                for r in todo:
                    n = len(flat[r.sample_id])
                    logprobs[r.sample_id][m] = lps[k:k + n]
                    k += n
                    store.append_stage(stage, {"sample_id": r.sample_id, "uid": r.sample.uid,
                                               "lps": logprobs[r.sample_id][m]})
            if progress:
                progress(label, len(batch))


def make_result(row, candidates, scores=None) -> dict:
    answers = [extract_answer(c.text) for c in candidates]
    return {
        "sample_id": row.sample_id,
        "uid": row.sample.uid,
        "continuations": [a for a, _ in answers],
        "problems": [p for _, p in answers],
        "raw": [c.raw for c in candidates],
        "scores": [round(s, 6) for s in scores] if scores is not None else None,
        "prompt_tokens": len(row.ids),
        "prompt_truncated": row.truncated,
    }


def unpromptable_result(row, n: int) -> dict:
    return {"sample_id": row.sample_id, "uid": row.sample.uid, "continuations": [""] * n,
            "problems": [PROBLEM_PROMPT_TOO_LONG] * n, "raw": [""] * n, "scores": None,
            "prompt_tokens": 0, "prompt_truncated": True}


def generate_all(rows, predictor, store: PartStore, dist: Distributed, meta: dict, overwrite: bool,
                 progress: bool = True):
    """Every row's result on rank 0 ({sample_id: result}, or None on other ranks) and this run's
    counts. Rows done by an earlier run are read back, not regenerated; the rest are split
    across ranks, longest prompts first, and each result is appended to this rank's shard."""
    done = store.prepare(meta, rows, predictor.sampling.num_samples, overwrite) if dist.is_main else None
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
