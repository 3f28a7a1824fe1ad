"""A run's model as each rank holds it before training (its ZeRO-3 partitions), kept so that the
next run with the same model does not read the model's files again.

In a sweep the first run's partitions stay in host memory, and a later run with the same model,
dtype, world size and (for a random-init model) training seed builds the model from its config
and copies them in. With `--partition_cache DIR` a pretrained model's partitions are also written
to disk once, every rank its own file, and read back by every rank in parallel at the next launch
(a shell loop of runs): a 30B model is minutes of reading for rank 0, its partition a few seconds
for each rank. About 2 bytes a parameter per node in bf16, in host memory and on the cache's disk."""

import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

COMPLETE = "complete.json"  # written by rank 0 once every rank's file is in place


@dataclass(frozen=True)
class InitialWeights:
    key: str
    state: dict  # parameter name -> this rank's partition, on the CPU
    buffers: dict = field(default_factory=dict)  # persistent buffers, whole (ZeRO-3 does not partition them)


def key_of(config, dtype, world_size: int, zero_config=None) -> str:
    """What the initial weights depend on (a random-init model's also on its seed; the ZeRO
    section decides how parameters are partitioned, e.g. MiCS)."""
    m = config.model
    return json.dumps([asdict(m), str(dtype), world_size, config.training.seed if m.random_init else None,
                       zero_config], sort_keys=True, default=str)


def persistent_buffers(model) -> dict:
    """Buffers a checkpoint holds (by their full names): ZeRO-3 does not partition them."""
    out = {}
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                out[f"{module_name}.{name}" if module_name else name] = buffer
    return out


def capture(model, key: str) -> InitialWeights:
    """Each rank's partitions and the persistent buffers (e.g. an MoE router's score correction
    bias, which a model built from its config would have at its constructor's value)."""
    return InitialWeights(key, {name: p.ds_tensor.detach().to("cpu", copy=True) for name, p in model.named_parameters()},
                          {name: b.detach().to("cpu", copy=True) for name, b in persistent_buffers(model).items()})


def restore(model, kept: InitialWeights) -> None:
    params, buffers = dict(model.named_parameters()), persistent_buffers(model)
    if set(params) != set(kept.state) or set(buffers) != set(kept.buffers):
        raise RuntimeError(f"initial weights: parameters differ from the model's "
                           f"({sorted((set(params) ^ set(kept.state)) | (set(buffers) ^ set(kept.buffers)))[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.ds_tensor.data.copy_(kept.state[name])
        for name, b in buffers.items():
            b.copy_(kept.buffers[name])


def cache_entry(cache_dir, config, dtype, world_size: int, zero_config) -> Path | None:
    """The run's entry in `--partition_cache` (None: no cache, no ZeRO-3, or nothing is read)."""
    if not cache_dir or (zero_config or {}).get("stage") != 3 or config.model.random_init:
        return None
    return cache_folder(cache_dir, key_of(config, dtype, world_size, zero_config), config.model.name_or_path)


def cache_folder(cache_dir, key: str, model_path) -> Path | None:
    """The cache entry of these initial weights: keyed by `key`, every file of the model's folder
    (name, size, modification time) and the versions that partition it; None when the model is
    not a local folder (a hub name: its files are not known before they are read)."""
    from importlib.metadata import version

    folder = Path(model_path)
    if not folder.is_dir():
        return None
    h = hashlib.sha256(json.dumps([key, [version(p) for p in ("torch", "transformers", "deepspeed")]]).encode())
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Path(cache_dir, h.hexdigest()[:24])


def _rank_file(entry: Path, rank: int, world: int) -> Path:
    return entry / f"rank{rank:05d}-of-{world:05d}.pt"


def cached(entry: Path | None) -> bool:
    return entry is not None and (entry / COMPLETE).is_file()


def _all_agree(ok: bool, device) -> bool:
    """True when every rank's `ok` is (a collective under torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def agreed_entry(entry: Path | None) -> Path | None:
    """Rank 0's entry on every rank: ranks on other nodes may see the model's files with other
    modification times (a copy per node), and all must read or write one entry."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return entry
    shared = [str(entry) if entry is not None else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    return Path(shared[0]) if shared[0] is not None else None


def read(entry: Path, key: str, rank: int, world: int, device) -> InitialWeights | None:
    """Every rank's own partitions from the cache entry, or None on every rank when any rank's
    file is missing or unreadable (collective: all ranks then read the model instead)."""
    saved = None
    if cached(entry):
        try:
            saved = torch.load(_rank_file(entry, rank, world), map_location="cpu", weights_only=True)
            saved = InitialWeights(key, saved["parameters"], saved["buffers"])
        except Exception:  # noqa: BLE001 - any damaged or foreign file: every rank reads the model instead
            saved = None
    return saved if _all_agree(saved is not None, device) else None


def find(in_memory, key, entry, rank: int, world: int, device) -> tuple:
    """(the initial weights to start from, where they come from as the log says it), or (None,
    None): build the model as usual. A sweep's kept ones of this key, else the cache's `entry`."""
    if key is not None and in_memory is not None and in_memory.key == key:
        return in_memory, "from host memory (an earlier run of this sweep built them)"
    kept = read(entry, key, rank, world, device) if entry is not None else None
    if kept is not None:
        return kept, f"from the partition cache {entry} (each rank its own file)"
    return None, None


def write(entry: Path, kept: InitialWeights, rank: int, world: int, device) -> str:
    """Each rank writes its own file (renamed into place whole); rank 0 marks the entry complete
    once all have. Collective. Returns what the log says: written, or why not (a full disk)."""
    why, part = None, None
    try:
        entry.mkdir(parents=True, exist_ok=True)
        path = _rank_file(entry, rank, world)
        part = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.part")
        torch.save({"parameters": kept.state, "buffers": kept.buffers}, part)
        os.replace(part, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        why = (f"{exc.strerror} ({exc.filename or entry})" if isinstance(exc, OSError) and exc.strerror
               else str(exc).splitlines()[0][:200])
        if part is not None:
            part.unlink(missing_ok=True)
    if not _all_agree(why is None, device):
        return f"partition cache not written: {why or 'another rank could not write its file'}"
    if rank == 0:
        (entry / COMPLETE).write_text(json.dumps({"world_size": world, "key": json.loads(kept.key)}, indent=2))
    return f"partition cache written: {entry}"
