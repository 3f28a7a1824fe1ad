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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

COMPLETE = "complete.json"  # written by rank 0 once every rank's file is in place


@dataclass(frozen=True)
class InitialWeights:
    key: str
    state: dict  # parameter name -> this rank's partition, on the CPU


def key_of(config, dtype, world_size: int) -> str:
    """What the initial weights depend on (a random-init model's also on its seed)."""
    m = config.model
    return json.dumps([asdict(m), str(dtype), world_size, config.training.seed if m.random_init else None],
                      sort_keys=True, default=str)


def capture(model, key: str) -> InitialWeights:
    return InitialWeights(key, {name: p.ds_tensor.detach().to("cpu", copy=True)
                                for name, p in model.named_parameters()})


def restore(model, kept: InitialWeights) -> None:
    params = dict(model.named_parameters())
    if set(params) != set(kept.state):
        raise RuntimeError(f"initial weights: parameters differ from the model's "
                           f"({sorted(set(params) ^ set(kept.state))[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.ds_tensor.data.copy_(kept.state[name])


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


def read(entry: Path, key: str, rank: int, world: int, device) -> InitialWeights | None:
    """Every rank's own partitions from the cache entry, or None on every rank when any rank's
    file is missing or unreadable (collective: all ranks then read the model instead)."""
    state = None
    if cached(entry):
        try:
            state = torch.load(_rank_file(entry, rank, world), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            state = None
    return InitialWeights(key, state) if _all_agree(state is not None, device) else None


def find(in_memory, key, entry, rank: int, world: int, device) -> tuple:
    """(the initial weights to start from, where they come from as the log says it), or (None,
    None): build the model as usual. A sweep's kept ones of this key, else the cache's `entry`."""
    if key is not None and in_memory is not None and in_memory.key == key:
        return in_memory, "initial weights from host memory (an earlier run of this sweep built them)"
    kept = read(entry, key, rank, world, device) if entry is not None else None
    if kept is not None:
        return kept, f"initial weights from the partition cache {entry} (each rank its own file)"
    return None, None


def write(entry: Path, kept: InitialWeights, rank: int, world: int, device) -> str:
    """Each rank writes its own file (renamed into place whole); rank 0 marks the entry complete
    once all have. Collective. Returns what the log says: written, or why not (a full disk)."""
    why = None
    try:
        entry.mkdir(parents=True, exist_ok=True)
        path = _rank_file(entry, rank, world)
        part = path.with_name(path.name + f".{os.getpid()}.part")
        torch.save(kept.state, part)
        os.replace(part, path)
    except OSError as exc:
        why = f"{exc.strerror or exc} ({exc.filename or entry})"
    if not _all_agree(why is None, device):
        return f"partition cache not written: {why or 'another rank could not write its file'}"
    if rank == 0:
        (entry / COMPLETE).write_text(json.dumps({"world_size": world, "key": json.loads(kept.key)}, indent=2))
    return f"partition cache written: {entry}"
