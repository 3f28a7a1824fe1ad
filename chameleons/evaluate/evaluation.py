"""Scores for trained models: loss and perplexity on targets, reference metrics on generated
lines, and the ensemble of several models.

Loss is computed exactly as training computes it: the rows come from `encode_samples(...,
with_target=True)` with the training `max_length`, the labels from `build_labels`, and the loss
is the mean negative log-likelihood over every supervised token of the whole set (the target,
its answer tags and the end-of-turn token). The router auxiliary loss of MoE models is not a
likelihood and is left out. A sample whose target cannot fit is dropped, as in training.

An ensemble gives each target token the mean of its members' probabilities,
p_ens(t) = (1/M) * sum_m p_m(t), so its loss is -mean(log p_ens). An ensemble of one is that
member; by Jensen's inequality an ensemble's loss is never above the mean of its members' losses.
"""

import math
from collections import Counter
from dataclasses import dataclass

from ..corpus.data import is_training_sample
from ..text.encoding import IGNORE_INDEX, build_labels, encode_samples


@dataclass(frozen=True)
class ScoredRow:
    """One labelled sample as training encodes it."""
    sample_id: str
    input_ids: list
    labels: list

    @property
    def prompt_len(self) -> int:
        """Where supervision starts; build_labels supervises a suffix, nothing else."""
        for i, label in enumerate(self.labels):
            if label != IGNORE_INDEX:
                if any(x == IGNORE_INDEX for x in self.labels[i:]):
                    raise ValueError(f"{self.sample_id}: supervised tokens are not a suffix")
                return i
        return len(self.labels)


def supervised_rows(samples, builder, tokenizer, fmt, max_length: int):
    """Rows of the samples training would count (labelled, context not ending on the character),
    plus the ids of those dropped (target too long) and the count of unlabelled ones."""
    labelled = [s for s in samples if is_training_sample(s)]
    enc = encode_samples(labelled, builder, tokenizer, fmt, max_length, with_target=True)
    rows, dropped = [], []
    for s, ids, prompt_len in zip(labelled, enc["input_ids"], enc["prompt_len"]):
        if not ids:
            dropped.append(s.sample_id)
            continue
        rows.append(ScoredRow(s.sample_id, list(ids), build_labels(ids, prompt_len)))
    return rows, dropped, sum(1 for s in samples if not s.target)


def token_logprobs(model, sequences, batch_size: int = 8) -> list:
    """log p(token) of every supervised token, per sequence: `sequences` is [(ids, prompt_len)].

    The training loss's own path: labels from `build_labels`, right padding, and logits only at
    the positions whose next token is supervised (`loss.supervised_positions`, a boolean
    `logits_to_keep`). Batches are length-sorted; the result is in input order.
    """
    import torch

    from ..text.loss import supervised_positions

    device = next(model.parameters()).device
    out = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs = [list(sequences[i][0]) for i in chunk]
        width = max(len(ids) for ids in seqs)
        input_ids = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, (ids, i) in enumerate(zip(seqs, chunk)):
            if ids:
                input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                labels[b, :len(ids)] = torch.tensor(build_labels(ids, int(sequences[i][1])), dtype=torch.long)
                mask[b, :len(ids)] = 1
        keep, targets = supervised_positions(labels)
        counts = keep.sum(dim=1).tolist()
        if sum(counts):
            extra = {"output_router_logits": False} if hasattr(model.config, "output_router_logits") else {}
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                               logits_to_keep=keep.to(device), use_cache=False, **extra).logits
            logits = logits.reshape(-1, logits.shape[-1]).float()
            if logits.shape[0] != targets.shape[0]:
                raise RuntimeError(f"{type(model).__name__} does not support a boolean logits_to_keep")
            lp = -torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="none")
            lp = lp.double().cpu().tolist()
        else:
            lp = []
        k = 0
        for b, n in enumerate(counts):
            out[chunk[b]] = lp[k:k + n]
            k += n
    return out


def ensemble_token_logprobs(member_logprobs) -> list:
    """log of the mean of the members' probabilities, token by token, for one sequence."""
    members = [list(m) for m in member_logprobs]
    if len(members) == 1:
        return members[0]
    n = len(members[0])
    if any(len(m) != n for m in members):
        raise ValueError("ensemble members scored different numbers of tokens")
    log_m = math.log(len(members))
    out = []
    for t in range(n):
        values = [m[t] for m in members]
        top = max(values)
        if top == -math.inf:
            out.append(-math.inf)
            continue
        out.append(top + math.log(sum(math.exp(v - top) for v in values)) - log_m)
    return out


def mean_loglik(logprobs) -> float:
    """Per-token mean log-likelihood of one sequence (-inf for an empty one)."""
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


def loss_summary(per_row_logprobs) -> dict:
    """Mean NLL over all supervised tokens of the set, and its perplexity."""
    total = sum(sum(r) for r in per_row_logprobs)
    count = sum(len(r) for r in per_row_logprobs)
    loss = -total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count and loss < 700 else float("inf" if count else "nan"),
            "tokens": count, "samples": len(per_row_logprobs)}


def loss_report(names, member_rows) -> dict:
    """`member_rows[m][row]` is member m's token log-probs of one row; rows line up."""
    members = [{"model": str(name), **loss_summary(rows)} for name, rows in zip(names, member_rows)]
    n_rows = len(member_rows[0]) if member_rows else 0
    ensemble_rows = [ensemble_token_logprobs([m[r] for m in member_rows]) for r in range(n_rows)]
    return {"members": members, "ensemble": {"model": f"ensemble of {len(members)}", **loss_summary(ensemble_rows)}}


# ---------------------------------------------------------------- reference metrics

def _words(text: str) -> list:
    return text.lower().split()


def distinct_n(lines, n: int) -> float:
    """Unique n-grams over all n-grams of all lines (0 when there are none)."""
    grams = Counter()
    for line in lines:
        w = _words(line)
        grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def reference_metrics(hypotheses, references) -> dict:
    """BLEU (sacrebleu, corpus level), ROUGE-L F1 (rouge-score, mean over lines, x100),
    distinct-1/2 of the hypotheses, and length ratio (hypothesis words / reference words)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps, refs = [h or "" for h in hypotheses], [r or "" for r in references]
    if not refs:
        return {"items": 0, "bleu": None, "rouge_l": None, "distinct_1": None, "distinct_2": None, "length_ratio": None}
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(refs) * 100
    ref_words = sum(len(_words(r)) for r in refs)
    return {
        "items": len(refs),
        "bleu": round(bleu, 4),
        "rouge_l": round(rouge, 4),
        "distinct_1": round(distinct_n(hyps, 1), 4),
        "distinct_2": round(distinct_n(hyps, 2), 4),
        "length_ratio": round(sum(len(_words(h)) for h in hyps) / ref_words, 4) if ref_words else None,
    }


def format_report(report: dict) -> str:
    """A short table: loss and perplexity per member and for the ensemble, then the metrics of
    the generated lines."""
    scores = report["scores"]
    rows = scores["members"] + ([scores["ensemble"]] if len(scores["members"]) > 1 else [])
    width = max([len("model")] + [len(r["model"]) for r in rows])
    lines = [f"{'model':<{width}}  {'loss':>8}  {'ppl':>10}  {'tokens':>9}"]
    for r in rows:
        lines.append(f"{r['model']:<{width}}  {r['loss']:>8.4f}  {r['perplexity']:>10.3f}  {r['tokens']:>9,}")
    g = report.get("generation")
    if g and g.get("items"):
        lines.append(f"generated (first continuation, {g['items']} items): BLEU {g['bleu']:.2f}  ROUGE-L {g['rouge_l']:.2f}  "
                     f"distinct-1 {g['distinct_1']:.3f}  distinct-2 {g['distinct_2']:.3f}  "
                     f"length ratio {g['length_ratio'] if g['length_ratio'] is not None else 'n/a'}")
    return "\n".join(lines)
