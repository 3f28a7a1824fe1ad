"""bench/bench_expert_parallel.py runs end to end at toy size: 2 processes, ZeRO-3 over gloo, plain
and expert-parallel, collectives counted, the 48-layer projection made (the 30B-width run uses
the same code)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_bench_counts_both_designs_at_toy_size(tmp_path):
    port = free_port()
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={port}",
                           str(ROOT / "bench" / "bench_expert_parallel.py"), "--model", "toy", "--samples", "16",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    by = {(r["depth"], r["ep"]): r for r in report["results"]}
    assert sorted(by) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for depth in (1, 2):
        plain, ep = by[(depth, 1)], by[(depth, 2)]
        assert ep["expert_parallel_ran"] and not plain["expert_parallel_ran"]
        assert plain["comm"]["all-to-all"]["calls"] == 0 < ep["comm"]["all-to-all"]["calls"]
        assert ep["comm"]["all-gather"]["bytes"] < plain["comm"]["all-gather"]["bytes"]
    assert report["max_relative_loss_difference"] < 1e-5  # the same steps either way
    layer = report["per_layer_bytes"]
    assert layer["expert_parallel"]["all-gather"] < layer["plain"]["all-gather"]
    assert report["gathered_ratio_projected"] > report["gathered_ratio_measured"] > 1  # 128 experts gather more
    assert "projected to Qwen3-30B-A3B" in proc.stdout
