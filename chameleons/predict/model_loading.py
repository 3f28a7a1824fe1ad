"""The models of a prediction run: each --model folder checked before anything runs (config,
weights present, whole and of the right shapes), identified by a fingerprint of its files,
loaded one member at a time onto its device, and the one tokenizer every member must share.
Separate from generation so that what a model folder must hold is read in one place.
"""

import gc
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import UserError
from ..core.sources import check_model_folder, require_source, safetensors_header
from ..text.encoding import load_tokenizer
from .generation import prepare_for_inference


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
        out.append(p)
    return out


def check_model_configs(dirs):
    """The part of `check_model_dirs` that needs transformers (and so torch): each config.json
    is one transformers reads, and the weights fit it. Run after the checks of the input, which
    then report in a fraction of a second."""
    from transformers import AutoConfig

    for d in dirs:
        p = Path(d)
        if not (p / "config.json").is_file():  # an adapter: its local base model is checked
            base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
            if Path(base).expanduser().is_dir():
                check_model_configs([Path(base).expanduser()])
            continue
        try:
            config = AutoConfig.from_pretrained(str(p))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--model {d}: config.json cannot be used: {str(exc).splitlines()[0]}") from None
        check_weight_shapes(p, config)


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
        for key, tensor in safetensors_header(f).items():
            shape = tuple(tensor["shape"])
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
    Byte-identical tokenizer files are not loaded twice, and a vocabulary is only compared (its
    151k-entry dict built) when a second tokenizer was loaded."""
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
        if first is None:
            first, first_dir = tok, d
            continue
        first_fp = first_fp or (first.get_vocab(), str(first.chat_template))
        if (tok.get_vocab(), str(tok.chat_template)) != first_fp:
            detail = (f"vocabularies of {len(first)} and {len(tok)} tokens" if len(first) != len(tok)
                      else "same size, different vocabulary or chat template")
            raise UserError(f"--model {d}: tokenizer differs from --model {first_dir}'s ({detail}); "
                            f"ensemble members must share one tokenizer")
    return first


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


def load_untrained(model_dir, model, seed: int, device, warn=None):
    """The model a run started from, for the untrained baseline: its base (`model.name_or_path`,
    loaded as a member is), or for a `model.random_init` run the architecture of the run's saved
    config.json with weights drawn after seeding with the run's seed."""
    if not model.random_init:
        return load_model(model.name_or_path, device, "rank", warn)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    with _quiet_loading():
        built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)), dtype=torch.float32)
    return prepare_for_inference(built).to(device).eval()


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
