"""The independent leak report (chameleons/text/split_audit.py, tools/audit_split.py): what it finds
on planted leaks, what it lists apart, the dry run's line and the tool on a run folder."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

from chameleons.core.config import Ablation
from chameleons.corpus.data import extract_samples
from chameleons.text.prompts import HistoryIndex, PromptBuilder
from chameleons.text.split_audit import (AUDIT_NAME, COMMON_CONTEXTS, audit, common_lines, normalised, summary_line,
                                         summary)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_split", REPO / "tools" / "audit_split.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

ALL_ON = Ablation("profile_and_history_and_context", True, True, True)


def test_normalised_ignores_case_punctuation_spacing_and_accents():
    assert normalised("Go home, Ed!") == normalised("go  home ed") == normalised(" GO HOME... ED") == "go home ed"
    assert normalised("Don't.") == normalised("dont") and normalised("José") == normalised("jose")
    assert normalised("Go home.") != normalised("Go home, Ed.")


def _planted(build, before="where now"):
    """Validation: Ann's "Go home, Ed." (after "Where now?") and "Yeah."; training shows the first
    re-typed at the start of a dialogue and as a target after `before` (None: not as a target),
    and "Yeah" after three different lines."""
    val_items = [build.item([("Bob", "Where now?")], "Go home, Ed."), build.item([("Bob", "Ready?")], "Yeah.")]
    train_items = [build.item([("Bob", "go  home ed"), ("Cy", "Why?")], "Because."),
                   build.item([("Bob", "Cold?")], "Yeah"),
                   build.item([("Bob", "Hungry?")], "Yeah!")]
    if before:
        train_items.append(build.item([("Bob", before)], "GO HOME, ED"))
    samples = extract_samples([build.record("ann", val_items + train_items, name="Ann")]).samples
    return samples[:2], samples[2:], samples


@pytest.mark.parametrize("before, leaked, same_place, elsewhere", [
    ("where now", {"in_prompt": 1, "in_history": 1, "in_target": 1}, 1, 0),  # the same line: a leak everywhere
    (None, {"in_prompt": 1, "in_history": 0, "in_target": 0}, 0, 0),  # said once: a leak, though no line before
    ("And then?", {"in_prompt": 0, "in_history": 0, "in_target": 0}, 0, 1),  # the same words in another scene
])
def test_audit_finds_retyped_lines_and_lists_common_ones_apart(build, before, leaked, same_place, elsewhere):
    val, train, samples = _planted(build, before)
    assert common_lines(samples) == {"yeah": COMMON_CONTEXTS}
    builder = PromptBuilder(ALL_ON, "simple", HistoryIndex(train))
    report = audit(val, [train, train[:1]], samples, builder)
    n = 1 if any(leaked.values()) else 0
    assert report["validation_targets"] == 2 and report["leaked_targets"] == n
    assert report["epochs"][0] == {"epoch": 0, "train_samples": len(train), "leaked_targets": n, **leaked}
    assert report["epochs"][1]["leaked_targets"] == (1 if leaked["in_prompt"] else 0)
    assert [x["validation_sample"] for x in report["examples"]] == [val[0].sample_id] * n
    assert report["leaked_after_the_same_line"] == same_place and report["shown_elsewhere"] == elsewhere
    assert report["common_targets_shown"] == 1 and report["common_lines"][0]["text"] == "yeah"
    line = summary_line(summary(report))
    assert line.startswith(f"audit      {n} of 2 validation targets") and "1 common lines" in line


def test_audit_reads_the_detailed_template_too(build):
    val, train, samples = _planted(build, None)
    builder = PromptBuilder(Ablation("context_only", False, False, True), "detailed")
    report = audit(val, [train[:1]], samples, builder)  # only the dialogue "go  home ed" ("Someone else: ...")
    assert report["leaked_targets"] == 1 and report["epochs"][0]["in_prompt"] == 1


def test_clean_split_has_no_leaks(build):
    samples = extract_samples(build.simple_corpus([6, 5, 4], turns=3)).samples
    val, train = samples[::4], [s for i, s in enumerate(samples) if i % 4]
    report = audit(val, [train], samples, PromptBuilder(ALL_ON, "simple", HistoryIndex(train)))
    assert report["leaked_targets"] == 0 and report["examples"] == [] and report["common_targets_shown"] == 0


def test_a_naive_split_leaks_on_scene_data(build):
    """The control: validation drawn sample by sample (not by conversation) is caught."""
    samples = extract_samples(build.scene_corpus(n_chars=6, scenes=4, lines_per_scene=8)).samples
    rng = random.Random(0)
    val = rng.sample(samples, len(samples) // 10)
    train = [s for s in samples if s not in val]
    report = audit(val, [train], samples, PromptBuilder(ALL_ON, "simple", HistoryIndex(train)))
    assert report["leaked_targets"] > 0.5 * len(val)


def test_dry_run_line_and_the_tool_on_its_folder(tmp_path, build, run_in_process):
    data = build.write_data(tmp_path / "d.json", build.scene_corpus(n_chars=10, scenes=10, lines_per_scene=6))
    cfg = build.tiny_config(tmp_path, train_file=data)
    out = tmp_path / "o"
    proc = run_in_process(["--config", cfg, "--dry_run", "--output_dir", out, "--ablation_config",
                           "profile_and_history_and_context", "--resample_each_epoch", "--max_epochs", "2",
                           "--max_samples_per_user", "10"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((out / "plan.json").read_text())
    written = json.loads((out / AUDIT_NAME).read_text())
    assert plan["split_audit"] == summary(written) and plan["split_audit"]["epochs"] == 2
    assert plan["split_audit"]["leaked_targets"] == 0 and written["validation_targets"] == plan["split"]["validation"]
    assert summary_line(plan["split_audit"]) in proc.stdout
    assert tool.main([str(out)]) == 0  # re-audits from the flags the dry run recorded
    again = json.loads((out / AUDIT_NAME).read_text())
    assert {k: v for k, v in again.items() if k != "samples_from"} == written
    (out / "plan.json").unlink()  # the audit's own file is enough to audit again
    assert tool.main([str(out)]) == 0 and json.loads((out / AUDIT_NAME).read_text()) == again
    # a manifest naming other samples than the flags give is audited as recorded, and said so
    (out / "split_manifest.json").write_text(json.dumps({"validation": ["r0.c0.i1"], "epochs": [
        {"train": ["r0.c0.i1", "r1.c0.i0"]}]}))
    assert tool.main([str(out)]) == 1  # leaks: exit code 1
    recorded = json.loads((out / AUDIT_NAME).read_text())
    assert recorded["validation_targets"] == 1 and "do NOT recompute" in recorded["samples_from"]
    assert recorded["leaked_targets"] == recorded["leaked_after_the_same_line"] == 1


def test_tool_with_flags_and_bad_inputs(tmp_path, build, capsys):
    samples = build.scene_corpus(n_chars=4, scenes=3, lines_per_scene=6)
    data = build.write_data(tmp_path / "d.json", samples)
    cfg = build.tiny_config(tmp_path, train_file=data)
    assert tool.main(["--config", str(cfg), "--output_dir", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / AUDIT_NAME).read_text())["leaked_targets"] == 0
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "split_audit.json").write_text("{}")
    (tmp_path / "bad2").mkdir()
    (tmp_path / "bad2" / "split_audit.json").write_text(json.dumps({"args": {"config": str(cfg), "output_dir": "x"}}))
    (tmp_path / "bad2" / "split_manifest.json").write_text(json.dumps({"validation": ["r99.c0.i0"], "epochs": []}))
    for argv, words in ([str(tmp_path / "nope")], "not a run folder"), ([str(tmp_path / "empty")], "no run record"), \
            ([str(tmp_path / "bad")], "args"), ([str(tmp_path / "bad2")], "r99.c0.i0 is not in the data file"), \
            (["--config", str(cfg)], "output_dir"):
        with pytest.raises(SystemExit) as exc:
            tool.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not (tmp_path / "empty" / AUDIT_NAME).exists()
    assert json.loads((tmp_path / "bad2" / AUDIT_NAME).read_text()) == {"args": {"config": str(cfg), "output_dir": "x"}}


def test_long_lines_cut_in_history_are_found_and_shared_openings_are_not_leaks(build):
    """History cuts a line at 200 characters: the cut copy of a long validation target is a leak
    (matched by its opening). Another long line that merely opens with the same words, shown
    whole, is not."""
    opening = " ".join(f"word{i}" for i in range(20))
    long_val, other = f"{opening} and then the validation ending " + "x " * 60, f"{opening} but another ending."
    ann = build.record("ann", [build.item([("Bob", "Start?")], long_val),
                               build.item([("Bob", "Again?")], "GO " + long_val.upper()),  # not a copy: "go ..."
                               build.item([("Bob", "So?")], other), build.item([("Bob", "Then?")], "Fine.")],
                       name="Ann")
    samples = extract_samples([ann]).samples
    val, train = samples[:1], samples[2:]
    report = audit(val, [train], samples, PromptBuilder(ALL_ON, "simple", HistoryIndex(train)))
    assert report["leaked_targets"] == 0
    copy = extract_samples([build.record("ann", [build.item([("Bob", "start")], long_val.lower())],
                                         name="Ann")]).samples
    pool = train + copy
    report = audit(val, [train], samples + copy, PromptBuilder(ALL_ON, "simple", HistoryIndex(pool)))
    assert report["leaked_targets"] == 1 and report["epochs"][0]["in_history"] == 1
