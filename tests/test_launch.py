from chameleons.launch import slurm_to_torch_env


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
