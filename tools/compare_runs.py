#!/usr/bin/env python3
"""Compare training runs: one table row per run, mean and spread per setting over seeds, plots.

    python tools/compare_runs.py outputs/ctx_seed_* outputs/prof_seed_* --output outputs/compare

Reads each run folder as training leaves it, finished or not: `training_config.json` (settings,
plan and summary of a finished run), else the command line and plan at the top of
`training_logs/detailed_training_log.txt`; `training_logs/metrics.jsonl` (losses, tokens, times);
`split_manifest.json` (the validation sample ids); and prediction `*.eval.json` and
`*.summary.json` files and the run's `final_fidelity.json` (character fidelity,
chameleons/evaluate/fidelity.py) when present: the newest. Writes
`runs.csv`, `runs.md`, `eval_loss.png` and `best_eval_loss.png` into --output, and
`fidelity.png` when some run has fidelity figures.

A setting is ablation, prompt style, N, resampling and the `--set` overrides; its runs differ by
seed. Eval losses compare only on one validation set (same data, N, val_seed and so the same
validation ids): every run gets a validation-set label, settings are aggregated per set, and each
set is plotted in its own panel, so losses on different sets are never drawn as comparable.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.run import cli
from chameleons.evaluate.fidelity_compare import item_scores
from compare_report import markdown, panels, plot_best, plot_eval_loss, plot_fidelity

RUN_COLUMNS = ["kind", "run", "setting", "val_set", "ablation", "prompt_style", "N", "sample_seed", "val_seed",
               "overrides", "status", "steps", "epochs", "stopped_early", "best_eval_loss", "best_eval_loss_std",
               "best_perplexity", "best_perplexity_std", "train_tokens", "wall_s", "tokens_per_s", "runs",
               "pred_loss", "pred_bleu", "pred_rouge_l", "fid_input", "fid_score", "fid_score_std", "fid_top1",
               "fid_ceiling", "fid_baseline", "fid_copy_rate", "fid_repeats_training", "fid_length_ratio", "path"]
FIDELITY_KEYS = ["fid_score", "fid_top1", "fid_ceiling", "fid_baseline", "fid_copy_rate", "fid_repeats_training",
                 "fid_length_ratio"]
_DATA_LINE = re.compile(r"\] data\s+(?P<file>.+?): (?P<records>[\d,]+) records, [\d,]+ data items, "
                        r"(?P<samples>[\d,]+) samples")


@dataclass
class Run:
    path: Path
    args: dict
    status: str
    events: list
    validation: list | None
    data: dict | None
    summary: dict | None
    prediction: dict | None
    fidelity: dict | None = None
    val_set: str = "?"
    setting: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_label(self) -> str:
        n = self.args.get("max_samples_per_user")
        return "all" if n is None else str(n)

    @property
    def val_seed(self):
        v = self.args.get("val_seed")
        return self.args.get("sample_seed") if v is None else v

    def last(self, event: str) -> dict:
        """Per step, the last record of this event (a resumed run logs the steps after its
        checkpoint again)."""
        by_step = {e["step"]: e for e in self.events if e.get("event") == event and isinstance(e.get("step"), int)}
        return dict(sorted(by_step.items()))

    def evals(self) -> list:
        return [(step, e["eval_loss"]) for step, e in self.last("eval").items()
                if isinstance(e.get("eval_loss"), (int, float)) and math.isfinite(e["eval_loss"])]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None


def _read_events(path: Path) -> list:
    """metrics.jsonl; a last line cut short by a kill is ignored."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    events = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):
                raise UserError(f"{path}: line {i} is not JSON") from None
    return events


def _args_from_log(log: Path) -> dict:
    """The flags of an unfinished run, from the command line its log starts with."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    match = re.search(r"\] command: (.*)", text)
    if not match:
        raise UserError(f"{log.parent.parent}: no training_config.json and no command line in {log}: not a run folder")
    argv = shlex.split(match.group(1))
    parser = cli.train_parser()

    def error(message):
        raise UserError(f"{log}: command line not understood ({message})")

    parser.error = error
    args, _ = parser.parse_known_args(argv[2:])  # after the interpreter and the script
    return vars(args)


def _data_from_log(log: Path):
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    match = _DATA_LINE.search(text)
    if not match:
        return None
    return {"file": match["file"], "records": int(match["records"].replace(",", "")),
            "samples": int(match["samples"].replace(",", ""))}


def _prediction(folder: Path):
    """The newest prediction evaluation inside the run folder: its own loss and generation scores."""
    files = sorted((p for p in folder.rglob("*.eval.json") if not any(x.startswith("checkpoint-") for x in p.parts)),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    report = _read_json(files[-1])
    members = (report.get("scores") or {}).get("members") or [{}]
    generation = report.get("generation") or {}
    return {"file": str(files[-1]), "loss": members[0].get("loss"), "bleu": generation.get("bleu"),
            "rouge_l": generation.get("rouge_l")}


def _dig(value, *keys):
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _fidelity(folder: Path):
    """The newest prediction summary inside the run folder that has fidelity figures: the first
    continuations' rank score (0.5 = chance) and top-1 among all characters, the reference
    lines' score (ceiling), another character's lines' score (baseline), copy rate, length ratio."""
    files = sorted((p for p in [*folder.rglob("*.summary.json"), folder / "final_fidelity.json"]
                    if p.is_file() and not any(x.startswith("checkpoint-") for x in p.parts)),
                   key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        report = _read_json(path)
        items_path = path.with_name(path.name[:-len(".summary.json")] + ".fidelity.json") \
            if path.name.endswith(".summary.json") else path
        if path.name == "final_fidelity.json":  # the run's own --final_fidelity_items evaluation
            report = {"input_file": f"final_fidelity ({_dig(report, 'items_requested')} items)",
                      "fidelity": _dig(report, "summary")}
        fid = _dig(report, "fidelity")
        if fid and not report.get("untrained"):  # an --untrained output is the baseline (tools/fidelity_versus.py)
            per_item = _read_json(items_path) if items_path.is_file() else {}
            return {"fid_input": Path(str(report.get("input_file"))).name, "fid_items": item_scores(per_item),
                    "fid_score": _dig(fid, "generated", "all", "score", "mean"),
                    "fid_top1": _dig(fid, "generated", "all", "top1", "mean"),
                    "fid_ceiling": _dig(fid, "reference", "all", "score", "mean"),
                    "fid_baseline": _dig(fid, "baseline", "all", "score", "mean"),
                    "fid_copy_rate": _dig(fid, "generated", "style", "copy_rate", "mean"),
                    "fid_repeats_training": _dig(fid, "generated", "style", "repeats_training_line", "mean"),
                    "fid_length_ratio": _dig(fid, "generated", "style", "length_ratio", "mean")}
    return None


def read_run(folder) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    finished = folder / "training_config.json"
    log = folder / "training_logs" / "detailed_training_log.txt"
    events = _read_events(folder / "training_logs" / "metrics.jsonl")
    if finished.is_file():
        info = _read_json(finished)
        args, summary = info.get("args") or {}, info.get("summary")
        data = (info.get("plan") or {}).get("data")
        status = "finished"
    else:
        args, summary, data = _args_from_log(log), None, _data_from_log(log)
        status = "stopped" if events and events[-1].get("event") == "stopped" else "unfinished"
    manifest_path = folder / "split_manifest.json"
    validation = _read_json(manifest_path).get("validation") if manifest_path.is_file() else None
    return Run(path=folder, args=args, status=status, events=events, validation=validation, data=data,
               summary=summary, prediction=_prediction(folder), fidelity=_fidelity(folder))


def validation_key(run: Run):
    """Same key = same validation samples: the data file (name and size) and the validation ids."""
    if run.validation is None or run.data is None:
        return None
    identity = [Path(str(run.data.get("file"))).name, run.data.get("records"), run.data.get("samples"),
                sorted(run.validation)]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()


def label_runs(runs: list) -> dict:
    """Validation-set labels A, B, ... in order of appearance ('?' when unknown) and settings.
    Returns {label: description} of the sets."""
    keys, sets = {}, {}
    configs = {Path(str(r.args.get("config"))).name for r in runs}
    for run in runs:
        key = validation_key(run)
        if key is None:
            run.val_set = "?"
        else:
            if key not in keys:
                keys[key] = chr(ord("A") + len(keys)) if len(keys) < 26 else f"S{len(keys) + 1}"
                sets[keys[key]] = {"data": run.data.get("file"), "val_seed": run.val_seed, "N": run.n_label,
                                   "validation_samples": len(run.validation)}
            run.val_set = keys[key]
        parts = [run.args.get("ablation_config"), run.args.get("prompt_style"), f"N{run.n_label}"]
        if run.args.get("resample_each_epoch"):
            parts.append("resample")
        if len(configs) > 1:
            parts.append(Path(str(run.args.get("config"))).name)
        parts += run.args.get("overrides") or []
        run.setting = " ".join(str(p) for p in parts)
    return sets


def run_row(run: Run) -> dict:
    evals = run.evals()
    best = min((loss for _, loss in evals), default=None)
    trains = run.last("train")
    steps = list(trains) + [s for s, _ in evals]
    epochs = [e.get("epoch") for e in run.events if isinstance(e.get("epoch"), (int, float))]
    tokens = [e.get("tokens") for e in trains.values()]
    rates = [e["tokens_per_s"] for e in trains.values() if isinstance(e.get("tokens_per_s"), (int, float))]
    summary = run.summary or {}
    pred = run.prediction or {}
    return {
        "kind": "run", "run": run.name, "setting": run.setting, "val_set": run.val_set,
        "ablation": run.args.get("ablation_config"), "prompt_style": run.args.get("prompt_style"), "N": run.n_label,
        "sample_seed": run.args.get("sample_seed"), "val_seed": run.val_seed,
        "overrides": " ".join(run.args.get("overrides") or []), "status": run.status,
        "steps": summary.get("global_step", max(steps, default=0)),
        "epochs": summary.get("epochs", max(epochs, default=0)),
        "stopped_early": any(e.get("event") == "early_stop" for e in run.events),
        "best_eval_loss": best, "best_perplexity": _perplexity(best),
        "train_tokens": sum(tokens) if tokens and all(isinstance(t, int) for t in tokens) else None,
        "wall_s": round(wall_seconds(run.events), 1), "tokens_per_s": statistics.fmean(rates) if rates else None,
        "runs": 1, "pred_loss": pred.get("loss"), "pred_bleu": pred.get("bleu"), "pred_rouge_l": pred.get("rouge_l"),
        **{k: (run.fidelity or {}).get(k) for k in ["fid_input", "fid_items"] + FIDELITY_KEYS}, "path": str(run.path),
    }


def _perplexity(loss):
    return math.exp(min(loss, 700)) if loss is not None else None


def wall_seconds(events) -> float:
    """Time between the first and the last logged event, less the pauses between a stop and the
    resumed run's first event."""
    total, previous = 0.0, None
    for e in events:
        t = e.get("time")
        if not isinstance(t, (int, float)):
            continue
        if previous is not None and previous[1] != "stopped":
            total += max(0.0, t - previous[0])
        previous = (t, e.get("event"))
    return total


def setting_rows(rows: list) -> list:
    """Mean and sample standard deviation (n - 1; blank for one run) per setting and validation
    set: losses on different validation sets are never averaged together."""
    groups = {}
    for row in rows:
        groups.setdefault((row["setting"], row["val_set"]), []).append(row)
    out = []
    for (setting, val_set), members in groups.items():
        first = members[0]
        agg = {"kind": "setting", "run": "", "setting": setting, "val_set": val_set, "ablation": first["ablation"],
               "prompt_style": first["prompt_style"], "N": first["N"],
               "sample_seed": " ".join(str(m["sample_seed"]) for m in members),
               "val_seed": " ".join(sorted({str(m["val_seed"]) for m in members})), "overrides": first["overrides"],
               "status": " ".join(sorted({m["status"] for m in members})), "runs": len(members),
               "stopped_early": sum(bool(m["stopped_early"]) for m in members), "path": ""}
        for key in ("steps", "epochs", "best_eval_loss", "best_perplexity", "train_tokens", "wall_s", "tokens_per_s",
                    "pred_loss", "pred_bleu", "pred_rouge_l"):
            values = [m[key] for m in members if m[key] is not None]
            agg[key] = statistics.fmean(values) if values else None
            if key in ("best_eval_loss", "best_perplexity"):
                agg[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        agg.update(_fidelity_mean(members))
        out.append(agg)
    return out


def _fidelity_mean(members: list) -> dict:
    """Fidelity figures averaged over the seeds that predicted the same file; runs scored on
    different files are not averaged (blank figures, the files listed)."""
    inputs = sorted({m["fid_input"] for m in members if m["fid_input"]})
    out = {"fid_input": " ".join(inputs) or None, "fid_score_std": None, **{k: None for k in FIDELITY_KEYS}}
    if len(inputs) != 1:
        return out
    for key in FIDELITY_KEYS:
        values = [m[key] for m in members if m[key] is not None]
        out[key] = statistics.fmean(values) if values else None
        if key == "fid_score":
            out["fid_score_std"] = statistics.stdev(values) if len(values) > 1 else None
    return out


def write_csv(path: Path, rows: list):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RUN_COLUMNS})


def compare(folders, output) -> dict:
    """Read every run first (any bad folder stops before anything is written), then write."""
    runs = [read_run(f) for f in folders]
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a folder")
    sets = label_runs(runs)
    rows = [run_row(r) for r in runs]
    settings = setting_rows(rows)
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    colours = {}
    for row in rows:
        colours.setdefault(row["setting"], cycle[len(colours) % len(cycle)])
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "runs.csv", rows + settings)
    (output / "runs.md").write_text(markdown(rows, settings, sets), encoding="utf-8")
    groups = panels(runs)
    plot_eval_loss(output / "eval_loss.png", groups, colours)
    plot_best(output / "best_eval_loss.png", groups, settings, rows, colours)
    if any(s["fid_score"] is not None for s in settings):
        plot_fidelity(output / "fidelity.png", settings, rows, colours)
    return {"runs": rows, "settings": settings, "validation_sets": sets}


def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="compare_runs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--output", default="runs_comparison", help="folder for runs.csv, runs.md and the plots")
    args = parser.parse_args(argv)
    result = compare(args.run_dirs, args.output)
    labels = sorted({r["val_set"] for r in result["runs"]})
    fid = ", fidelity.png" if any(s["fid_score"] is not None for s in result["settings"]) else ""
    print(f"{len(result['runs'])} runs, {len(result['settings'])} settings: {args.output}/runs.md, runs.csv, "
          f"eval_loss.png, best_eval_loss.png{fid}")
    if len(labels) > 1:
        print(f"note: the runs use {len(labels)} validation sets ({', '.join(labels)}): eval losses compare only "
              f"within one set; see runs.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
