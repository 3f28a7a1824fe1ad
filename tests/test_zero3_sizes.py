"""ZeRO-3 sizes from the model (chameleons/train/zero3.py), checkpoint costs in the plan, the distributed
timeout setting, and checkpoints that skip the gathered model under ZeRO-3."""

import json
from pathlib import Path

import pytest

from chameleons.core.config import ModelConfig, load_config
from chameleons.core.errors import UserError
from chameleons.train import zero3
from test_batching_equality import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_sizes_follow_the_largest_unit_zero3_gathers():
    from chameleons.train.model_setup import register_moe_leaves

    model = tiny_model()  # 2 layers, hidden 64, 8 experts of width 32, vocabulary 512
    assert max(zero3.gather_units(model)) == 512 * 64  # no leaves yet: the embedding is the largest parameter
    register_moe_leaves(model)
    block = sum(p.numel() for p in model.model.layers[0].mlp.parameters())
    assert block == 8 * (2 * 32 * 64 + 64 * 32) + 8 * 64 > 512 * 64
    units = zero3.gather_units(model)
    assert sum(units) == sum(p.numel() for p in model.parameters())  # every parameter in exactly one unit
    assert units.count(block) == 2
    ds = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                "stage3_max_live_parameters": "auto", "stage3_max_reuse_distance": 5}}
    filled = zero3.fill_auto(ds, model)
    assert filled == {"stage3_prefetch_bucket_size": block, "stage3_max_live_parameters": 3 * block,
                      "reduce_bucket_size": 512 * 64}
    assert ds["zero_optimization"]["stage3_max_reuse_distance"] == 5  # a number in the config wins
    assert zero3.fill_auto({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, model) == {}


def test_shipped_zero3_config_leaves_the_model_sizes_to_chameleons():
    zero = json.loads((ROOT / "ds_config_zero3_optimized.json").read_text())["zero_optimization"]
    for key in ("stage3_prefetch_bucket_size", "stage3_max_live_parameters", "stage3_max_reuse_distance",
                "reduce_bucket_size"):
        assert zero[key] == "auto", key
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the final model is complete


def test_checkpoint_cost_and_plan_line():
    from chameleons.train.planning import _checkpoint_line

    n = 30_532_122_624
    ck = zero3.checkpoint_cost(n, 3, 3, world_size=8)
    assert ck["evaluation_checkpoint_bytes"] == 2 * n and ck["checkpoint_bytes"] == 14 * n
    assert ck["disk_bytes"] == 14 * n + 2 * 2 * n + 2 * n  # newest resumable + 2 weight saves + final model
    assert ck["host_ram_bytes_resume_node"] == 14 * n // 8 and ck["host_ram_bytes_best_restore_node"] == 2 * n
    assert ck["host_ram_bytes_export_node"] == 2 * n  # one node: every rank's share of the final model
    line = _checkpoint_line(ck)
    assert "56.9 GiB per evaluation-time checkpoint" in line and "398.1 GiB per resumable one" in line
    assert "ZeRO-3" in line and "written at the end, every rank its share (56.9 GiB of host RAM per node)" in line
    two_nodes = zero3.checkpoint_cost(n, 3, 3, world_size=16, ranks_per_node=8)
    assert two_nodes["host_ram_bytes_export_node"] == n  # half the shares on each node
    every = zero3.checkpoint_cost(n, 3, 3, world_size=8, weights_only=False)  # full_checkpoint_minutes 0
    assert every["evaluation_checkpoint_bytes"] == 14 * n and every["disk_bytes"] == 3 * 14 * n + 2 * n
    assert zero3.checkpoint_cost(n, 2, 2)["evaluation_checkpoint_bytes"] == 14 * n  # ZeRO-2: every save resumable
    assert zero3.checkpoint_cost(n, None, 2)["checkpoint_bytes"] == 6 * n
    assert zero3.checkpoint_cost(None, 3, 2) is None and "not estimated" in _checkpoint_line(None)


def test_parameter_count_on_the_meta_device():
    cfg = load_config(ROOT / "config_tiny_cpu.json")
    n = zero3.parameter_count(cfg.model)
    spec = cfg.model.random_init
    embed = spec["vocab_size"] * spec["hidden_size"]  # tied with lm_head: counted once
    assert embed < n < embed + 200_000
    assert zero3.parameter_count(ModelConfig(name_or_path="/nonexistent/model")) is None


def test_ddp_timeout_setting(tmp_path):
    cfg = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    assert load_config(ROOT / "config_tiny_cpu.json").training.ddp_timeout == 1800
    cfg["training"]["ddp_timeout"] = 10
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="ddp_timeout must be between 60 and"):
        load_config(path)
    cfg["training"]["ddp_timeout"] = 7200
    path.write_text(json.dumps(cfg))
    config = load_config(path)
    from chameleons.run.cli import parse_train_args
    from chameleons.train.model_setup import DevicePolicy
    from chameleons.train.training import training_arguments

    opts = parse_train_args(["--config", str(path), "--output_dir", str(tmp_path / "out"), "--max_epochs", "1"])
    targs = training_arguments(opts, config, DevicePolicy(on_gpu=False, bf16=False, attn_implementation="sdpa"), [])
    assert targs.ddp_timeout == 7200


def test_the_plan_states_the_start_up_it_expects():
    from chameleons.train.planning import _startup_line, startup_estimate

    n = 30_532_122_624
    loaded = startup_estimate(n, random_init=False)
    assert loaded["model_read_bytes"] == 2 * n and loaded["expected_s"] == round(2 * n / 2e9 + 15)
    assert "rank 0 reads the model (56.9 GiB) at an assumed 2 GB/s" in _startup_line(loaded)[0]
    # 2 nodes of 8: each node's disk gives its 8 ranks' halves at once
    cached = startup_estimate(n, random_init=False, world_size=16, cached=True, ranks_per_node=8)
    assert cached["model_read_bytes"] == n and cached["expected_s"] == round(n / 2e9 + 15)
    assert "every node reads its ranks' partitions from the partition cache (28.4 GiB)" in _startup_line(cached)[0]
    assert startup_estimate(n, False, 8, cached=True, ranks_per_node=8)["model_read_bytes"] == 2 * n  # one node
    drawn = startup_estimate(n, random_init=True)
    assert drawn["expected_s"] == 15 and "drawn at random" in _startup_line(drawn)[0]
    assert _startup_line(None) == []
