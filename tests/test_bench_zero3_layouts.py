"""bench/bench_zero3_layouts.py runs end to end at toy size: 2 processes, ZeRO-3 over gloo, both
layouts, communication counted, the 48-layer projection made (the GPU run uses the same code)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_both_layouts_at_toy_size(tmp_path):
    port = free_port()
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={port}",
                           str(ROOT / "bench" / "bench_zero3_layouts.py"), "--model", "toy", "--warmup", "1",
                           "--steps", "2", "--samples", "48", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    by = {(r["depth"], r["layout"]): r for r in report["results"]}
    assert sorted(by) == [(1, "16x1"), (1, "4x4"), (2, "16x1"), (2, "4x4")]
    for depth in (1, 2):
        seed, new = by[(depth, "4x4")], by[(depth, "16x1")]
        assert seed["micro_batches_per_step"] == 4 and new["micro_batches_per_step"] == 1
        assert len(seed["losses"]) == 2 and all(abs(a - b) < 1e-4 for a, b in zip(seed["losses"], new["losses"]))
        for kind in ("all-gather", "reduce-scatter"):  # ZeRO-3 moves parameters and gradients once per micro-batch
            ratio = new["comm"][kind]["bytes"] / seed["comm"][kind]["bytes"]
            assert 0.2 < ratio < 0.35, (depth, kind, ratio)
        assert new["real_tok_s"] > 0 and seed["real_tok_s"] > 0
    for layout in ("4x4", "16x1"):
        assert report["projection"][layout]["bytes_per_step"] > 0
    assert report["projection"]["4x4"]["bytes_per_step"] > 3 * report["projection"]["16x1"]["bytes_per_step"]
    assert "projected to Qwen3-30B-A3B" in proc.stdout
