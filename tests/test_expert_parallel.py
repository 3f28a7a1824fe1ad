"""Expert parallelism's decisions and mappings, without processes: which size a run gets, the
DeepSpeed config it hands over (never a literal "auto"), the transformers bridge, and AutoEP's
names mapped back to a model transformers loads strictly."""

import json
from pathlib import Path

import pytest
import torch

from chameleons.core.errors import UserError
from chameleons.train import expert_parallel as ep

ROOT = Path(__file__).resolve().parents[1]


def resolve(requested=0, zero_stage=3, world=2, local_world=2, model_type="qwen3_moe", num_experts=8, lora=False):
    return ep.resolve(requested, zero_stage, world, local_world, ep.MoeShape(model_type, num_experts), lora)


def test_on_by_default_with_the_gpus_of_a_node():
    assert resolve() == {"enabled": True, "size": 2, "preset": "qwen3_moe", "reason": "the GPUs of a node"}
    assert resolve(world=16, local_world=8, num_experts=128)["size"] == 8  # two nodes: experts shared within one
    assert resolve(world=6, local_world=6, num_experts=128)["size"] == 2  # the largest size dividing both
    assert resolve(requested=4, world=8, local_world=8)["size"] == 4


@pytest.mark.parametrize("kwargs, reason", [
    (dict(requested=1), "training.expert_parallel_size is 1"),
    (dict(zero_stage=2), "ZeRO-3 only"),
    (dict(zero_stage=None), "ZeRO-3 only"),
    (dict(num_experts=None, model_type="qwen3"), "not a MoE model"),
    (dict(num_experts=None, model_type=None), "the model's config is not on this machine"),
    (dict(world=1, local_world=1), "one process"),
    (dict(lora=True), "not with LoRA"),
    (dict(model_type="mixtral"), "no AutoEP preset this trainer saves"),
])
def test_off_where_it_cannot_run(kwargs, reason):
    plan = resolve(**kwargs)
    assert not plan["enabled"] and plan["size"] == 1 and plan["reason"].startswith(reason)


@pytest.mark.parametrize("kwargs, message", [
    (dict(requested=4, world=2), "must divide the world size (2)"),
    (dict(requested=3, world=6, local_world=6), "and the number of experts (8)"),
    (dict(requested=2, lora=True), "cannot run here (not with LoRA"),
    (dict(requested=2, zero_stage=2), "cannot run here (ZeRO-3 only)"),
])
def test_an_explicit_size_that_cannot_run_is_an_error(kwargs, message):
    with pytest.raises(UserError, match="training.expert_parallel_size") as exc:
        resolve(**kwargs)
    assert message in str(exc.value)


def _shipped():
    return json.loads((ROOT / "ds_config_zero3_optimized.json").read_text())


def test_the_shipped_config_reaches_deepspeed_resolved():
    on, off = _shipped(), _shipped()
    assert "auto" in on["expert_parallel"].values()
    assert ep.fill_auto(on, resolve()) == {"enabled": True, "autoep_size": 2, "preset_model": "qwen3_moe"}
    assert ep.fill_auto(off, resolve(requested=1)) == {"enabled": False, "autoep_size": 1, "preset_model": None}
    for ds in (on, off):
        assert "auto" not in ds["expert_parallel"].values()  # DeepSpeed reads the string "auto" as true
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config

    assert parse_autoep_config(off["expert_parallel"]).enabled is False
    assert parse_autoep_config(on["expert_parallel"]).autoep_size == 2


def test_a_number_in_the_deepspeed_config_wins_and_an_unknown_auto_is_an_error():
    ds = {"expert_parallel": {"enabled": True, "autoep_size": 4, "preset_model": "auto"}}
    assert ep.fill_auto(ds, resolve()) == {"enabled": True, "autoep_size": 4, "preset_model": "qwen3_moe"}
    assert ep.fill_auto({}, resolve()) == {}
    with pytest.raises(UserError, match="expert_parallel.top_k is 'auto'"):
        ep.fill_auto({"expert_parallel": {"enabled": "auto", "top_k": "auto"}}, resolve())


def test_configure_logs_what_runs():
    class HfConfig:
        config = _shipped()

    assert ep.configure(HfConfig, resolve()) == ("expert parallelism: on, size 2 (DeepSpeed AutoEP, preset "
                                                 "qwen3_moe; the GPUs of a node)")
    assert ep.configure(None, resolve(zero_stage=None)) == "expert parallelism: off (ZeRO-3 only)"


def test_bridge_lets_deepspeed_read_the_registry_as_a_dict(tiny_moe):
    from transformers.utils import output_capturing

    registry = output_capturing._CAN_RECORD_REGISTRY
    ep.bridge_output_capture_registry()
    key = str(type(tiny_moe))
    missing = object()
    assert registry.get("no such class", missing) is missing  # DeepSpeed's call: TypeError without the bridge
    assert registry.get(key) == dict.get(registry, key)
    assert registry.get(tiny_moe) == (dict.get(registry, key) or {})  # transformers' own call unchanged
    assert ep.bridge_output_capture_registry() is False  # applied once


@pytest.fixture(scope="module")
def tiny_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                              moe_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                                              num_key_value_heads=1, head_dim=8, num_experts=4,
                                              num_experts_per_tok=2, tie_word_embeddings=True))


def test_autoep_names_map_back_to_a_model_transformers_loads_strictly(tiny_moe, tmp_path):
    """The state AutoEP holds (router under `router.gate` with an alias under `gate`, experts as
    gate w1 / up w3 / down w2), mapped back, loads strictly and saves every expert."""
    state = {k: v.clone() for k, v in tiny_moe.state_dict().items()}
    layers = {f"model.layers.{i}.mlp": None for i in range(2)}
    for prefix in layers:
        gate_up = state.pop(prefix + ".experts.gate_up_proj")
        state[prefix + ".experts.w1"], state[prefix + ".experts.w3"] = gate_up.chunk(2, dim=1)
        state[prefix + ".experts.w2"] = state.pop(prefix + ".experts.down_proj")
        state[prefix + ".router.gate.weight"] = state.pop(prefix + ".gate.weight")
        state[prefix + ".gate.gate.weight"] = state[prefix + ".router.gate.weight"]
    mapped = ep.to_hf_names(state, layers)
    with torch.device("meta"):
        fresh = type(tiny_moe)(tiny_moe.config)
    fresh.load_state_dict(mapped, strict=True, assign=True)
    for name, param in tiny_moe.named_parameters():
        assert torch.equal(fresh.get_parameter(name), param), name
    fresh.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        experts = {k for k in f.keys() if ".experts." in k}
    assert len(experts) == 2 * 4 * 3 and "model.layers.1.mlp.experts.3.up_proj.weight" in experts


def test_the_run_plan_names_the_config_and_the_override(tmp_path):
    from types import SimpleNamespace

    from chameleons.core.config import load_config

    shipped = ROOT / "ds_config_zero3_optimized.json"
    opts = SimpleNamespace(dry_run=True, nproc_per_node=2, deepspeed=str(shipped))
    assert ep.plan_for_run(opts, 3, load_config(ROOT / "config_tiny_cpu.json", []))["size"] == 2
    with pytest.raises(UserError, match=r"config_tiny_cpu.json, --set training.expert_parallel_size=4: "
                                        r"training.expert_parallel_size 4 must divide the world size \(2\)"):
        ep.plan_for_run(opts, 3, load_config(ROOT / "config_tiny_cpu.json", ["training.expert_parallel_size=4"]))
    without = tmp_path / "ds.json"
    without.write_text(json.dumps({k: v for k, v in _shipped().items() if k != "expert_parallel"}))
    plan = ep.plan_for_run(SimpleNamespace(dry_run=True, nproc_per_node=2, deepspeed=str(without)), 3,
                           load_config(ROOT / "config_tiny_cpu.json", []))
    assert not plan["enabled"] and "has no 'expert_parallel' section" in plan["reason"]


def test_a_resume_with_another_expert_parallel_size_is_refused(tmp_path, tiny_moe):
    ep.record(tmp_path, tiny_moe)  # no AutoEP layers: written without expert parallelism
    assert json.loads((tmp_path / ep.RECORD).read_text()) == {"size": 1}
    ep.check_resume(tmp_path, resolve(requested=1))
    with pytest.raises(UserError, match=r"written with expert parallelism size 1, this run would use 2 "
                                        r"\(the GPUs of a node\); resume with --set training.expert_parallel_size=1"):
        ep.check_resume(tmp_path, resolve())
    ep.check_resume(tmp_path / "older", resolve())  # no record: nothing to compare
    ep.check_resume(None, resolve())


@pytest.mark.parametrize("on_gpu, size, triton, expected", [
    (False, 2, False, {"gate_up_impl": "fused", "async_split_plan": False, "combine_impl": "weighted_sum"}),
    (True, 1, True, {"gate_up_impl": "fused", "async_split_plan": False, "combine_impl": "weighted_sum"}),
    (True, 8, False, {"gate_up_impl": "fused", "async_split_plan": True, "combine_impl": "weighted_sum"}),
    (True, 8, True, {"gate_up_impl": "fused", "async_split_plan": True, "combine_impl": "fused_weighted_sum"}),
])
def test_autoep_fast_options_only_where_deepspeed_runs_them(monkeypatch, on_gpu, size, triton, expected):
    """async_split_plan needs GPU tensors and more than one expert-parallel rank; the fused combine
    is a Triton kernel that refuses CPU tensors; the fused gate/up GEMM runs everywhere (the
    2-process CPU runs of tests/test_train_e2e.py train with it and match the run without AutoEP)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "triton" and triton
                        else (None if name == "triton" else real(name, *a)))
    assert ep.autoep_options(on_gpu, size) == expected


def test_the_fast_options_fill_the_section_unless_the_config_sets_them():
    plan = {**resolve(), "options": ep.autoep_options(True, 2)}
    mine = {"expert_parallel": {"enabled": "auto", "autoep_size": "auto", "preset_model": "auto",
                                "gate_up_impl": "separate"}}
    section = ep.fill_auto(mine, plan)
    assert section["gate_up_impl"] == "separate" and section["async_split_plan"] is True  # the user's value wins
    assert "gate_up_impl separate" in ep.describe({**plan, "options": {k: section[k] for k in plan["options"]}})
