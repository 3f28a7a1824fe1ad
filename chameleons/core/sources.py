"""Where a model or tokenizer comes from: a local folder or a Hugging Face hub id, checked before
anything is written. transformers answers a missing local folder with a hub repo-id message, and
an unreachable hub only after about 50 s of retries."""

import json
import os
import struct
from pathlib import Path

from .errors import UserError


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing may be fetched from the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def require_source(name: str, what: str, hint: str = None) -> str:
    """The local folder, or a hub id that is in the local cache or reachable; else one error line
    (ending in `hint`, what to do, where the caller knows it)."""
    path = Path(name).expanduser()
    todo = f"; {hint}" if hint else ""
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {name}: not a folder{todo}")
        return str(path)
    if _looks_local(name):
        raise UserError(f"{what} {name}: not found{todo}")
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        if isinstance(try_to_load_from_cache(name, filename), str):
            return name
    if hub_offline():
        raise UserError(f"{what} {name!r}: no such local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
                        f"{todo}")
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        huggingface_hub.model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise UserError(f"{what} {name!r}: no such local folder, and not found on the Hugging Face hub{todo}") from None
    except Exception as exc:  # network errors come from several HTTP libraries
        raise UserError(f"{what} {name!r}: no such local folder, not in the Hugging Face cache, and the hub cannot be "
                        f"reached ({type(exc).__name__}); download it and pass its folder") from None
    return name


def safetensors_header(path) -> dict:
    """The tensors a safetensors file declares (name -> dtype, shape, offsets), after checking the
    file holds all of them: a truncated or garbled file fails here, in a line, not deep in a load."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(f.read(header_len))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    if 8 + header_len + end > size:
        raise UserError(f"{path}: truncated ({size:,} bytes, the header promises {8 + header_len + end:,}); an "
                        f"interrupted copy or save: copy the file again, or use an earlier checkpoint")
    return tensors


def check_model_folder(folder):
    """config.json and every weights file of a local model or checkpoint folder are readable."""
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{config}: not valid JSON ({exc})") from None
    for weights in sorted(folder.glob("*.safetensors")):
        safetensors_header(weights)
