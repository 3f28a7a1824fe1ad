#!/usr/bin/env python
"""One-GPU benchmark: a depth-reduced Qwen3-30B-A3B, "today" against "ours", and a projection.

The model has Qwen3-30B-A3B's layer shape (hidden 2048, 32 query / 4 KV heads of dim 128, 128
experts, top-8, moe_intermediate_size 768, vocabulary 151,936) with random bf16 weights and
`--layers` layers instead of 48. Two set-ups train (forward + backward, gradient checkpointing
as in config_Chameleons_30B.json) on the same micro-batches of realistic rows (the synthetic
corpus through the real prompt builder, tokenizer and chat template):

  today  padded rows (random order), experts_implementation="eager", attn "eager", full-vocabulary
         logits and HF's loss (`model(**batch, labels=...)`)
  ours   the same rows packed into one row, the fastest experts implementation available
         ("grouped_mm"), flash_attention_2 when importable (else sdpa), supervised-only logits
         (chameleons.text.loss.causal_lm_loss)

It reports real (non-padding) tokens/s per GPU, the MoE-aware MFU (`chameleons.train.flops.train_flops`), and, from
step times at two depths (t(L) = fixed + L * per_layer), the full 48-layer figures and the epoch
time of the full corpus on 8 GPUs. The projection leaves out what one GPU cannot show: ZeRO-3's
parameter all-gathers and gradient reduce-scatters, and the optimizer step.

    python bench/bench_gpu.py                  # GPU, bf16, 4 layers (and 2 for the per-layer fit)
    python bench/bench_gpu.py --layers 8
    python bench/bench_gpu.py --toy            # tiny dims, fp32, CPU: checks the script end to end
"""

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from chameleons.train import attention
from chameleons.train.flops import peak_flops
from chameleons.train.flops import train_flops as moe_train_flops

from chameleons.text.batching import make_collator
from chameleons.text.loss import causal_lm_loss

FULL_LAYERS = 48


def model_config(layers: int, toy: bool):
    from transformers import Qwen3MoeConfig

    if toy:
        dims = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                    num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=128, vocab_size=4096)
    else:
        dims = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                    num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144, vocab_size=151936)
    return Qwen3MoeConfig(num_hidden_layers=layers, norm_topk_prob=True, rms_norm_eps=1e-6,
                          max_position_embeddings=40960, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                          tie_word_embeddings=False, use_cache=False, output_router_logits=False,
                          decoder_sparse_step=1, mlp_only_layers=[], **dims)


def ours_attention(device):
    if device.type == "cuda":
        try:
            from transformers.utils import is_flash_attn_2_available

            if is_flash_attn_2_available():
                return "flash_attention_2"
        except ImportError:
            pass
        return attention.NAME  # what training runs on a GPU without flash-attn
    return attention.NAME


def grouped_mm_native(device) -> bool:
    native = hasattr(torch.nn.functional, "grouped_mm") or hasattr(torch, "_grouped_mm")
    if device.type == "cuda":
        return native and torch.cuda.get_device_capability(device) >= (8, 0)
    return native


def build_model(cfg, attn, experts, dtype, device, checkpointing):
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3MoeForCausalLM._from_config(cfg, dtype=dtype, attn_implementation=attn,
                                                 experts_implementation=experts)
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, batches, step_fn, warmup, steps, device):
    """Mean seconds per micro-batch (forward + backward) over `steps` batches after `warmup`."""
    for i in range(warmup):
        step_fn(model, batches[i % len(batches)])
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step_fn(model, batches[(warmup + i) % len(batches)])
    sync(device)
    return (time.perf_counter() - t) / steps


def today_step(model, batch):
    model(**batch, use_cache=False).loss.backward()  # full [batch, seq, vocab] logits
    model.zero_grad(set_to_none=True)


def ours_step(model, batch):
    causal_lm_loss(model, batch)[0].backward()
    model.zero_grad(set_to_none=True)


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="bench depth (default 4; --toy: 2)")
    p.add_argument("--toy", action="store_true", help="tiny dims, fp32, runs on CPU in well under a minute")
    p.add_argument("--batch_size", type=int, default=4, help="rows per micro-batch (config_Chameleons_30B.json: 4)")
    p.add_argument("--samples", type=int, default=None, help="encoded rows to draw batches from (default 128; toy 24)")
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--max_context_turns", type=int, default=15)
    p.add_argument("--ablation", default="context_only",
                   choices=["context_only", "profile_and_context", "profile_and_history_and_context"])
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; toy 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10; toy 2)")
    p.add_argument("--no_gradient_checkpointing", action="store_true")
    p.add_argument("--today_attn", default="eager")
    p.add_argument("--ours_attn", default=None,
                   help="default: flash_attention_2 if importable, else flex_attention on a GPU and sdpa_varlen "
                        "(per-sample sdpa on packed rows, chameleons/train/attention.py) on CPU, as training picks")
    p.add_argument("--ours_experts", default="grouped_mm")
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the projected run")
    p.add_argument("--epoch_samples", type=int, default=72000, help="samples per epoch of the projected run")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    toy = args.toy
    layers = args.layers or (2 if toy else 4)
    samples = args.samples or (24 if toy else 128)
    warmup = args.warmup if args.warmup is not None else (1 if toy else 3)
    steps = args.steps or (2 if toy else 10)
    device = torch.device("cuda" if torch.cuda.is_available() and not toy else "cpu")
    dtype = torch.float32 if toy else torch.bfloat16
    if device.type == "cpu" and not toy:
        print("no GPU: run with --toy for the CPU check", file=sys.stderr)
        return 2
    t_start = time.perf_counter()

    from bench_batching_cpu import realistic_rows

    rows, pad_id = realistic_rows(samples, args.max_length, args.ablation, args.max_context_turns)
    vocab = model_config(1, toy).vocab_size
    if vocab < 151936:  # toy: fold the real ids into the toy vocabulary
        rows = [dict(r, input_ids=[i % vocab for i in r["input_ids"]]) for r in rows]
        pad_id %= vocab
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    groups = [[rows[i] for i in order[k:k + args.batch_size]] for k in range(0, len(order), args.batch_size)]
    groups = [g for g in groups if len(g) == args.batch_size]
    lengths = [len(r["input_ids"]) for r in rows]
    mean_len = sum(lengths) / len(lengths)
    sup_share = sum(len(r["input_ids"]) - max(r["prompt_len"], 1) for r in rows) / sum(lengths)
    timed = [groups[(warmup + i) % len(groups)] for i in range(steps)]
    real_tokens = sum(len(r["input_ids"]) for g in timed for r in g)
    padded_tokens = sum(len(g) * max(len(r["input_ids"]) for r in g) for g in timed)

    ours_attn = args.ours_attn or ours_attention(device)
    if attention.NAME in (ours_attn, args.today_attn):
        attention.register()  # per-sample sdpa for packed rows, when flash-attention is not installed
    setups = {
        "today": dict(attn=args.today_attn, experts="eager", kind="padded", step=today_step),
        "ours": dict(attn=ours_attn, experts=args.ours_experts, kind="packed", step=ours_step),
    }
    depths = sorted({max(1, layers // 2), layers})
    peak, peak_note = peak_flops(device, args.peak_tflops)
    checkpointing = not args.no_gradient_checkpointing
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} | dtype {dtype} | "
          f"{'toy dims' if toy else 'Qwen3-30B-A3B layer dims'} | depths {depths} | batch {args.batch_size} | "
          f"gradient checkpointing {checkpointing} | grouped_mm native kernel {grouped_mm_native(device)}")
    print(f"rows: {len(rows)} ({args.ablation}, max_length {args.max_length}), mean length {mean_len:.1f}, "
          f"supervised share {sup_share:.1%}; timed: {steps} steps, {real_tokens} real tokens, "
          f"padding share when padded {1 - real_tokens / padded_tokens:.1%}")

    results = {name: {"attn": s["attn"], "experts": s["experts"], "batching": s["kind"], "by_depth": {}}
               for name, s in setups.items()}
    for depth in depths:
        cfg = model_config(depth, toy)
        for name, s in setups.items():
            collate = make_collator(s["kind"], pad_id)
            batches = [to_device(collate(g), device) for g in groups]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            model = build_model(cfg, s["attn"], s["experts"], dtype, device, checkpointing)
            sec = time_steps(model, batches, s["step"], warmup, steps, device)
            flops = moe_train_flops(cfg, [len(r["input_ids"]) for g in timed for r in g],
                                    [len(r["input_ids"]) - max(r["prompt_len"], 1) for g in timed for r in g])
            entry = {"sec_per_step": sec, "real_tok_s": real_tokens / (sec * steps),
                     "tflops_s": flops / (sec * steps) / 1e12,
                     "mfu": flops / (sec * steps) / peak if peak else None,
                     "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
            results[name]["by_depth"][depth] = entry
            mfu = f"{entry['mfu']:.1%}" if entry["mfu"] is not None else "n/a"
            mem = f", peak {entry['peak_mem_gb']:.1f} GiB" if entry["peak_mem_gb"] is not None else ""
            print(f"  {name:<6} {depth:>2} layers: {sec * 1000:8.1f} ms/step  {entry['real_tok_s']:9.0f} real tok/s  "
                  f"{entry['tflops_s']:8.3g} TFLOP/s  MFU {mfu}{mem}  [{s['kind']}, attn {s['attn']}, "
                  f"experts {s['experts']}]")
            del model, batches
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # Projection to the full depth from t(L) = fixed + L * per_layer.
    full = model_config(FULL_LAYERS, toy)
    full_flops_per_step = moe_train_flops(full, [len(r["input_ids"]) for g in timed for r in g],
                                          [len(r["input_ids"]) - max(r["prompt_len"], 1) for g in timed for r in g]) / steps
    rows_per_step = args.batch_size
    if toy:
        print("\n(--toy: tiny dims on CPU; the figures below only show that the script runs end to end)")
    print(f"\nprojected to {FULL_LAYERS} layers (per GPU; no ZeRO-3 communication, no optimizer step); "
          f"peak {peak_note}")
    for name, r in results.items():
        t = {d: r["by_depth"][d]["sec_per_step"] for d in depths}
        if len(depths) == 2:
            lo, hi = depths
            per_layer = (t[hi] - t[lo]) / (hi - lo)
            fixed = max(0.0, t[hi] - hi * per_layer)
        else:
            per_layer, fixed = t[depths[0]] / depths[0], 0.0
        sec48 = fixed + FULL_LAYERS * per_layer
        tok_s = real_tokens / steps / sec48
        epoch_h = args.epoch_samples / (rows_per_step * args.gpus) * sec48 / 3600
        r["projection"] = {"fixed_s": fixed, "per_layer_s": per_layer, "sec_per_step": sec48, "real_tok_s": tok_s,
                           "mfu": full_flops_per_step / sec48 / peak if peak else None,
                           "epoch_hours": epoch_h, "gpus": args.gpus, "epoch_samples": args.epoch_samples,
                           "mean_length": mean_len}
        mfu = f"{r['projection']['mfu']:.1%}" if peak else "n/a"
        print(f"  {name:<6} fixed {fixed * 1000:7.1f} ms + {per_layer * 1000:6.1f} ms/layer -> {sec48:7.3f} s/step, "
              f"{tok_s:8.0f} real tok/s/GPU, MFU {mfu}; epoch of {args.epoch_samples:,} samples "
              f"(mean {mean_len:.0f} tokens) on {args.gpus} GPUs: {epoch_h:.2f} h")
    a, b = results["today"]["projection"], results["ours"]["projection"]
    print(f"  ours / today: {b['real_tok_s'] / a['real_tok_s']:.2f}x real tokens/s at {FULL_LAYERS} layers; at "
          f"{depths[-1]} layers measured: "
          f"{results['ours']['by_depth'][depths[-1]]['real_tok_s'] / results['today']['by_depth'][depths[-1]]['real_tok_s']:.2f}x")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": str(device), "results": results},
                                              indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
