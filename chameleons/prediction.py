"""Continuations for a Chameleons file: prompts built exactly as training builds them, batched
generation (HF `generate`, or vLLM), resumable per-rank shards, and ensembles of models.

Prompt identity: a prompt is `encode_samples(..., with_target=False)`, the same builder, chat
format and truncation rule that training used, so for a sample that training did not truncate
the ids are exactly training's `input_ids[:prompt_len]`. Only the budget can differ: training
truncates to `max_length - len(target)`, prediction (which has no target) to `--max_length`.

Shards: every rank appends each finished item as one JSON line (flushed) to
`<output>.parts/rank<R>.jsonl`; `meta.json` there records the settings the lines were made
with. A rerun with the same settings reads the lines back and generates only the rest; rank 0
merges everything into the output, written atomically, then removes the folder.

Ensembles (several `--model`): each member proposes `--candidates_per_member` candidates per
item, every member scores every candidate, and the candidates are ranked by the ensemble's mean
per-token log-likelihood, log((1/M) * sum_m p_m(token)) averaged over the candidate's tokens (the
same ensemble probability that `evaluation` scores targets with). The best `--num_samples` are
kept, distinct answers first. Trade-offs: it costs M generations plus M x (M x candidates)
scoring passes and holds all members in memory at once; it can only choose among what some
member proposed (true token-level ensemble decoding would step all members in lockstep, which
HF `generate` and vLLM do not offer); and likelihood ranking favours safe, consensus, often
shorter-in-surprise lines, so it trades diversity for fidelity. One model is never re-ranked:
its samples are kept in the order they were drawn.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cli import (OneLineParser, _non_negative_float, _non_negative_int, _positive_float, _positive_int,
                  add_data_args)
from .data import load_corpus, read_records
from .encoding import encode_samples, load_tokenizer
from .errors import UserError
from .evaluation import ensemble_token_logprobs, mean_loglik, token_logprobs
from .outputs import write_json
from .prompts import HistoryIndex, extract_answer
from .splitting import split_train_val

BACKENDS = ("hf", "vllm")
PROBLEM_PROMPT_TOO_LONG = "prompt_too_long"
TRAINING_CONFIG = "training_config.json"


# ---------------------------------------------------------------- flags

def _probability(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def predict_parser():
    p = OneLineParser(prog="predict_Chameleons.py",
                      description="Generate continuations for a Chameleons file with one or more trained models.")
    add_data_args(p)  # --config, --ablation_config, --prompt_style and the training flags the history pool needs
    for action in p._actions:
        if action.dest == "data_file":
            action.help = ("the TRAINING file, for use_history prompts (default: the config's data.train_file); "
                           "the sampling flags below must match the training run's")
    p.add_argument("--input_file", required=True, help="Chameleons file to predict, e.g. test_leaderboard.json")
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="trained model folder (the trainer's --output_dir); repeat for an ensemble")
    p.add_argument("--output_file", required=True, help="the input with `continuations` added to every data item")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (and partial results made with other settings)")
    p.add_argument("--evaluate", action="store_true",
                   help="the input has continuations: also score loss/perplexity and BLEU/ROUGE-L (<output>.eval.json)")
    p.add_argument("--backend", choices=BACKENDS, default="hf", help="hf (default) or vllm (needs vllm and a GPU)")
    p.add_argument("--num_samples", type=_positive_int, default=1, help="continuations per data item")
    p.add_argument("--candidates_per_member", type=_positive_int, default=None,
                   help="ensembles: candidates each member proposes per item (default: --num_samples)")
    p.add_argument("--temperature", type=_non_negative_float, default=0.7, help="0 = greedy")
    p.add_argument("--top_p", type=_probability, default=0.9)
    p.add_argument("--top_k", type=_non_negative_int, default=50, help="0 = off")
    p.add_argument("--repetition_penalty", type=_positive_float, default=1.0)
    p.add_argument("--max_new_tokens", type=_positive_int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch_size", type=_positive_int, default=8, help="prompts per generate call (per rank)")
    p.add_argument("--max_length", type=_positive_int, default=None,
                   help="prompt token budget (default: the config's training.max_length)")
    p.add_argument("--log_examples", type=_non_negative_int, default=5,
                   help="prompts and raw outputs written to <output>.examples.log")
    return p


def parse_predict_args(argv=None):
    args = predict_parser().parse_args(argv)
    if args.candidates_per_member is None:
        args.candidates_per_member = args.num_samples
    return args


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_new_tokens: int
    num_samples: int
    candidates_per_member: int
    seed: int

    @classmethod
    def from_args(cls, args):
        return cls(args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.max_new_tokens,
                   args.num_samples, args.candidates_per_member, args.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---------------------------------------------------------------- ranks

class Distributed:
    """RANK/WORLD_SIZE from torchrun; a gloo group carries the (small) Python objects."""

    def __init__(self, rank=0, world=1, local_rank=0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._group = False

    @classmethod
    def from_env(cls):
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None

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


# ---------------------------------------------------------------- inputs

def output_paths(output_file) -> dict:
    out = Path(output_file)
    return {"output": out, "summary": Path(f"{out}.summary.json"), "examples": Path(f"{out}.examples.log"),
            "eval": Path(f"{out}.eval.json"), "parts": Path(f"{out}.parts")}


def check_output(output_file, overwrite: bool):
    out = Path(output_file)
    if out.is_dir():
        raise UserError(f"--output_file {out}: is a folder")
    if out.exists() and not overwrite:
        raise UserError(f"--output_file {out}: exists; pass --overwrite to replace it")


def check_model_dirs(dirs) -> list:
    """Each --model is a folder with a HF model in it."""
    out = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UserError(f"--model {d}: model folder not found")
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise UserError(f"--model {d}: no config.json (or adapter_config.json), not a saved HF model")
        out.append(p)
    return out


def training_run_warnings(model_dirs, args, ablation) -> list:
    """Where the flags differ from a member's own training run (training_config.json, if present)."""
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
            if key in trained and trained[key] != getattr(args, key, None):
                warnings.append(f"--model {d} was trained with --{key} {trained[key]}, predicting with "
                                f"--{key} {getattr(args, key, None)}")
    return warnings


def read_input(path):
    """Records, and whether the file is JSON Lines (the output keeps the input's layout)."""
    records = read_records(path)
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return records, not head.startswith("[")


def all_item_ids(records) -> list:
    """`r<record>.c<collection>.i<item>` of every data item, as `Sample.sample_id` names them."""
    ids = []
    for r, record in enumerate(records):
        task = record.get("task") or {}
        for c, collection in enumerate(task.get("task_behavior_collections") or []):
            for i, _ in enumerate((collection or {}).get("data") or []):
                ids.append(f"r{r}.c{c}.i{i}")
    return ids


def history_index(ablation, config, args):
    """use_history prompts draw on the TRAINING file's pool, split with the training flags."""
    if not ablation.use_history:
        return None
    train = load_corpus(args.data_file or config.resolve_path(config.data["train_file"]))
    split = split_train_val(train.samples, args.max_samples_per_user, args.sample_seed, args.val_ratio,
                            args.val_seed, args.sample_group_by, args.val_leak_check)
    return HistoryIndex(split.pool_samples())


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")


def _tokenizer_files_digest(d: Path) -> str:
    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        if (d / name).is_file():
            h.update(name.encode() + b"\x00" + (d / name).read_bytes() + b"\x00")
    return h.hexdigest()


def shared_tokenizer(model_dirs, fallback: str, warn=None):
    """The members' tokenizer: the one saved beside each model (else the config's), and the same
    for every member: prompts are token ids, and an ensemble adds up token probabilities.
    Byte-identical tokenizer files are not loaded twice."""
    first, first_fp, first_dir = None, None, None
    loaded_digests = set()
    for d in model_dirs:
        if _has_tokenizer(d):
            digest = _tokenizer_files_digest(d)
            if first is not None and digest in loaded_digests:
                continue
            loaded_digests.add(digest)
            tok = load_tokenizer(str(d))
        else:
            if warn:
                warn(f"--model {d}: no tokenizer saved beside the model; using the config's {fallback!r}")
            tok = load_tokenizer(fallback)
        fp = (tok.get_vocab(), str(tok.chat_template))
        if first is None:
            first, first_fp, first_dir = tok, fp, d
        elif fp != first_fp:
            detail = (f"vocabularies of {len(first)} and {len(tok)} tokens" if len(first) != len(tok)
                      else "same size, different vocabulary or chat template")
            raise UserError(f"--model {d}: tokenizer differs from --model {first_dir}'s ({detail}); "
                            f"ensemble members must share one tokenizer")
    return first


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


def load_models(model_dirs, device):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    models = []
    for d in model_dirs:
        try:
            if (Path(d) / "config.json").is_file():
                model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
            else:  # a LoRA run saves the adapter only: load its base and merge
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(str(d), dtype=dtype).merge_and_unload()
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"--model {d}: could not be loaded: {str(exc).splitlines()[0]}") from None
        models.append(prepare_for_inference(model).to(device).eval())
    return models


def prepare_for_inference(model):
    """Undo the training-time settings a saved config may carry: no KV cache (gradient
    checkpointing) would make generation quadratic, and router logits (MoE aux loss) are not
    wanted when generating or scoring."""
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    return model


def check_backend(backend: str, n_models: int, world: int, evaluate: bool):
    if backend != "vllm":
        return
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise UserError(f"--backend vllm: {' and '.join(missing)}; use --backend hf")
    if n_models > 1:
        raise UserError("--backend vllm: ensembles (several --model) need --backend hf, which scores candidates")
    if evaluate:
        raise UserError("--backend vllm: --evaluate scores with HF models; use --backend hf")
    if world > 1:
        raise UserError("--backend vllm: run it as one process (vLLM manages its GPUs), not under torchrun")


# ---------------------------------------------------------------- generation

@dataclass
class Candidate:
    token_ids: list  # generated ids, up to and including the stop token when there is one
    text: str  # decoded without special tokens: what the answer is extracted from
    raw: str  # decoded with special tokens, for the examples log
    finished: bool


def stop_token_ids(tokenizer, fmt, model=None) -> list:
    ids = [fmt.end_of_turn_id, tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if model is not None else None
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    out = []
    for i in ids:
        if isinstance(i, int) and i >= 0 and i not in out:
            out.append(i)
    return out


def _candidate(tokenizer, ids, stops) -> Candidate:
    cut = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if cut is None else ids[:cut + 1]
    body = kept if cut is None else kept[:-1]
    return Candidate(list(kept), tokenizer.decode(body, skip_special_tokens=True),
                     tokenizer.decode(kept, skip_special_tokens=False), cut is not None)


class HFGenerator:
    """Batched `generate` over left-padded prompts; `n` candidates per prompt."""

    def __init__(self, model, tokenizer, fmt, sampling: Sampling, n: int):
        from transformers import GenerationConfig

        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_token_ids(tokenizer, fmt, model)
        self.n = n
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        common = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.stops,
                      repetition_penalty=sampling.repetition_penalty, use_cache=True)
        if sampling.greedy:  # one greedy line, repeated: greedy search cannot return distinct sequences
            self.draws = 1
            self.config = GenerationConfig(do_sample=False, num_return_sequences=1, **common)
        else:
            self.draws = n
            self.config = GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                           top_k=sampling.top_k, num_return_sequences=n, **common)

    def generate(self, prompts, seed: int) -> list:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            input_ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=self.config)
        new = out[:, width:].tolist()
        result = []
        for b in range(len(prompts)):
            cands = [_candidate(self.tokenizer, new[b * self.draws + j], self.stops) for j in range(self.draws)]
            result.append([cands[j % self.draws] for j in range(self.n)])
        return result


class VllmGenerator:
    """One model on vLLM, fed the same prompt ids (never re-tokenized text)."""

    def __init__(self, model_dir, tokenizer, fmt, sampling: Sampling, max_model_len: int):
        from vllm import LLM, SamplingParams

        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer, fmt)
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=sampling.seed,
                       max_model_len=max_model_len)
        params = dict(n=sampling.num_samples, max_tokens=sampling.max_new_tokens,
                      repetition_penalty=sampling.repetition_penalty, stop_token_ids=self.stops,
                      skip_special_tokens=False)
        if sampling.greedy:
            params.update(temperature=0.0)
        else:
            params.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k > 0:
                params["top_k"] = sampling.top_k
        self._params, self._sampling_cls = params, SamplingParams

    def generate(self, prompts, seed: int) -> list:
        params = self._sampling_cls(seed=seed, **self._params)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            cands = []
            for c in o.outputs:
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and (not ids or ids[-1] not in self.stops) and c.stop_reason in self.stops:
                    ids.append(c.stop_reason)
                cands.append(_candidate(self.tokenizer, ids, self.stops))
            result.append(cands)
        return result


def choose_best(candidates, scores, k: int) -> list:
    """Indices of the k best candidates by score (ties: proposal order), distinct answers first."""
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    seen, first, rest = set(), [], []
    for i in order:
        key = extract_answer(candidates[i].text)[0] or candidates[i].text
        (rest if key in seen else first).append(i)
        seen.add(key)
    return (first + rest)[:k]


def batch_seed(seed: int, member: int, uids) -> int:
    """Depends on the seed, the member and the batch's samples only (not on rank or run)."""
    h = hashlib.blake2b(f"{seed}\x00{member}\x00{','.join(uids)}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "big")


class Predictor:
    """Turns a batch of prompt rows into finished results (one JSON-able dict per item)."""

    def __init__(self, generators, scorers, sampling: Sampling, score_batch_size: int):
        self.generators, self.scorers = generators, scorers
        self.sampling = sampling
        self.score_batch_size = score_batch_size
        self.generated_tokens = 0

    def __call__(self, rows) -> list:
        prompts = [r.ids for r in rows]
        uids = [r.sample.uid for r in rows]
        proposals = [[] for _ in rows]
        for m, gen in enumerate(self.generators):
            for i, cands in enumerate(gen.generate(prompts, batch_seed(self.sampling.seed, m, uids))):
                proposals[i].extend(cands)
                self.generated_tokens += sum(len(c.token_ids) for c in cands[:getattr(gen, "draws", len(cands))])
        scores = [None] * len(rows)
        if len(self.generators) > 1:
            scores = self._ensemble_scores(prompts, proposals)
        results = []
        for row, cands, sc in zip(rows, proposals, scores):
            keep = choose_best(cands, sc, self.sampling.num_samples) if sc is not None \
                else list(range(self.sampling.num_samples))
            results.append(make_result(row, [cands[i] for i in keep], [sc[i] for i in keep] if sc else None))
        return results

    def _ensemble_scores(self, prompts, proposals) -> list:
        pairs = [(p + c.token_ids, len(p)) for p, cands in zip(prompts, proposals) for c in cands]
        per_member = [token_logprobs(model, pairs, self.score_batch_size) for model in self.scorers]
        flat = [mean_loglik(ensemble_token_logprobs([m[j] for m in per_member])) for j in range(len(pairs))]
        scores, k = [], 0
        for cands in proposals:
            scores.append(flat[k:k + len(cands)])
            k += len(cands)
        return scores


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


# ---------------------------------------------------------------- shards

class PartStore:
    """`<output>.parts/`: meta.json (settings) and rank<R>.jsonl (one finished item a line)."""

    def __init__(self, output_file, rank: int = 0):
        self.dir = Path(f"{output_file}.parts")
        self.rank = rank
        self._file = None
        self.bad_lines = 0
        self.stale_lines = 0

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def prepare(self, meta: dict, rows, num_samples: int, overwrite: bool) -> dict:
        """(Rank 0.) The results already done with these settings, by sample id."""
        old = None
        if self.dir.exists():
            try:
                old = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
            has_lines = any(p.stat().st_size for p in self.dir.glob("rank*.jsonl"))
            if old != meta and (old is not None or has_lines):
                if not overwrite:
                    differ = sorted(k for k in set(meta) | set(old or {}) if (old or {}).get(k) != meta.get(k))
                    raise UserError(f"{self.dir}: holds partial results made with other settings "
                                    f"({', '.join(differ) or 'unreadable meta.json'} differ); pass --overwrite to "
                                    f"discard them, or delete the folder")
                shutil.rmtree(self.dir)
                old = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if old != meta:
            write_json(self.meta_path, meta)
        uid_of = {r.sample_id: r.sample.uid for r in rows}
        done = {}
        for path in sorted(self.dir.glob("rank*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        res = json.loads(line)
                    except json.JSONDecodeError:
                        self.bad_lines += 1  # a line cut short when a run was killed
                        continue
                    sid = res.get("sample_id") if isinstance(res, dict) else None
                    ok = (sid in uid_of and res.get("uid") == uid_of[sid]
                          and isinstance(res.get("continuations"), list) and len(res["continuations"]) == num_samples)
                    if not ok:
                        self.stale_lines += 1
                        continue
                    done.setdefault(sid, res)
        return done

    def open(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"rank{self.rank}.jsonl"
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                ends_clean = f.read(1) == b"\n"
            if not ends_clean:  # killed mid-line: start the next result on a fresh line
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
        self._file = open(path, "a", encoding="utf-8")

    def append(self, result: dict):
        self._file.write(json.dumps(result, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self):
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_meta(args, model_dirs, rows, max_length: int, sampling: Sampling) -> dict:
    """What the shard lines depend on; a rerun resumes only when all of it matches."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.sample_id}\x00{r.sample.uid}\x00".encode())
        h.update(",".join(map(str, r.ids)).encode() + b"\x01")  # prompts: history pool, template, budget
    return {
        "input": h.hexdigest()[:24],
        "models": [str(Path(d).resolve()) for d in model_dirs],
        "backend": args.backend,
        "ablation_config": args.ablation_config,
        "prompt_style": args.prompt_style,
        "max_length": max_length,
        "sampling": asdict(sampling),
    }


def generate_all(rows, predictor, store: PartStore, dist: Distributed, meta: dict, overwrite: bool,
                 batch_size: int, progress: bool = True):
    """Every row's result on rank 0 ({sample_id: result}, or None on other ranks) and this run's
    counts. Rows done by an earlier run are read back, not regenerated; the rest are split
    across ranks, longest prompts first, and each result is appended to this rank's shard."""
    n = predictor.sampling.num_samples
    done = store.prepare(meta, rows, n, overwrite) if dist.is_main else None
    done_ids = dist.broadcast(sorted(done) if dist.is_main else None)
    done_set = set(done_ids)
    todo = [r for r in rows if r.sample_id not in done_set]
    mine = todo[dist.rank::dist.world]
    store.open()
    new = {}
    started = time.time()
    try:
        for r in mine:
            if not r.ids:
                new[r.sample_id] = unpromptable_result(r, n)
                store.append(new[r.sample_id])
        work = sorted((r for r in mine if r.ids), key=lambda r: -len(r.ids))
        bar = None
        if progress and dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=len(work), desc=f"Generating (rank 0 of {dist.world})", unit="item", file=sys.stderr)
        for start in range(0, len(work), batch_size):
            batch = work[start:start + batch_size]
            for res in predictor(batch):
                new[res["sample_id"]] = res
                store.append(res)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    finally:
        store.close()
    elapsed = time.time() - started
    local = {"results": new, "generated_tokens": predictor.generated_tokens, "seconds": elapsed}
    gathered = dist.gather(local)
    if not dist.is_main:
        return None, None
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


# ---------------------------------------------------------------- outputs

NOT_PREDICTED = "skipped_by_loader"


def attach_continuations(records, results: dict, num_samples: int) -> dict:
    """Add `continuations` to every data item, from that item's own result only; items without
    one (the loader skipped them) get empty strings. Returns {item_id: reason} for those."""
    missing = {}
    for item_id in all_item_ids(records):
        r, c, i = (int(p[1:]) for p in item_id.split("."))
        item = records[r]["task"]["task_behavior_collections"][c]["data"][i]
        res = results.get(item_id)
        if res is None:
            item["continuations"] = [""] * num_samples
            missing[item_id] = NOT_PREDICTED
        else:
            item["continuations"] = list(res["continuations"])
    return missing


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
