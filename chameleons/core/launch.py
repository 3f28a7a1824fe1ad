"""Ranks from the launcher: torchrun sets RANK/WORLD_SIZE itself; under plain `srun` (one task
per GPU) they come from the SLURM variables."""

import logging
import os
import shlex
import sys
import time

from .errors import UserError

STARTED = time.time()  # the process's start, near enough: the entry scripts import this module first


def slurm_to_torch_env(environ) -> dict:
    """The torch.distributed variables a SLURM task implies, or {} when torchrun (or nothing)
    launched us. MASTER_ADDR must come from the batch script (the first node's host name)."""
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return {}
    ntasks = env_int("SLURM_NTASKS", 1, environ)
    if ntasks < 2:
        return {}
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", environ.get("SLURM_GPUS_ON_NODE", "1")).split("(")[0],
        "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": environ.get("MASTER_PORT", "29500"),
    }


def adopt_slurm_ranks():
    os.environ.update(slurm_to_torch_env(os.environ))


HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # torch's own switch (c10 alloc_cpu), read at its first allocation


def use_huge_pages(environ=None):
    """Back CPU tensors of 2 MiB and more with transparent huge pages. glibc maps each large block
    afresh, so each micro-batch's vocabulary-wide logits, log-probabilities and gradients (151,936
    columns) were faulted in and zeroed 4 KiB at a time: 13 million page faults in the demo, a
    third of its CPU time in the kernel. torch reads the switch at its first allocation: call this
    before torch is imported. A value the user set wins (0 keeps 4 KiB pages)."""
    (os.environ if environ is None else environ).setdefault(HUGE_PAGES, "1")


def adopt_single_process():
    """A DeepSpeed run started by plain python (no torchrun, no srun) is a world of one on this
    host: without these variables DeepSpeed looks for MPI and fails with a traceback."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                       "MASTER_PORT": os.environ.get("MASTER_PORT", str(port))})


def env_int(name: str, default: int, environ=None) -> int:
    """A launcher's integer variable (RANK, WORLD_SIZE, SLURM_NTASKS...), or one clear error line."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer") from None


def rank() -> int:
    return env_int("RANK", 0)


def maybe_rank_zero() -> bool:
    """For use before RANK is validated: a bad value counts as rank 0, so its error line is not
    silenced on the one process that prints."""
    try:
        return rank() <= 0
    except UserError:
        return True


def world_size() -> int:
    return env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return env_int("LOCAL_RANK", 0)


def local_world_size() -> int:
    return env_int("LOCAL_WORLD_SIZE", world_size())


def launched() -> bool:
    """Started by torchrun or srun (a worker process), not by plain python."""
    return "LOCAL_RANK" in os.environ


def exit_worker(code: int):
    """Ends the process with `code`. A worker started by torchrun or srun skips interpreter
    teardown: after a complete ZeRO-3 run, native threads destroyed there abort some runs
    (`terminate called without an active exception`), and the launcher then reports a finished
    run as failed. By now every file is written and closed and wandb is finished."""
    if not launched():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def without_flag(argv: list, flag: str) -> list:
    """`argv` without every `--flag VALUE` and `--flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def resume_command() -> str:
    """The command to continue this run: exact for one machine, the launcher left to the user
    across nodes or under SLURM."""
    argv = without_flag(sys.argv, "--resume_from_checkpoint")
    world, local = world_size(), local_world_size()
    if world == 1:
        return shlex.join(["python", *argv])
    if world == local and "SLURM_PROCID" not in os.environ:
        return shlex.join(["torchrun", f"--nproc_per_node={world}", *argv])
    return "the same launcher (torchrun/srun) with " + shlex.join(argv)
