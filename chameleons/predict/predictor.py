"""Turning prompt rows into results: the run's models behind their backend (`make_members`),
one model's batches, and an ensemble ranking its members' candidates (`Predictor`; the scheme
and its trade-offs are in `prediction`'s docstring)."""

from dataclasses import dataclass

from . import model_loading
from ..text.prompts import extract_answer
from ..evaluate.evaluation import ensemble_token_logprobs, mean_loglik, token_logprobs
from .generation import Candidate, HFGenerator, Sampling, VllmGenerator, sample_seed
from .model_loading import Members

PROBLEM_PROMPT_TOO_LONG = "prompt_too_long"


@dataclass(frozen=True)
class GeneratorSpec:
    """How every member generates: the backend, the shared tokenizer and chat format, the
    sampling, and the backend's placement settings."""
    backend: str
    tokenizer: object
    fmt: object
    sampling: Sampling
    max_model_len: int
    tensor_parallel_size: int = 1
    device_map: str = "rank"
    untrained: tuple | None = None  # (the run's config.model, training.seed): load the model the run started from


def make_members(model_dirs, spec: GeneratorSpec, dist) -> Members:
    """The run's models behind its backend, each loaded when first needed. vLLM: the engine is
    the generator; HF: the model is loaded on this rank's device, an ensemble member proposing
    --candidates_per_member candidates, a lone model --num_samples."""
    if spec.backend == "vllm":
        return Members(model_dirs, lambda d: VllmGenerator(d, spec.tokenizer, spec.fmt, spec.sampling,
                                                           spec.max_model_len, spec.tensor_parallel_size), lambda g: g)
    device = dist.device()
    n = spec.sampling.candidates_per_member if len(model_dirs) > 1 else spec.sampling.num_samples
    if spec.untrained:
        def load(d):
            return model_loading.load_untrained(d, *spec.untrained, device, dist.warn)
    else:
        def load(d):
            return model_loading.load_model(d, device, spec.device_map, dist.warn)
    return Members(model_dirs, load, lambda m: HFGenerator(m, spec.tokenizer, spec.fmt, spec.sampling, n))


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
        stage = _Stage(batches, {r.sample_id: r.sample.uid for r in rows}, store, progress)
        proposals = {sid: [None] * m_count for sid in stage.uid_of}
        for m in range(m_count):
            self._proposals_of(m, stage, proposals)
        flat = {sid: [c for per_member in props for c in per_member] for sid, props in proposals.items()}
        logprobs = {sid: [None] * m_count for sid in stage.uid_of}
        for m in reversed(range(m_count)):
            self._scores_of(m, stage, flat, logprobs)
        for row in rows:
            cands, per_member = flat[row.sample_id], logprobs[row.sample_id]
            scores = [mean_loglik(ensemble_token_logprobs([per_member[m][j] for m in range(m_count)]))
                      for j in range(len(cands))]
            keep = choose_best(cands, scores, self.sampling.num_samples)
            yield make_result(row, [cands[i] for i in keep], [scores[i] for i in keep])

    def _proposals_of(self, m: int, run: "_Stage", proposals):
        """Member m's candidates of every item into `proposals[sample_id][m]`: read back from its
        shard stage where an earlier run made them, else generated and appended there."""
        stage, label, store = f"gen.m{m}", f"generate {m + 1}/{len(self.members)}", run.store
        run.report(label, 0)
        for sid, line in store.read_stage(stage, run.uid_of).items():
            proposals[sid][m] = [Candidate.from_json(c) for c in line["cands"]]
        for batch in run.batches:
            todo = [r for r in batch if proposals[r.sample_id][m] is None]
            if todo:
                for r, cands in zip(todo, self._propose(m, todo)):
                    proposals[r.sample_id][m] = cands
                    store.append_stage(stage, {"sample_id": r.sample_id, "uid": r.sample.uid,
                                               "cands": [c.to_json() for c in cands]})
            run.report(label, len(batch))

    def _scores_of(self, m: int, run: "_Stage", flat, logprobs):
        """Member m's token log-probs of every item's candidates (`flat`) into
        `logprobs[sample_id][m]`: read back from its shard stage, else scored and appended there."""
        stage, label, store = f"score.m{m}", f"score {len(self.members) - m}/{len(self.members)}", run.store
        run.report(label, 0)
        for sid, line in store.read_stage(stage, run.uid_of).items():
            if len(line["lps"]) == len(flat[sid]):
                logprobs[sid][m] = line["lps"]
        for batch in run.batches:
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
            run.report(label, len(batch))


@dataclass(frozen=True)
class _Stage:
    """What every member's pass over the items shares: the batches, each item's uid (what a
    shard line must match), the shards and the progress bars (or None)."""
    batches: list
    uid_of: dict
    store: object
    progress: object = None

    def report(self, label: str, count: int):
        if self.progress:
            self.progress(label, count)


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
