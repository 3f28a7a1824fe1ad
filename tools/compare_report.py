"""The report half of tools/compare_runs.py: the runs.md tables and the plots, kept apart so the
reading and aggregating of run folders stays short enough to review on its own (compare_runs.py
imports it after putting the repository root on sys.path)."""

from __future__ import annotations

from pathlib import Path

from chameleons.evaluate.fidelity_compare import compare_settings


def _fmt(value, digits=4):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(runs_rows: list, settings: list, sets: dict) -> str:
    lines = ["# Run comparison", ""]
    labels = sorted({r["val_set"] for r in runs_rows})
    if len(labels) > 1:
        unknown = " ('?': unknown, no split_manifest.json, not plotted)" if "?" in labels else ""
        lines += [f"> **Not comparable across validation sets.** These runs were evaluated on {len(labels)} different "
                  f"validation sets ({', '.join(labels)}){unknown}: an eval loss compares only with losses of the "
                  f"same set. Settings are aggregated per set and each set is plotted in its own panel.", ""]
    lines += ["## Runs", "",
              "| run | setting | val set | seed | val seed | status | steps | epochs | early stop | best eval loss | "
              "ppl | train tokens | wall s | tokens/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs_rows:
        lines.append(f"| {r['run']} | {r['setting']} | {r['val_set']} | {r['sample_seed']} | {r['val_seed']} | "
                     f"{r['status']} | {r['steps']} | {_fmt(r['epochs'], 2)} | {_fmt(r['stopped_early'])} | "
                     f"{_fmt(r['best_eval_loss'])} | {_fmt(r['best_perplexity'], 2)} | {_fmt(r['train_tokens'])} | "
                     f"{_fmt(r['wall_s'], 1)} | {_fmt(r['tokens_per_s'], 0)} |")
    if any(r["pred_loss"] is not None for r in runs_rows):
        lines += ["", "| run | prediction loss | BLEU | ROUGE-L |", "|---|---|---|---|"]
        lines += [f"| {r['run']} | {_fmt(r['pred_loss'])} | {_fmt(r['pred_bleu'], 2)} | {_fmt(r['pred_rouge_l'], 2)} |"
                  for r in runs_rows if r["pred_loss"] is not None]
    lines += ["", "## Settings (mean ± sample std over seeds)", "",
              "| setting | val set | runs | seeds | best eval loss | perplexity | steps | epochs | early stops |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        loss = _fmt(s["best_eval_loss"]) + (f" ± {_fmt(s['best_eval_loss_std'])}"
                                            if s["best_eval_loss_std"] is not None else "")
        ppl = _fmt(s["best_perplexity"], 2) + (f" ± {_fmt(s['best_perplexity_std'], 2)}"
                                                if s["best_perplexity_std"] is not None else "")
        lines.append(f"| {s['setting']} | {s['val_set']} | {s['runs']} | {s['sample_seed']} | {loss} | {ppl} | "
                     f"{_fmt(s['steps'], 1)} | {_fmt(s['epochs'], 2)} | {s['stopped_early']}/{s['runs']} |")
    lines += _fidelity_markdown(runs_rows, settings) + _pairs_markdown(fidelity_pairs(runs_rows))
    lines += ["", "## Validation sets", "", "| set | data | N | val seed | validation samples |",
              "|---|---|---|---|---|"]
    lines += [f"| {label} | {d['data']} | {d['N']} | {d['val_seed']} | {d['validation_samples']} |"
              for label, d in sets.items()]
    return "\n".join(lines) + "\n"


def _fidelity_markdown(runs_rows: list, settings: list) -> list:
    if not any(r["fid_score"] is not None for r in runs_rows):
        return []
    head = ("| {} | predicted file | fidelity score | top-1 | ceiling (reference) | baseline (other character) | "
            "copy rate | repeats a training line | length ratio |")
    lines = ["", "## Character fidelity (rank score of the intended character among all: 1 = first, 0.5 = chance)",
             "", head.format("run"), "|---|---|---|---|---|---|---|---|---|"]
    for r in runs_rows:
        if r["fid_score"] is not None:
            lines.append(f"| {r['run']} | {r['fid_input']} | {_fmt(r['fid_score'], 3)} | {_fmt(r['fid_top1'], 3)} | "
                         f"{_fmt(r['fid_ceiling'], 3)} | {_fmt(r['fid_baseline'], 3)} | "
                         f"{_fmt(r['fid_copy_rate'], 3)} | "
                         f"{_fmt(r['fid_repeats_training'], 3)} | {_fmt(r['fid_length_ratio'], 2)} |")
    lines += ["", head.format("setting (mean ± std over seeds)"), "|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        if s["fid_score"] is not None:
            std = f" ± {_fmt(s['fid_score_std'], 3)}" if s["fid_score_std"] is not None else ""
            lines.append(f"| {s['setting']} | {s['fid_input']} | {_fmt(s['fid_score'], 3)}{std} | "
                         f"{_fmt(s['fid_top1'], 3)} | {_fmt(s['fid_ceiling'], 3)} | {_fmt(s['fid_baseline'], 3)} | "
                         f"{_fmt(s['fid_copy_rate'], 3)} | "
                         f"{_fmt(s['fid_repeats_training'], 3)} | {_fmt(s['fid_length_ratio'], 2)} |")
    return lines


def fidelity_pairs(runs_rows: list) -> list:
    """Paired fidelity differences between settings scored on the same file
    (chameleons/evaluate/fidelity_compare.py)."""
    by_file = {}
    for r in runs_rows:
        if r.get("fid_items"):
            by_file.setdefault(r["fid_input"], {}).setdefault(r["setting"], []).append(r["fid_items"])
    return [{"file": file, **pair} for file, settings in sorted(by_file.items()) for pair in compare_settings(settings)]


def _pairs_markdown(pairs: list) -> list:
    if not pairs:
        return []
    lines = ["", "## Which fidelity differences are real (paired over items and seeds, Holm-corrected)", "",
             "| file | setting a | setting b | items | seeds a / b | a - b (rank score) | 95% interval | p | "
             "p (Holm) | real |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['file']} | {p['a']} | {p['b']} | {p['items']} | {p['seeds_a']} / {p['seeds_b']} | "
                     f"{p['difference']:+.3f} | [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {p['p']:.4f} | "
                     f"{p['p_holm']:.4f} | {'yes' if p['real'] else 'no'} |")
    return lines


def panels(runs: list) -> dict:
    """{validation set: runs} for the plots; runs of an unknown set are left out."""
    out = {}
    for run in runs:
        if run.val_set != "?":
            out.setdefault(run.val_set, []).append(run)
    return out


def _plot(path: Path, groups: dict, draw, ylabel: str, xlabel: str, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.5), squeeze=False)
    for ax, (label, members) in zip(axes[0], groups.items()):
        draw(ax, members)
        ax.set_title((title or "validation set {}").format(label)
                     + (" (not comparable with the other panels)" if n > 1 else ""), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if not groups:
        axes[0][0].text(0.5, 0.5, "no run with a known validation set", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_eval_loss(path: Path, groups: dict, colours: dict):
    styles = ["-", "--", ":", "-."]

    def draw(ax, members):
        seen = {}
        for run in members:
            evals = run.evals()
            if not evals:
                continue
            k = seen[run.setting] = seen.get(run.setting, -1) + 1
            ax.plot(*zip(*evals), styles[k % len(styles)], marker="o", markersize=3, color=colours[run.setting],
                    label=f"{run.setting} (seed {run.args.get('sample_seed')})")
        if seen:
            ax.legend(fontsize=7)

    _plot(path, groups, draw, "eval loss (mean token loss)", "optimizer step")


def plot_best(path: Path, groups: dict, settings: list, rows: list, colours: dict):
    def draw(ax, members):
        label = members[0].val_set
        mine = [s for s in settings if s["val_set"] == label and s["best_eval_loss"] is not None]
        for x, s in enumerate(mine):
            seeds = [r["best_eval_loss"] for r in rows
                     if r["setting"] == s["setting"] and r["val_set"] == label and r["best_eval_loss"] is not None]
            ax.scatter([x] * len(seeds), seeds, color=colours[s["setting"]], alpha=0.5, s=15)
            ax.errorbar([x], [s["best_eval_loss"]], yerr=[s["best_eval_loss_std"] or 0], fmt="D",
                        color=colours[s["setting"]], capsize=5)
        ax.set_xticks(range(len(mine)), [s["setting"] for s in mine], rotation=20, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(mine) - 0.5)

    _plot(path, groups, draw, "best eval loss (mean ± std over seeds)", "setting")


def plot_fidelity(path: Path, settings: list, rows: list, colours: dict):
    """Fidelity per setting (seeds as dots, mean ± std), with the reference ceiling and the
    other-character baseline as lines; one panel per predicted file."""
    groups = {}
    for s in settings:
        if s["fid_score"] is not None:
            groups.setdefault(s["fid_input"], []).append(s)

    def draw(ax, mine):
        for x, s in enumerate(mine):
            seeds = [r["fid_score"] for r in rows if r["setting"] == s["setting"] and r["val_set"] == s["val_set"]
                     and r["fid_score"] is not None]
            ax.scatter([x] * len(seeds), seeds, color=colours[s["setting"]], alpha=0.5, s=15)
            ax.errorbar([x], [s["fid_score"]], yerr=[s["fid_score_std"] or 0], fmt="D", color=colours[s["setting"]],
                        capsize=5)
        xs = range(len(mine))
        ax.plot(xs, [s["fid_ceiling"] for s in mine], "k--", marker="_", label="reference lines (ceiling)")
        ax.plot(xs, [s["fid_baseline"] for s in mine], "k:", marker="_", label="another character's lines (baseline)")
        ax.axhline(0.5, color="grey", lw=0.8, label="chance")
        ax.set_xticks(list(xs), [f"{s['setting']} [{s['val_set']}]" for s in mine], rotation=20, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(mine) - 0.5)
        ax.legend(fontsize=7)

    _plot(path, groups, draw, "fidelity rank score (mean ± std over seeds)", "setting",
          title="predicted file {}")
