"""The best model back from a ZeRO-3 checkpoint's own partitions (saves.load_partitions), in one
process under DeepSpeed: a run whose last evaluation is its best keeps its weights as they are, so
the suite's 2-process runs (whose losses fall to the end) no longer read a checkpoint back; this
is the restore they would do when an earlier evaluation was the best."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import deepspeed
    from deepspeed.runtime.zero import GatheredParameters
    from transformers import Qwen3MoeConfig
    sys.path[:0] = [{root!r}, {bench!r}]
    from bench_zero3_layouts import build_engine, ds_config
    from chameleons.train import saves

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = Qwen3MoeConfig(vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         num_experts=4, num_experts_per_tok=2)
    engine, _ = build_engine(cfg, ds_config(micro=2, accum=1, world=1, bf16=False), "sdpa", "cpu", torch.float32)
    model = engine.module

    def whole():
        params = dict(model.named_parameters())
        with GatheredParameters(list(params.values())):
            return {{n: p.detach().clone() for n, p in params.items()}}

    def step():
        ids = torch.randint(3, 256, (2, 12))
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()

    step()
    saves.save_partitions(model, {folder!r}, 0, 1)
    best = whole()
    step()
    step()
    moved = whole()
    assert any(not torch.equal(best[n], moved[n]) for n in best), "training did not change the weights"
    saves.load_partitions(engine, model, {folder!r}, 0, 1)
    back = whole()
    for n in best:
        assert torch.equal(back[n], best[n]), n
    optimizer = engine.optimizer
    for low, master in zip(optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat):
        assert torch.equal(master, low.float()), "the fp32 master copy did not follow the weights"
    print("restored", len(best))
""")


def test_zero3_best_model_restore_brings_back_every_partition_and_the_master_copy(tmp_path):
    script = SCRIPT.format(root=str(ROOT), bench=str(ROOT / "bench"), folder=str(tmp_path / "checkpoint-1"))
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored" in proc.stdout
