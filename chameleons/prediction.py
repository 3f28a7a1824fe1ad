"""Continuations for a Chameleons file: prompts built exactly as training builds them, batched
generation (HF `generate`, or vLLM), resumable per-rank shards, and ensembles of models.

Prompt identity: a prompt is `encode_samples(..., with_target=False)`, the same builder, chat
format and truncation rule that training used, so for a sample that training did not truncate
the ids are exactly training's `input_ids[:prompt_len]`. Only the budget can differ: training
truncates to `max_length - len(target)`, prediction (which has no target) to `--max_length`.

Shards: every rank appends each finished item as one JSON line (flushed) to
`<output>.parts/rank<R>.jsonl`; `meta.json` there records the settings the lines were made
with, the models' identities included (a fingerprint of their files, so a model retrained into
the same folder is a different model). A rerun with the same settings reads the lines back and
generates only the rest; rank 0 merges everything into the output, written atomically, then
removes the folder.

Sampling is seeded per item and per continuation, from (--seed, member, item uid, sample
index), through counter-based noise (`ItemSampler`): an item's continuations do not depend on
which items share its batch, the batch size, the world size, or whether the run was resumed.

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

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .cli import (OneLineParser, _non_negative_float, _non_negative_int, _positive_float, _positive_int,
                  add_data_args)
from .data import load_corpus, read_records
from .encoding import encode_samples, load_tokenizer
from .errors import UserError
from .evaluation import ensemble_token_logprobs, mean_loglik, token_logprobs
from .launch import env_int
from .outputs import write_json
from .prompts import HistoryIndex, extract_answer
from .sources import check_model_folder, require_source
from .splitting import split_train_val

BACKENDS = ("hf", "vllm")
DEVICE_MAPS = ("rank", "auto")
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
    p.add_argument("--tensor_parallel_size", type=_positive_int, default=1,
                   help="--backend vllm: GPUs one model is split over (one process)")
    p.add_argument("--device_map", choices=DEVICE_MAPS, default="rank",
                   help="--backend hf: 'rank' puts the model on this rank's device; 'auto' spreads one model over "
                        "every visible GPU (one process, for a model too big for one GPU)")
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
    def from_env(cls, environ=None):
        """The launcher's variables, checked: a bad one is one error line, not a traceback later."""
        env = os.environ if environ is None else environ
        rank, world, local = env_int("RANK", 0, env), env_int("WORLD_SIZE", 1, env), env_int("LOCAL_RANK", 0, env)
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


# ---------------------------------------------------------------- inputs

def output_paths(output_file) -> dict:
    out = Path(output_file)
    return {"output": out, "summary": Path(f"{out}.summary.json"), "examples": Path(f"{out}.examples.log"),
            "eval": Path(f"{out}.eval.json"), "parts": Path(f"{out}.parts")}


def check_output(output_file, overwrite: bool, probe: bool = True):
    """Everything the run will write can be written: found out before hours of generation, and
    before anything is created. `probe` tries a write (a test file, removed at once): do it
    after every other check."""
    paths = output_paths(output_file)
    out = paths["output"]
    if out.is_dir():
        raise UserError(f"--output_file {out}: is a folder")
    if out.exists() and not overwrite:
        raise UserError(f"--output_file {out}: exists; pass --overwrite to replace it")
    for key in ("summary", "examples", "eval"):
        if paths[key].is_dir():
            raise UserError(f"--output_file {out}: {paths[key]} is a folder")
    if paths["parts"].exists() and not paths["parts"].is_dir():
        raise UserError(f"--output_file {out}: {paths['parts']} (partial results) is a file, not a folder")
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--output_file {out}: {folder} is a file, not a folder")
    if not probe:
        return
    try:  # os.access says yes to root on a read-only mount: try it
        fd, probe = tempfile.mkstemp(prefix=".chameleons-write-test.", dir=folder)
    except OSError as exc:
        raise UserError(f"--output_file {out}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
            "adapter_model.bin")


def check_model_dirs(dirs) -> list:
    """Each --model is a folder with a loadable HF model: config, weights present and whole.
    Checked for every member before anything is written (a later member's damaged file must not
    surface after hours of generating with the first)."""
    out = []
    for d in dirs:
        p = Path(d)
        if p.exists() and not p.is_dir():
            raise UserError(f"--model {d}: is a file, not a model folder")
        if not p.is_dir():
            raise UserError(f"--model {d}: model folder not found")
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise UserError(f"--model {d}: no config.json (or adapter_config.json), not a saved HF model")
        check_model_folder(p)
        for name in ("adapter_config.json", "generation_config.json"):
            if (p / name).is_file():
                try:
                    json.loads((p / name).read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise UserError(f"--model {d}: {name} is not valid JSON ({exc})") from None
        if not (p / "config.json").is_file():  # an adapter: its base model is loaded too
            base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
            base = base.get("base_model_name_or_path") if isinstance(base, dict) else None
            if not isinstance(base, str) or not base:
                raise UserError(f"--model {d}: adapter_config.json names no base_model_name_or_path")
            base_dir = Path(require_source(base, f"--model {d}: base model"))
            if base_dir.is_dir():
                check_model_dirs([base_dir])
        if not any(any(p.glob(pattern)) for pattern in _WEIGHTS):
            raise UserError(f"--model {d}: no weights (*.safetensors or pytorch_model*.bin) in the folder")
        for index in p.glob("*.index.json"):
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(f"--model {d}: {index.name} is not a readable weights index ({exc})") from None
            missing = sorted(str(s) for s in shards if not (p / str(s)).is_file())
            if missing:
                raise UserError(f"--model {d}: {index.name} lists {missing[0]}, which is not in the folder")
        if (p / "config.json").is_file():
            from transformers import AutoConfig

            try:
                config = AutoConfig.from_pretrained(str(p))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError(f"--model {d}: config.json cannot be used: {str(exc).splitlines()[0]}") from None
            check_weight_shapes(p, config)
        out.append(p)
    return out


def _safetensors_shapes(path) -> dict:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_weight_shapes(model_dir: Path, config):
    """Weights saved for another config (say a different hidden size) fail at load; find them now,
    from the files' headers and the model built on the meta device (no memory). Only names the
    model and the file share are compared: transformers renames and fuses some (MoE experts)."""
    import torch
    from transformers import AutoModelForCausalLM

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception:  # noqa: BLE001 - a model class that cannot be built on meta: the load will tell
        return
    for f in files:
        for key, shape in _safetensors_shapes(f).items():
            if key in expected and expected[key] != shape:
                raise UserError(f"--model {model_dir}: {f.name} holds {key} of shape {list(shape)}, config.json "
                                f"needs {list(expected[key])}: the weights are not the model config.json describes")


_IDENTITY_FILES = ("config.json", "generation_config.json", "adapter_config.json") + _WEIGHTS


def model_fingerprint(model_dir) -> str:
    """Who the model is, not where: names, sizes and modification times of its config and
    weight files. Retraining into the same folder rewrites them, so shards made by the old model
    are never merged with the new one's. (Stat only: hashing 60 GB of weights would take minutes.)"""
    d = Path(model_dir)
    h = hashlib.sha256()
    names = sorted({f.name for pattern in _IDENTITY_FILES for f in d.glob(pattern) if f.is_file()})
    for name in names:
        st = (d / name).stat()
        h.update(f"{name}\x00{st.st_size}\x00{st.st_mtime_ns}\x01".encode())
    adapter = d / "adapter_config.json"
    if adapter.is_file():  # an adapter is only as fixed as its base
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            base = None
        if isinstance(base, str):
            h.update(f"base\x00{base}\x00".encode())
            if Path(base).is_dir() and Path(base).resolve() != d.resolve():
                h.update(model_fingerprint(base).encode())
    return h.hexdigest()[:24]


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


@contextmanager
def _quiet_loading():
    """transformers' per-load progress bar and load report go to stderr; a failed load must be
    one error line, and a good one needs neither (what matters is checked in load_model)."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def load_model(model_dir, device, device_map: str = "rank", warn=None):
    """One member, built straight on its device: with a device map, weights go from the file to
    the GPU, so 8 ranks do not each assemble a 57 GiB model in host RAM first. Weights that do
    not fit the config are an error; missing ones too (transformers would fill them randomly)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    placement = {}
    if device_map == "auto":
        placement = {"device_map": "auto"}
    elif device.type != "cpu":
        placement = {"device_map": {"": device}}
    d = Path(model_dir)
    info = {}
    try:
        with _quiet_loading():
            if (d / "config.json").is_file():
                model, info = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, output_loading_info=True,
                                                                   **placement)
            else:  # a LoRA run saves the adapter only: load its base and merge
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(str(d), dtype=dtype, **placement).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - loaders raise many types (OSError, ValueError, SafetensorError...)
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            raise  # the machine, not the folder
        text = (str(exc).splitlines() or [""])[0]
        if "ignore_mismatched_sizes" in text or "size mismatch" in str(exc):
            text = "the weights' shapes do not match config.json"
        raise UserError(f"--model {d}: could not be loaded: {type(exc).__name__}: {text}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UserError(f"--model {d}: the weights lack {len(missing)} tensors the config needs "
                        f"(first: {missing[0]}); not the model config.json describes")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected and warn:
        warn(f"--model {d}: {len(unexpected)} tensors in the weights are not used by the model "
             f"(first: {unexpected[0]})")
    model = prepare_for_inference(model)
    if not placement:
        model = model.to(device)
    return model.eval()


def free_memory():
    """Drop what a released model left: Python cycles, and the CUDA cache the next load needs."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class Members:
    """The models of a run, at most one in memory at a time (load, use, free, next): peak
    memory is one model whatever the ensemble size. `loads` counts loads (tests, logs)."""

    def __init__(self, model_dirs, load, make_generator=None):
        self.dirs = list(model_dirs)
        self._load, self._make_generator = load, make_generator
        self.loaded, self._model, self._generator = None, None, None
        self.loads = 0

    def __len__(self):
        return len(self.dirs)

    def model(self, k: int):
        if self.loaded != k:
            self.release()  # before the next load: two members never coexist
            self._model = self._load(self.dirs[k])
            self.loaded = k
            self.loads += 1
        return self._model

    def generator(self, k: int):
        model = self.model(k)
        if self._generator is None:
            self._generator = self._make_generator(model)
        return self._generator

    def order(self) -> list:
        """Every member once, the one in memory first (saves a load)."""
        rest = [k for k in range(len(self.dirs)) if k != self.loaded]
        return ([self.loaded] if self.loaded is not None else []) + rest

    def release(self):
        if self.loaded is not None:
            self._model = self._generator = None
            self.loaded = None
            free_memory()


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


def check_backend(backend: str, n_models: int, world: int, evaluate: bool, tensor_parallel_size: int = 1,
                  device_map: str = "rank"):
    if backend != "vllm":
        if tensor_parallel_size != 1:
            raise UserError("--tensor_parallel_size is for --backend vllm; with --backend hf use --device_map auto "
                            "to spread a model over the GPUs")
        if device_map == "auto" and world > 1:
            raise UserError("--device_map auto spreads one model over every GPU: run it as one process, "
                            "not under torchrun")
        return
    if device_map != "rank":
        raise UserError("--device_map is for --backend hf; with --backend vllm use --tensor_parallel_size")
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
    if tensor_parallel_size > torch.cuda.device_count():
        raise UserError(f"--tensor_parallel_size {tensor_parallel_size}: only {torch.cuda.device_count()} GPUs "
                        f"are visible")


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


def sample_seed(seed: int, member: int, uid: str, index: int) -> int:
    """The seed of one continuation: the run's seed, the member, the item's content uid and the
    sample's index, nothing about the batch, the rank or an earlier run. 63 bits (vLLM and
    torch take a non-negative int64)."""
    h = hashlib.blake2b(f"{seed}\x00{member}\x00{uid}\x00{index}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") >> 1


_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    """murmur3's finalizer: a bijection on 32-bit values whose every output bit depends on every
    input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def gumbel_noise(keys, step: int, vocab: int):
    """Gumbel(0, 1) noise of shape [rows, vocab], a pure function of each row's 64-bit key, the
    decoding step and the token id: counter-based, so a row's noise is the same in any batch and
    on any device (no generator state to share)."""
    import torch

    k1 = (keys & _MASK32).unsqueeze(1)
    k2 = ((keys >> 32) & _MASK32).unsqueeze(1)
    stream = _mix32(k1 ^ _mix32(torch.full_like(k1, step & _MASK32) ^ k2))
    token = _mul32(torch.arange(vocab, device=keys.device, dtype=torch.int64), 0x9E3779B1).unsqueeze(0)
    bits = _mix32(_mix32(token ^ stream) ^ k2)
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # 24 bits: exact in float32, never 0 or 1
    return -torch.log(-torch.log(uniform))


class ItemSampler:
    """Sampling by the Gumbel-max trick: argmax(warped logits + Gumbel noise) is a draw from
    softmax(warped logits), the distribution HF's multinomial sampling draws from. The noise of
    row r comes from that row's own key, so each continuation depends on its own seed only
    (HF draws every row of a batch from one global generator, which ties an item's text to its
    batch). Used as the last logits processor of a greedy `generate`."""

    def __init__(self, keys, prompt_width: int):
        self.keys, self.width = keys, prompt_width

    def __call__(self, input_ids, scores):
        noise = gumbel_noise(self.keys.to(scores.device), input_ids.shape[1] - self.width, scores.shape[-1])
        return scores + noise.to(scores.dtype)


class HFGenerator:
    """Batched `generate` over left-padded prompts; `n` candidates per prompt, each sampled with
    its own seed (`sample_seed`)."""

    def __init__(self, model, tokenizer, fmt, sampling: Sampling, n: int):
        from transformers import (GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        self.model, self.tokenizer = model, tokenizer
        self.stops = stop_token_ids(tokenizer, fmt, model)
        self.n = n
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        # Greedy search plus our own noise (ItemSampler) samples; HF's sampling mode would draw from
        # its global generator. The warpers are HF's own, in HF's order.
        self.config = GenerationConfig(do_sample=False, num_beams=1, num_return_sequences=1,
                                       max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_id,
                                       eos_token_id=self.stops, repetition_penalty=sampling.repetition_penalty,
                                       use_cache=True)
        self.warpers = LogitsProcessorList()
        if sampling.greedy:  # one greedy line, repeated: greedy search cannot return distinct sequences
            self.draws = 1
        else:
            self.draws = n
            if sampling.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
            if sampling.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
        self.sampled = not sampling.greedy

    def generate(self, prompts, seeds) -> list:
        """`seeds[i][j]`: the seed of prompt i's j-th candidate (one per draw)."""
        import torch
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        rows = [(b, j) for b in range(len(prompts)) for j in range(self.draws)]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (b, _) in enumerate(rows):
            p = prompts[b]
            input_ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        processors = LogitsProcessorList(self.warpers)
        if self.sampled:
            keys = torch.tensor([int(seeds[b][j]) for b, j in rows], dtype=torch.int64, device=device)
            processors.append(ItemSampler(keys, width))
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=self.config, logits_processor=processors)
        new = out[:, width:].tolist()
        result = []
        for b in range(len(prompts)):
            cands = [_candidate(self.tokenizer, new[b * self.draws + j], self.stops) for j in range(self.draws)]
            result.append([cands[j % self.draws] for j in range(self.n)])
        return result


class VllmGenerator:
    """One model on vLLM, fed the same prompt ids (never re-tokenized text). Each request has its
    own seed (the item's), so an item's samples do not depend on the batch. Not testable here
    (no vLLM, no GPU): kept to the calls vLLM documents."""

    def __init__(self, model_dir, tokenizer, fmt, sampling: Sampling, max_model_len: int,
                 tensor_parallel_size: int = 1):
        from vllm import LLM, SamplingParams

        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer, fmt)
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=sampling.seed,
                       max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size)
        self.n = sampling.num_samples
        # vLLM rejects n > 1 with temperature 0: ask for one greedy line and repeat it, as HF does
        self.draws = 1 if sampling.greedy else self.n
        params = dict(n=self.draws, max_tokens=sampling.max_new_tokens,
                      repetition_penalty=sampling.repetition_penalty, stop_token_ids=self.stops,
                      skip_special_tokens=False)
        if sampling.greedy:
            params.update(temperature=0.0)
        else:
            params.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k > 0:
                params["top_k"] = sampling.top_k
        self._params, self._sampling_cls = params, SamplingParams

    def generate(self, prompts, seeds) -> list:
        params = [self._sampling_cls(seed=int(s[0]), **self._params) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for o in outs:
            cands = []
            for c in o.outputs:
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and (not ids or ids[-1] not in self.stops) and c.stop_reason in self.stops:
                    ids.append(c.stop_reason)
                cands.append(_candidate(self.tokenizer, ids, self.stops))
            result.append([cands[j % len(cands)] for j in range(self.n)])
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


def _cand_json(c: Candidate) -> dict:
    return {"ids": c.token_ids, "text": c.text, "raw": c.raw, "finished": c.finished}


def _cand_from_json(d: dict) -> Candidate:
    return Candidate(list(d["ids"]), d["text"], d["raw"], bool(d["finished"]))


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
            stage = f"gen.m{m}"
            if progress:
                progress(f"generate {m + 1}/{m_count}", 0)
            for sid, line in store.read_stage(stage, uid_of).items():
                proposals[sid][m] = [_cand_from_json(c) for c in line["cands"]]
            for batch in batches:
                todo = [r for r in batch if proposals[r.sample_id][m] is None]
                if todo:
                    for r, cands in zip(todo, self._propose(m, todo)):
                        proposals[r.sample_id][m] = cands
                        store.append_stage(stage, {"sample_id": r.sample_id, "uid": r.sample.uid,
                                                   "cands": [_cand_json(c) for c in cands]})
                if progress:
                    progress(f"generate {m + 1}/{m_count}", len(batch))
        flat = {sid: [c for per_member in props for c in per_member] for sid, props in proposals.items()}
        logprobs = {sid: [None] * m_count for sid in uid_of}
        for m in reversed(range(m_count)):
            stage = f"score.m{m}"
            if progress:
                progress(f"score {m_count - m}/{m_count}", 0)
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
                    progress(f"score {m_count - m}/{m_count}", len(batch))
        for row in rows:
            cands, per_member = flat[row.sample_id], logprobs[row.sample_id]
            scores = [mean_loglik(ensemble_token_logprobs([per_member[m][j] for m in range(m_count)]))
                      for j in range(len(cands))]
            keep = choose_best(cands, scores, self.sampling.num_samples)
            yield make_result(row, [cands[i] for i in keep], [scores[i] for i in keep])


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
    """`<output>.parts/`: meta.json (settings), rank<R>.jsonl (one finished item a line) and, for
    ensembles, <stage>.rank<R>.jsonl (one member's proposals or scores of an item a line)."""

    def __init__(self, output_file, rank: int = 0):
        self.dir = Path(f"{output_file}.parts")
        self.rank = rank
        self._file = None
        self._stage_files = {}
        self.created = False  # by this run: removed again if bad input stops it (nothing written)
        self.bad_lines = 0
        self.stale_lines = 0

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def prepare(self, meta: dict, rows, num_samples: int, overwrite: bool) -> dict:
        """(Rank 0.) The results already done with these settings, by sample id."""
        self.created = not self.dir.exists()
        old = None
        if self.dir.exists():
            try:
                old = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
            has_lines = any(p.stat().st_size for p in self.dir.glob("*.jsonl"))
            if old != meta and (old is not None or has_lines):
                if not overwrite:
                    raise UserError(self._mismatch(old, meta))
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

    def _mismatch(self, old, meta) -> str:
        """One line saying what changed; a retrained model is named as such."""
        old = old if isinstance(old, dict) else {}
        differ = sorted(k for k in set(meta) | set(old) if old.get(k) != meta.get(k))
        if old and old.get("models") == meta.get("models") and "model_fingerprints" in differ:
            changed = [m for m, a, b in zip(meta["models"], old.get("model_fingerprints") or [],
                                            meta["model_fingerprints"]) if a != b] or meta["models"]
            return (f"{self.dir}: holds partial results of an earlier version of --model {changed[0]} (its config or "
                    f"weight files changed since, e.g. retrained); pass --overwrite to discard them, or delete the folder")
        return (f"{self.dir}: holds partial results made with other settings "
                f"({', '.join(differ) or 'unreadable meta.json'} differ); pass --overwrite to "
                f"discard them, or delete the folder")

    @staticmethod
    def _open_append(path: Path):
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                ends_clean = f.read(1) == b"\n"
            if not ends_clean:  # killed mid-line: start the next line on a fresh line
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
        return open(path, "a", encoding="utf-8")

    def open(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = self._open_append(self.dir / f"rank{self.rank}.jsonl")

    def append(self, result: dict):
        self._file.write(json.dumps(result, ensure_ascii=False) + "\n")
        self._file.flush()

    def read_stage(self, stage: str, uid_of: dict) -> dict:
        """An ensemble stage's lines for these items ({sample_id: uid}), from every rank's file
        (an earlier run may have had another world size); unreadable or stale lines are skipped."""
        found = {}
        for path in sorted(self.dir.glob(f"{stage}.rank*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # cut short by a kill
                    sid = value.get("sample_id") if isinstance(value, dict) else None
                    if sid in uid_of and value.get("uid") == uid_of[sid]:
                        found.setdefault(sid, value)
        return found

    def append_stage(self, stage: str, value: dict):
        if stage not in self._stage_files:
            self._stage_files[stage] = self._open_append(self.dir / f"{stage}.rank{self.rank}.jsonl")
        f = self._stage_files[stage]
        f.write(json.dumps(value, ensure_ascii=False) + "\n")
        f.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        for f in self._stage_files.values():
            f.close()
        self._stage_files = {}

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
        "model_fingerprints": [model_fingerprint(d) for d in model_dirs],
        "backend": args.backend,
        "ablation_config": args.ablation_config,
        "prompt_style": args.prompt_style,
        "max_length": max_length,
        "sampling": asdict(sampling),
    }


def generate_all(rows, predictor, store: PartStore, dist: Distributed, meta: dict, overwrite: bool,
                 progress: bool = True):
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
    bars = {}
    try:
        for r in mine:
            if not r.ids:
                new[r.sample_id] = unpromptable_result(r, n)
                store.append(new[r.sample_id])
        work = sorted((r for r in mine if r.ids), key=lambda r: -len(r.ids))
        tick = None
        if progress and dist.is_main:
            from tqdm import tqdm

            def tick(stage, count):
                if stage not in bars:
                    for bar in bars.values():
                        bar.close()
                    bars[stage] = tqdm(total=len(work), desc=f"{stage} (rank 0 of {dist.world})", unit="item",
                                       file=sys.stderr)
                bars[stage].update(count)
        for res in predictor.run(work, store, tick):
            new[res["sample_id"]] = res
            store.append(res)
    except UserError:
        # e.g. a member that cannot be loaded: its fix changes the model's fingerprint, so what this
        # run wrote could never be resumed; a run stopped by bad input leaves nothing behind
        if store.created:
            store.remove()
        raise
    finally:
        for bar in bars.values():
            bar.close()
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

def attach_continuations(records, results: dict):
    """Add `continuations` to every data item, from that item's own result only. Every item is
    predicted (the loader keeps them all for prediction), so a missing result is a bug: it stops
    the run rather than leave an item silently empty."""
    missing = [item_id for item_id in all_item_ids(records) if item_id not in results]
    if missing:
        raise RuntimeError(f"no prediction for {len(missing)} items (first: {missing[0]})")
    for item_id in all_item_ids(records):
        r, c, i = (int(p[1:]) for p in item_id.split("."))
        records[r]["task"]["task_behavior_collections"][c]["data"][i]["continuations"] = \
            list(results[item_id]["continuations"])


def ends_on_character(samples) -> list:
    """Items whose context ends on the character's own turn: predicted (the character goes on
    after its own line) but not what training counts as a sample, and not scored by --evaluate."""
    return [s.sample_id for s in samples if s.context and s.context[-1][0] == "assistant"]


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
