"""tools/compare_runs.py on run folders written here in the format training leaves (finished:
training_config.json; unfinished: the log's command line), with known losses: the table's
numbers (means, sample standard deviations, tokens, wall time) are checked, not only the files."""

import csv
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "compare_runs.py"
_spec = importlib.util.spec_from_file_location("compare_runs", TOOL)
compare_runs = importlib.util.module_from_spec(_spec)
sys.modules["compare_runs"] = compare_runs  # dataclasses look their module up there
_spec.loader.exec_module(compare_runs)

DATA = {"file": "data/sample_chameleons.json", "records": 56, "samples": 807}


def _args(ablation, seed, val_seed, n):
    return {"config": "config_tiny_cpu.json", "ablation_config": ablation, "prompt_style": "simple",
            "max_samples_per_user": n, "sample_seed": seed, "val_seed": val_seed, "val_ratio": 0.1,
            "resample_each_epoch": False, "overrides": [], "output_dir": "x"}


def make_run(root, name, ablation="context_only", seed=1, val_seed=42, n=2, evals=(), validation=("r1.c0.i1",),
             finished=True, early_stop=False, tokens=100, extra_events=()):
    """A run folder: a train event (`tokens` tokens, 10 s apart) before each evaluation."""
    run = Path(root, name)
    (run / "training_logs").mkdir(parents=True)
    events, t = [], 1000.0
    for step, loss in evals:
        events.append({"event": "train", "time": t, "step": step, "epoch": step / 10, "loss": loss + 0.5,
                       "tokens": tokens, "tokens_per_s": tokens / 10})
        events.append({"event": "eval", "time": t + 1, "step": step, "epoch": step / 10, "eval_loss": loss})
        t += 10
    if early_stop:
        events.append({"event": "early_stop", "time": t, "step": evals[-1][0]})
    events += list(extra_events)
    (run / "training_logs" / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "split_manifest.json").write_text(json.dumps({"validation": list(validation), "epochs": []}))
    args = _args(ablation, seed, val_seed, n)
    if finished:
        (run / "training_config.json").write_text(json.dumps({
            "args": args, "config": {}, "plan": {"data": DATA},
            "summary": {"global_step": evals[-1][0], "epochs": evals[-1][0] / 10,
                        "best_eval_loss": min(l for _, l in evals)}}))
    else:
        command = (f"/usr/bin/python train_distributed_Chameleons.py --config config_tiny_cpu.json --output_dir {run} "
                   f"--ablation_config {ablation} --max_samples_per_user {n} --sample_seed {seed} --val_seed {val_seed}")
        (run / "training_logs" / "detailed_training_log.txt").write_text(
            f"[2026-01-01 00:00:00] command: {command}\n[2026-01-01 00:00:01] == plan\n"
            f"[2026-01-01 00:00:01] data       {DATA['file']}: {DATA['records']} records, 807 data items, "
            f"{DATA['samples']} samples, 50 characters (56 by record)\n")
    return run


@pytest.fixture
def three_runs(tmp_path):
    """Two seeds of context_only N2 and one profile_only N2, all on one validation set."""
    return [make_run(tmp_path, "ctx_s1", seed=1, evals=[(5, 3.0), (10, 2.0), (15, 2.2)], early_stop=True),
            make_run(tmp_path, "ctx_s2", seed=2, evals=[(5, 2.8), (10, 2.5)]),
            make_run(tmp_path, "prof_s1", ablation="profile_only", seed=1, evals=[(5, 3.5), (10, 3.0)])]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_numbers(three_runs, tmp_path):
    out = tmp_path / "cmp"
    compare_runs.compare(three_runs, out)
    rows = read_csv(out / "runs.csv")
    runs = {r["run"]: r for r in rows if r["kind"] == "run"}
    settings = {r["setting"]: r for r in rows if r["kind"] == "setting"}
    assert sorted(runs) == ["ctx_s1", "ctx_s2", "prof_s1"]
    assert sorted(settings) == ["context_only simple N2", "profile_only simple N2"]

    s1 = runs["ctx_s1"]
    assert float(s1["best_eval_loss"]) == pytest.approx(2.0)
    assert float(s1["best_perplexity"]) == pytest.approx(math.exp(2.0))
    assert (s1["steps"], s1["stopped_early"], s1["status"]) == ("15", "True", "finished")
    assert int(s1["train_tokens"]) == 300 and float(s1["tokens_per_s"]) == pytest.approx(10.0)
    assert float(s1["wall_s"]) == pytest.approx(30.0)  # first event at 1000 s, the early stop at 1030 s
    assert runs["ctx_s2"]["stopped_early"] == "False"
    assert {r["val_set"] for r in runs.values()} == {"A"}

    ctx = settings["context_only simple N2"]
    assert ctx["runs"] == "2" and ctx["sample_seed"] == "1 2"
    assert float(ctx["best_eval_loss"]) == pytest.approx(2.25)
    assert float(ctx["best_eval_loss_std"]) == pytest.approx(statistics.stdev([2.0, 2.5]))  # 0.35355, n - 1
    assert float(ctx["best_eval_loss_std"]) == pytest.approx(0.5 / math.sqrt(2))
    assert float(ctx["best_perplexity"]) == pytest.approx((math.exp(2.0) + math.exp(2.5)) / 2)
    assert float(ctx["steps"]) == pytest.approx(12.5) and ctx["stopped_early"] == "1"
    prof = settings["profile_only simple N2"]
    assert float(prof["best_eval_loss"]) == pytest.approx(3.0) and prof["best_eval_loss_std"] == ""

    md = (out / "runs.md").read_text()
    assert "| context_only simple N2 | A | 2 | 1 2 | 2.2500 ± 0.3536 |" in md
    assert "| profile_only simple N2 | A | 1 | 1 | 3.0000 |" in md
    assert "Not comparable" not in md and "Character fidelity" not in md
    assert not (out / "fidelity.png").exists()  # no run has fidelity figures
    for png in ("eval_loss.png", "best_eval_loss.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_different_validation_sets_are_flagged_and_never_averaged(three_runs, tmp_path):
    other = make_run(tmp_path, "ctx_s3_own_val", seed=3, val_seed=3, evals=[(5, 1.0)], validation=("r9.c0.i9",))
    result = compare_runs.compare(three_runs + [other], tmp_path / "cmp")
    rows = {r["run"]: r for r in result["runs"]}
    assert rows["ctx_s3_own_val"]["val_set"] == "B" and rows["ctx_s1"]["val_set"] == "A"
    settings = {(s["setting"], s["val_set"]): s for s in result["settings"]}
    assert settings[("context_only simple N2", "A")]["best_eval_loss"] == pytest.approx(2.25)  # 1.0 not averaged in
    assert settings[("context_only simple N2", "B")]["best_eval_loss"] == pytest.approx(1.0)
    md = (tmp_path / "cmp" / "runs.md").read_text()
    assert "Not comparable across validation sets" in md and "2 different validation sets (A, B)" in md
    # the plots draw one panel per validation set
    runs = [compare_runs.read_run(p) for p in three_runs + [other]]
    compare_runs.label_runs(runs)
    panels = compare_runs.panels(runs)
    assert {k: sorted(r.name for r in v) for k, v in panels.items()} == {
        "A": ["ctx_s1", "ctx_s2", "prof_s1"], "B": ["ctx_s3_own_val"]}


def test_same_seeds_on_another_data_file_differ(three_runs, tmp_path):
    moved = make_run(tmp_path, "ctx_other_data", seed=1, evals=[(5, 2.0)])
    info = json.loads((moved / "training_config.json").read_text())
    info["plan"]["data"] = {**DATA, "file": "data/other.json", "samples": 900}
    (moved / "training_config.json").write_text(json.dumps(info))
    result = compare_runs.compare(three_runs + [moved], tmp_path / "cmp")
    assert {r["run"]: r["val_set"] for r in result["runs"]}["ctx_other_data"] == "B"


def test_unfinished_and_resumed_run(tmp_path):
    """No training_config.json: the settings come from the log's command line; a resumed run's
    repeated steps count once, and the pause between the stop and the resume is not wall time."""
    run = make_run(tmp_path, "unfinished", ablation="history_only", seed=7, val_seed=42, n=5, finished=False,
                   evals=[(5, 2.5), (10, 2.25)], extra_events=[
                       {"event": "stopped", "time": 1025.0, "step": 10},
                       {"event": "train", "time": 5000.0, "step": 10, "epoch": 1.0, "loss": 2.7, "tokens": 100,
                        "tokens_per_s": 10.0},
                       {"event": "eval", "time": 5001.0, "step": 10, "epoch": 1.0, "eval_loss": 2.25},
                       {"event": "train", "time": 5010.0, "step": 15, "epoch": 1.5, "loss": 2.6, "tokens": 100,
                        "tokens_per_s": 10.0}])
    row = compare_runs.compare([run], tmp_path / "cmp")["runs"][0]
    assert (row["ablation"], row["N"], row["sample_seed"], row["val_seed"]) == ("history_only", "5", 7, 42)
    assert row["status"] == "unfinished" and row["steps"] == 15
    assert row["best_eval_loss"] == pytest.approx(2.25)
    assert row["train_tokens"] == 300  # steps 5, 10, 15
    assert row["wall_s"] == pytest.approx(25.0 + 10.0)  # 1000..1025, then 5000..5010
    assert row["val_set"] == "A"


def test_prediction_scores_are_read(three_runs, tmp_path):
    (three_runs[0] / "dev_pred.json.eval.json").write_text(json.dumps({
        "scores": {"members": [{"model": str(three_runs[0]), "loss": 1.75, "perplexity": math.exp(1.75)}]},
        "generation": {"bleu": 12.5, "rouge_l": 30.25}}))
    rows = {r["run"]: r for r in compare_runs.compare(three_runs, tmp_path / "cmp")["runs"]}
    assert (rows["ctx_s1"]["pred_loss"], rows["ctx_s1"]["pred_bleu"], rows["ctx_s1"]["pred_rouge_l"]) == (1.75, 12.5, 30.25)
    assert rows["ctx_s2"]["pred_loss"] is None


def _fidelity_summary(run, score, ceiling=0.7, baseline=0.45, input_file="data/dev.json"):
    figures = lambda value: {"all": {"score": {"mean": value}, "top1": {"mean": value / 10}}}  # noqa: E731
    (run / "dev_pred.json.summary.json").write_text(json.dumps({
        "input_file": input_file, "counts": {},
        "fidelity": {"generated": {**figures(score), "style": {"copy_rate": {"mean": 0.1}, "repeats_training_line": {"mean": 0.05}, "length_ratio": {"mean": 1.2}}},
                     "reference": figures(ceiling), "baseline": figures(baseline)}}))


def test_fidelity_columns_setting_mean_and_plot(three_runs, tmp_path):
    _fidelity_summary(three_runs[0], 0.6)
    _fidelity_summary(three_runs[1], 0.7, ceiling=0.8)
    out = tmp_path / "cmp"
    result = compare_runs.compare(three_runs, out)
    rows = {r["run"]: r for r in result["runs"]}
    assert (rows["ctx_s1"]["fid_score"], rows["ctx_s1"]["fid_top1"], rows["ctx_s1"]["fid_baseline"]) == (0.6, 0.06, 0.45)
    assert rows["ctx_s1"]["fid_input"] == "dev.json" and rows["prof_s1"]["fid_score"] is None
    ctx = {s["setting"]: s for s in result["settings"]}["context_only simple N2"]
    assert ctx["fid_score"] == pytest.approx(0.65) and ctx["fid_score_std"] == pytest.approx(statistics.stdev([0.6, 0.7]))
    assert ctx["fid_ceiling"] == pytest.approx(0.75) and ctx["fid_copy_rate"] == pytest.approx(0.1)
    assert ctx["fid_repeats_training"] == pytest.approx(0.05)
    md = (out / "runs.md").read_text()
    assert "| context_only simple N2 | dev.json | 0.650 ± 0.071 | 0.065 | 0.750 | 0.450 | 0.100 | 0.050 | 1.20 |" in md
    data = (out / "fidelity.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    _fidelity_summary(three_runs[1], 0.7, input_file="data/other.json")  # seeds that predicted other files
    ctx = {s["setting"]: s for s in compare_runs.compare(three_runs, out)["settings"]}["context_only simple N2"]
    assert ctx["fid_score"] is None and ctx["fid_input"] == "dev.json other.json"
    untrained = three_runs[0] / "dev_pred.untrained.json.summary.json"  # newest, but the baseline's
    untrained.write_text(json.dumps({"input_file": "data/dev.json", "untrained": True,
                                     "fidelity": {"generated": {"all": {"score": {"mean": 0.5}}}}}))
    assert compare_runs.read_run(three_runs[0]).fidelity["fid_score"] == 0.6
    final = {"items_requested": 200, "summary": {"generated": {"all": {"score": {"mean": 0.55}}}}}
    (three_runs[0] / "final_fidelity.json").write_text(json.dumps(final))  # --final_fidelity_items, newest
    got = compare_runs.read_run(three_runs[0]).fidelity
    assert (got["fid_score"], got["fid_input"]) == (0.55, "final_fidelity (200 items)")


def _run_tool(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_command_line(three_runs, tmp_path):
    proc = _run_tool(*three_runs, "--output", tmp_path / "cmp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 runs, 2 settings" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["best_eval_loss.png", "eval_loss.png", "runs.csv",
                                                                     "runs.md"]


@pytest.mark.parametrize("case", ["missing", "not_a_run", "broken_config"])
def test_bad_run_folder_is_one_error_line_and_writes_nothing(three_runs, tmp_path, case):
    bad = tmp_path / case
    if case == "not_a_run":
        bad.mkdir()
    elif case == "broken_config":
        bad = make_run(tmp_path, case, evals=[(5, 1.0)])
        (bad / "training_config.json").write_text("{\"args\": ")
    proc = _run_tool(*three_runs, bad, "--output", tmp_path / "cmp", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and case in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cmp").exists()


def test_settings_scored_on_the_same_items_are_compared_pairwise(three_runs, tmp_path):
    """Per-item fidelity files beside the summaries: the context seeds rank the intended character
    high on 60 items, the profile run low; runs.md says the difference is real after Holm."""
    import random

    rng = random.Random(0)
    for run, good in ((three_runs[0], True), (three_runs[1], True), (three_runs[2], False)):
        _fidelity_summary(run, 0.8 if good else 0.5)
        items = [{"sample_id": f"r{k}.c0.i0", "attributed": True,
                  "generated": [{"rank_all": rng.randint(1, 3) if good else rng.randint(4, 10)}]} for k in range(60)]
        (run / "dev_pred.json.fidelity.json").write_text(json.dumps({"summary": {"classifier": {"characters": 10}},
                                                                     "items": items}))
    out = tmp_path / "cmp"
    compare_runs.compare(three_runs, out)
    md = (out / "runs.md").read_text()
    assert "## Which fidelity differences are real" in md
    (row,) = [line for line in md.splitlines() if line.startswith("| dev.json | context_only simple N2 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "profile_only simple N2" and cells[3] == "60" and cells[4] == "2 / 1" and cells[-1] == "yes"
    assert float(cells[5]) > 0.3
