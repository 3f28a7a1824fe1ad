"""A DeepSpeed checkpoint (what HF Trainer saves under `--deepspeed`) checked before a resume
writes anything: the state folder `latest` names is there, every rank's shards are present and
whole, and it was written with this run's ZeRO stage and world size. DeepSpeed itself finds out
only deep inside `load_checkpoint`, after the run folder is written, with a traceback (a cut
shard is `OSError: [Errno 22] Invalid argument`).

The layout, as DeepSpeed 0.19 writes it (seen on the demo's ZeRO-3 run):
`checkpoint-N/latest` holds `global_stepN`; `checkpoint-N/global_stepN/` holds per rank r
`[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt` and, under ZeRO-3,
`zero_pp_rank_{r}_mp_rank_00_model_states.pt` (stages 0-2: one `mp_rank_00_model_states.pt`).
The files are torch's zip archives, so a cut one lacks its central directory: the standard
library sees that without torch or reading the (large) data."""

import re
import zipfile
from pathlib import Path

from ..core.errors import UserError

_OPTIM = re.compile(r"(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
_MODEL_Z3 = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt")
_MODEL = re.compile(r"mp_rank_(\d+)_model_states\.pt")


def state_folder(checkpoint) -> Path | None:
    """The DeepSpeed state folder of a checkpoint (None: the checkpoint has no DeepSpeed state)."""
    checkpoint = Path(checkpoint)
    latest = checkpoint / "latest"
    steps = sorted(p for p in checkpoint.glob("global_step*") if p.is_dir())
    if not latest.is_file():
        if steps:
            raise UserError(f"{checkpoint}: DeepSpeed state {steps[-1].name}/ without the file 'latest' that names "
                            f"it: an incomplete save; resume from an earlier checkpoint")
        return None
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    folder = checkpoint / tag
    if not tag or "/" in tag or not folder.is_dir():
        raise UserError(f"{latest}: names DeepSpeed state {tag!r}, which is not a folder of the checkpoint; "
                        f"an incomplete save: resume from an earlier checkpoint")
    return folder


def describe(folder: Path) -> dict:
    """The ZeRO stage and world size the state was written with, from its file names."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    optim = sorted(int(m[1]) for m in map(_OPTIM.fullmatch, names) if m)
    model_z3 = sorted(int(m[1]) for m in map(_MODEL_Z3.fullmatch, names) if m)
    model = [n for n in names if _MODEL.fullmatch(n)]
    if not optim or not (model_z3 or model):
        raise UserError(f"{folder}: no DeepSpeed {'optimizer' if not optim else 'model'} state files "
                        f"(*_optim_states.pt, *_model_states.pt); resume from an earlier checkpoint")
    world = max(optim) + 1
    ranks = set(range(world))
    missing = sorted(ranks - set(optim)) or (sorted(ranks - set(model_z3)) if model_z3 else [])
    if missing:
        raise UserError(f"{folder}: the state of rank {missing[0]} is missing (written by {world} ranks); "
                        f"resume from an earlier checkpoint")
    return {"zero_stage": 3 if model_z3 else None, "world_size": world}


def check_whole(folder: Path):
    """Every .pt/.pth file of the state and of the checkpoint around it (scheduler, RNG states) is a
    complete zip archive (torch.save's format): a cut file has lost its end."""
    for path in sorted([*folder.glob("*.pt"), *folder.parent.glob("*.pt"), *folder.parent.glob("*.pth")]):
        size = path.stat().st_size
        try:
            with zipfile.ZipFile(path) as z:
                end = max((i.header_offset + i.compress_size for i in z.infolist()), default=0)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise UserError(f"{path}: truncated or damaged ({size:,} bytes; {exc}); an interrupted save or copy: "
                            f"resume from an earlier checkpoint") from None
        if end > size:
            raise UserError(f"{path}: truncated ({size:,} bytes, its index promises more than {end:,}); resume from "
                            f"an earlier checkpoint")


def check_resume(checkpoint, deepspeed_config, zero_stage, world_size: int):
    """One line if this run cannot resume `checkpoint` as it is set up (see the module docstring)."""
    folder = state_folder(checkpoint)
    if folder is None:
        if deepspeed_config:
            raise UserError(f"--resume_from_checkpoint {checkpoint}: written without DeepSpeed (no 'latest', no "
                            f"global_step*/); resume it without --deepspeed, or start fresh with it")
        return
    written = describe(folder)
    stage_text = f"ZeRO-{written['zero_stage']}" if written["zero_stage"] else "ZeRO-0/1/2"
    if not deepspeed_config:
        raise UserError(f"--resume_from_checkpoint {checkpoint}: a DeepSpeed checkpoint ({stage_text}, "
                        f"{written['world_size']} ranks); resume it with --deepspeed and the same DeepSpeed config")
    if (written["zero_stage"] == 3) != (zero_stage == 3):
        raise UserError(f"--resume_from_checkpoint {checkpoint}: written with {stage_text}, this run's --deepspeed "
                        f"{deepspeed_config} is ZeRO-{zero_stage}; resume with the config it was written with")
    if written["world_size"] != world_size:
        raise UserError(f"--resume_from_checkpoint {checkpoint}: written by {written['world_size']} ranks, this run "
                        f"has {world_size}; DeepSpeed restores its partitioned state only on the same number of "
                        f"processes (or convert it with DeepSpeed's ds_to_universal.py)")
    check_whole(folder)
