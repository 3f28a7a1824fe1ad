import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from chameleons.core.errors import UserError, user_errors_exit
from chameleons.core.launch import HUGE_PAGES, maybe_rank_zero, slurm_to_torch_env, use_huge_pages

REPO = Path(__file__).resolve().parents[1]


def test_slurm_task_becomes_a_torch_rank():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8",
           "MASTER_ADDR": "node01", "MASTER_PORT": "29555"}
    assert slurm_to_torch_env(env) == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                                       "MASTER_ADDR": "node01", "MASTER_PORT": "29555"}


def test_torchrun_and_single_tasks_are_left_alone():
    assert slurm_to_torch_env({"RANK": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == {}
    assert slurm_to_torch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}
    assert slurm_to_torch_env({}) == {}


def test_tasks_per_node_with_repeat_count():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8(x2)"}
    assert slurm_to_torch_env(env)["LOCAL_WORLD_SIZE"] == "8"


@pytest.mark.parametrize("rank, prints", [(None, True), ("0", True), ("1", False), ("3", False), ("x", True)])
def test_bad_input_is_said_by_rank_zero_alone(monkeypatch, capsys, rank, prints):
    """Every rank finds the same bad input; rank 0 says it (a RANK that cannot be read counts as
    0, so its line is never lost) and every rank exits 2."""
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as info, user_errors_exit(maybe_rank_zero):
        raise UserError("config.json: key training.batch_size: must be at least 1")
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: config.json: key training.batch_size: must be at least 1\n" if prints else "")


def test_two_process_torchrun_prints_one_error_line(tmp_path):
    """The real launcher: a flag value every rank refuses is one `error:` line, not one per rank,
    and torchrun reports the workers' exit code 2."""
    out = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={free_port()}",
                          str(REPO / "train_distributed_Chameleons.py"), "--config", str(REPO / "config_tiny_cpu.json"),
                          "--output_dir", str(tmp_path / "run"), "--max_samples_per_user", "0"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max_samples_per_user" in errors[0], out.stderr[-2000:]
    assert out.returncode != 0 and "exitcode  : 2" in out.stderr.replace("exitcode: ", "exitcode  : ")
    assert not (tmp_path / "run").exists()


def test_a_users_huge_pages_switch_is_kept():
    env = {}
    use_huge_pages(env)
    assert env == {"THP_MEM_ALLOC_ENABLE": "1"}
    env = {"THP_MEM_ALLOC_ENABLE": "0"}
    use_huge_pages(env)
    assert env == {"THP_MEM_ALLOC_ENABLE": "0"}


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
                    or "[madvise]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(),
                    reason="huge pages follow torch's switch only in the kernel's THP mode madvise")
@pytest.mark.parametrize("switch, expected", [(None, True), ("0", False)])
def test_torch_puts_large_tensors_on_huge_pages_when_switched_before_import(switch, expected):
    """The probe the plan's device line reports, in a fresh process: the switch set before torch
    is imported is what torch's allocator honours (and a user's 0 turns it off)."""
    code = (f"import os, sys; sys.path.insert(0, sys.argv[1]); os.environ.pop({HUGE_PAGES!r}, None)\n"
            + (f"os.environ[{HUGE_PAGES!r}] = {switch!r}\n" if switch else "")
            + "from chameleons.core import launch; launch.use_huge_pages()\n"
              "from chameleons.train.model_setup import huge_pages_in_use; print(huge_pages_in_use())")
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


@pytest.mark.parametrize("eligible", [0, 1])
def test_huge_pages_are_the_kernels_verdict_on_the_probes_mapping(tmp_path, eligible):
    from chameleons.train.model_setup import huge_pages_in_use

    smaps = tmp_path / "smaps"
    smaps.write_text("0-7fffffffffff rw-p 00000000 00:00 0\nSize: 65540 kB\n"
                     f"THPeligible:    {eligible}\nVmFlags: rd wr mr mw me ac\n")
    assert huge_pages_in_use(smaps) is bool(eligible)
    assert huge_pages_in_use(tmp_path / "missing") is False
