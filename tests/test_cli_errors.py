"""The trainer's command line: bad input gives one `error: ...` line, exit code 2, no traceback
and no output folder; a dry run writes plan.json whose figures match counts computed here from
the data file itself. Most cases call the script's main() in this process; the ones taking
`run_trainer` run it as users do, in a subprocess.
"""

import gzip
import json
import math
import sys
from collections import Counter

import pytest

from conftest import huge_pages_expected, item, record, simple_corpus, tiny_config, write_data, write_input

IM_END = "<|im_end|>"


def check_one_error_line(proc, out_dir, *needles):
    """rc 2, exactly one stderr line starting with `error:`, no traceback, output dir absent."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert not out_dir.exists(), "output dir was created for a failed run"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _make_go(tmp_path, runner):
    good = simple_corpus([4, 3, 5])

    def go(*extra, data=None, name="data.json", config=None, env=None):
        path = write_input(tmp_path / name, good if data is None else data)
        cfg = config or tiny_config(tmp_path, train_file=path)
        return runner(["--config", cfg, "--output_dir", tmp_path / "out", "--dry_run", "--data_file", path, *extra],
                      cwd=tmp_path, env_extra=env)

    return go, tmp_path, good


@pytest.fixture
def setup(tmp_path, run_in_process):
    """A valid config + data file; `go(extra args, data=records or text or bytes)` runs a dry run
    through the script's main() in this process (the tests that take `run_trainer` run it as a
    real process, as do the subprocess cases of tests/test_bad_inputs.py)."""
    return _make_go(tmp_path, run_in_process)


@pytest.fixture
def setup_in_process(tmp_path, run_in_process):
    return _make_go(tmp_path, run_in_process)


# --------------------------------------------------------------------------- data file errors

@pytest.mark.parametrize("text", ["this is not json", "[1, 2", "[{\"user_hash\": \"a\",}]", ""])
def test_not_json(setup, text):
    go, tmp, _ = setup
    check_one_error_line(go(data=text), tmp / "out", "data.json")


@pytest.mark.parametrize("text", ["\"a string\"", "42", "null", "true"])
def test_wrong_top_level_type(setup, text):
    go, tmp, _ = setup
    line = check_one_error_line(go(data=text), tmp / "out", "data.json")
    assert "list" in line


def test_top_level_object_is_reported_as_such(setup):
    """Regression test for a fixed bug: a pretty-printed JSON object (a valid JSON document of the
    wrong top-level type) is taken for JSON Lines and reported as `not valid JSON Lines
    (Expecting property name ...)`, which sends the user looking for a syntax error that is not
    there. The message should say the top level must be a list."""
    go, tmp, good = setup
    line = check_one_error_line(go(data=json.dumps({"records": good}, indent=2)), tmp / "out", "data.json")
    assert "list" in line and "not valid JSON" not in line


def test_binary_data_file(setup):
    """Regression test for a fixed bug: a gzip (non-UTF-8) file is not JSON, but reading it raises
    UnicodeDecodeError out of Path.read_text: a traceback and exit code 1."""
    go, tmp, good = setup
    check_one_error_line(go(data=gzip.compress(json.dumps(good).encode()), name="data.json"), tmp / "out", "data.json")


def test_record_without_task(setup):
    go, tmp, good = setup
    bad = json.loads(json.dumps(good))
    del bad[1]["task"]
    check_one_error_line(go(data=bad), tmp / "out", "data.json", "record 2", "task")


def test_record_without_task_jsonl(setup):
    go, tmp, good = setup
    bad = json.loads(json.dumps(good))
    del bad[2]["task"]
    tmp_file = tmp / "data.jsonl"
    write_data(tmp_file, bad, jsonl=True)
    check_one_error_line(go(data=tmp_file.read_text(), name="data.jsonl"), tmp / "out", "data.jsonl", "record 3",
                         "task")


def test_item_without_continuation(setup):
    go, tmp, good = setup
    bad = json.loads(json.dumps(good))
    del bad[2]["task"]["task_behavior_collections"][0]["data"][3]["continuation"]
    check_one_error_line(go(data=bad), tmp / "out", "data.json", "record 3",
                         "task_behavior_collections[0].data[3].continuation")


@pytest.mark.parametrize("value", [5, ["a"], {"t": "x"}])
def test_non_string_content(setup, value):
    go, tmp, good = setup
    bad = json.loads(json.dumps(good))
    bad[0]["task"]["task_behavior_collections"][0]["data"][1]["context"][0]["content"] = value
    check_one_error_line(go(data=bad), tmp / "out", "data.json", "record 1",
                         "task_behavior_collections[0].data[1].context[0].content")


def test_no_usable_sample(setup_in_process):
    """Regression test for a fixed bug: a file whose every item is skipped (here: empty
    continuations) gets through loading, sampling and splitting with zero samples, then crashes
    in `datasets` (ValueError: Column 'length' doesn't exist) with a traceback and exit code 1.
    `[]` does the same. It should be one `error:` line naming the file. (Run in-process: through
    the CLI the bug costs a whole tokenizer load; the subprocess shows the same traceback.)"""
    go, tmp, _ = setup_in_process
    bad = [record("a", [item([("B", "hi")], "  "), item([("B", "yo")], "")], name="A")]
    check_one_error_line(go(data=bad), tmp / "out", "data.json")


def test_missing_data_file(setup, run_in_process):
    go, tmp, _ = setup
    cfg = tiny_config(tmp, train_file=tmp / "data.json")
    proc = run_in_process(["--config", cfg, "--output_dir", tmp / "out", "--dry_run", "--data_file", tmp / "nope.json"],
                          cwd=tmp)
    check_one_error_line(proc, tmp / "out", "nope.json")


def test_missing_train_file_from_config(setup, run_in_process):
    go, tmp, _ = setup
    cfg = tiny_config(tmp, train_file="absent_train.json")
    proc = run_in_process(["--config", cfg, "--output_dir", tmp / "out", "--dry_run"], cwd=tmp)
    check_one_error_line(proc, tmp / "out", "absent_train.json")


# --------------------------------------------------------------------------- config and flag errors

def test_missing_config(setup, run_trainer):
    go, tmp, _ = setup
    proc = run_trainer(["--config", tmp / "no_config.json", "--output_dir", tmp / "out", "--dry_run"], cwd=tmp)
    check_one_error_line(proc, tmp / "out", "no_config.json")


def test_config_not_json(setup, run_in_process):
    go, tmp, _ = setup
    (tmp / "bad.json").write_text("{model: 1", encoding="utf-8")
    proc = run_in_process(["--config", tmp / "bad.json", "--output_dir", tmp / "out", "--dry_run"], cwd=tmp)
    check_one_error_line(proc, tmp / "out", "bad.json")


def test_binary_config(setup, run_trainer):
    """Regression test for a fixed bug: a non-UTF-8 config raises UnicodeDecodeError (traceback, exit 1)."""
    go, tmp, _ = setup
    (tmp / "bin.json").write_bytes(b"\xff\xfe{\x00}")
    proc = run_trainer(["--config", tmp / "bin.json", "--output_dir", tmp / "out", "--dry_run"], cwd=tmp)
    check_one_error_line(proc, tmp / "out", "bin.json")


def test_unknown_ablation(setup):
    go, tmp, _ = setup
    check_one_error_line(go("--ablation_config", "profile_and_vibes"), tmp / "out", "profile_and_vibes")


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_bad_max_samples_per_user(setup, value):
    go, tmp, _ = setup
    check_one_error_line(go("--max_samples_per_user", value), tmp / "out", "--max_samples_per_user")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "0.0", "1.0", "nan", "x"])
def test_val_ratio_outside_open_interval(setup, value):
    go, tmp, _ = setup
    check_one_error_line(go("--val_ratio", value), tmp / "out", "--val_ratio")


def test_unknown_flag(setup):
    go, tmp, _ = setup
    check_one_error_line(go("--max_sample_per_user", "2"), tmp / "out")


def test_missing_template_for_detailed_style(setup_in_process):
    go, tmp, _ = setup_in_process
    check_one_error_line(go("--prompt_style", "detailed", "--template_filename", tmp / "no_template.txt"),
                         tmp / "out", "no_template.txt")


def test_negative_max_context_turns_rejected(tmp_path):
    """Regression test for a fixed bug: training.max_context_turns is not range-checked; -1 is
    accepted and PromptBuilder.turns() then keeps turns[1:] (all but the oldest) instead of
    failing like the other count keys (`must be at least 1`). Checked in-process: through the
    CLI the bug costs a whole dry run."""
    from chameleons.core.config import load_config
    from chameleons.core.errors import UserError

    cfg = tiny_config(tmp_path, train_file=tmp_path / "data.json", max_context_turns=-1)
    with pytest.raises(UserError, match="max_context_turns"):
        load_config(cfg)


# --------------------------------------------------------------------------- dry run end to end

def _dry_run_corpus():
    """Known shape: 5 characters over 7 records, 3 unusable items, one sample whose target cannot
    fit max_length, one whose dialogue must be truncated. Every line is unique (nothing leaks)."""
    records = simple_corpus({"a": 7, "b": 3, "c": 12, "e": 5}, repeat_hash={"c": 2, "a": 2})
    records[0]["task"]["task_behavior_collections"][0]["data"] += [
        item([("Partner", "skip me 1")], "   "),
        item([("Partner", "skip me 2")], ""),
        item([("Partner", "skip me 3"), ("Name a", "my own last word")], "never used"),
    ]
    long_target = " ".join(f"giant{i}" for i in range(500))
    long_context = [("Partner" if i % 2 else "Name f", f"scene turn {i} " + " ".join(f"w{i}_{j}" for j in range(15)))
                    for i in range(60)]
    records.append(record("d", [item([("Partner", "a question for d")], long_target)], name="Name d"))
    records.append(record("f", [item(long_context, "f answers briefly"),
                                item([("Partner", "f short q")], "f short a")], name="Name f"))
    return records, long_target


def _independent_counts(records):
    per_hash, per_record, samples, skips, items = Counter(), Counter(), [], 0, 0
    for r_i, r in enumerate(records):
        name = r["user"]["profile"].get("name", "")
        for coll in r["task"]["task_behavior_collections"]:
            for it in coll["data"]:
                items += 1
                turns = [t for t in it["context"] if t["content"].strip()]
                own_last = bool(turns) and (turns[-1]["source"].strip().lower() == "user"
                                            or turns[-1]["source"].strip() == name)
                if not it["continuation"].strip() or own_last:
                    skips += 1
                    continue
                per_hash[r["user_hash"]] += 1
                per_record[r_i] += 1
                samples.append(it["continuation"].strip())
    return per_hash, per_record, samples, skips, items


def _completion_tokens(tokenizer, target):
    return len(tokenizer(f"[ANSWER]\n{target}\n[/ANSWER]{IM_END}", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("mode", ["all_nproc4_json", "n2_worldsize3_jsonl"])
def test_dry_run_plan_matches_independent_counts(tmp_path, run_trainer, run_in_process, tokenizer, mode):
    """The first mode runs the script as a subprocess, exactly as users do; the second calls its
    main() in-process (same code path, saves a tokenizer load)."""
    records, long_target = _dry_run_corpus()
    jsonl = mode.endswith("jsonl")
    data = write_data(tmp_path / ("d.jsonl" if jsonl else "d.json"), records, jsonl=jsonl)
    bs, ga, max_length, ratio = 2, 3, 256, 0.2
    cfg = tiny_config(tmp_path, train_file=data, max_length=max_length, batch_size=bs, grad_accum=ga)
    out = tmp_path / "run"
    args = ["--config", cfg, "--output_dir", out, "--dry_run", "--val_ratio", ratio, "--sample_seed", 5,
            "--ablation_config", "context_only"]
    if mode.startswith("all"):
        n, world, env = None, 4, None
        args += ["--nproc_per_node", world]
    else:
        n, world, env = 2, 3, {"WORLD_SIZE": "3"}
        args += ["--max_samples_per_user", n]
    runner = run_trainer if mode.startswith("all") else run_in_process
    proc = runner(args, cwd=tmp_path, env_extra=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "split_audit.json"]
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    assert proc.stdout.strip() and data.name in proc.stdout

    per_hash, per_record, targets, skips, items = _independent_counts(records)
    # --- data
    d = plan["data"]
    assert d["records"] == len(records) == 8
    assert d["characters"] == len(per_hash) == 6
    assert d["characters_by_record"] == len(per_record) == 8
    assert d["data_items"] == items
    assert d["samples"] == len(targets) == sum(per_hash.values())
    assert sum(d["skipped"].values()) == skips == 3

    # --- sampling and split
    sampled = sum(c if n is None else min(c, n) for c in per_hash.values())
    sp = plan["split"]
    assert sp["sampled"] == sampled
    # validation conversations are drawn once over the corpus, so a small sampled set gets its share
    # only up to chance: the split guard's own bound (splitting.check_validation_share)
    assert 0 < sp["validation"] and abs(sp["validation"] - ratio * sampled) <= max(
        0.03 * sampled, 3 * math.sqrt(sampled * ratio * (1 - ratio)))
    assert sp["train"] + sp["validation"] == sampled  # nothing in this corpus quotes another line
    assert sp["excluded_for_leakage"] == 0
    # the long-target sample (character d's only one) is always sampled and always dropped
    assert sp["train_encoded"] + sp["validation_encoded"] == sampled - 1

    # --- tokens
    t = plan["tokens"]
    assert t["encoded"] == sampled
    assert t["dropped_target_too_long"] == 1 and t["kept"] == sampled - 1
    assert t["truncated"] == 1  # only f's 60-turn scene exceeds max_length
    assert 0 < t["length_min"] <= t["length_median"] <= t["length_p95"] <= t["length_max"] <= max_length
    assert t["tokens_total"] <= t["kept"] * max_length
    if n is None:  # every sample is used: the supervised tokens are every kept target's completion
        expected_supervised = sum(_completion_tokens(tokenizer, x) for x in targets if x != long_target)
        assert t["supervised_tokens"] == expected_supervised
    assert t["supervised_share"] == round(t["supervised_tokens"] / t["tokens_total"], 4)
    assert 0 < t["supervised_share"] < 1

    # --- device: the kernel the run would use, named as training logs it
    huge = huge_pages_expected()  # the entry script switches torch's THP on
    assert plan["device"] == {"on_gpu": False, "bf16": False, "attn_implementation": "sdpa_varlen", "huge_pages": huge}
    assert (f"device     CPU, fp32, attention sdpa_varlen, large host tensors on "
            f"{'huge pages' if huge else '4 KiB pages'}") in proc.stdout

    # --- schedule
    sc = plan["schedule"]
    assert sc["world_size"] == world
    assert sc["samples_per_optimizer_step"] == bs * ga * world
    assert sc["steps_per_epoch"] == math.ceil(sp["train_encoded"] / (bs * ga * world))

    # --- guide table
    rows = {row["max_samples_per_user"]: row for row in plan["guide_table"]}
    assert list(rows) == [1, 2, 5, 10, "all"]
    for key, row in rows.items():
        cap = None if key == "all" else key
        expect = sum(c if cap is None else min(c, cap) for c in per_hash.values())
        expect_by_record = sum(c if cap is None else min(c, cap) for c in per_record.values())
        assert row["samples"] == expect, key
        assert row["samples_if_grouped_by_record"] == expect_by_record, key
        assert row["train_samples"] + row["validation_samples"] + row["lost_to_split"] == expect, key
        assert abs(row["validation_samples"] - ratio * expect) <= max(
            0.03 * expect, 3 * math.sqrt(expect * ratio * (1 - ratio))), key
        assert row["steps_per_epoch"] == math.ceil(row["train_samples"] / (bs * ga * world))
    current = rows["all" if n is None else n]
    assert current["samples"] == sp["sampled"] and current["train_samples"] == sp["train"]


def test_dry_run_defaults_to_one_process_and_groups_by_record(tmp_path, run_in_process):
    """Without --nproc_per_node and WORLD_SIZE the dry run plans for one process; the config's
    relative train_file is found beside the config from another folder; --sample_group_by record
    drives the guide table."""
    records = simple_corpus({"p": 6, "q": 6, "r": 6, "s": 6, "t": 6}, repeat_hash={"p": 3, "q": 2})
    write_data(tmp_path / "d.json", records)
    cfg = tiny_config(tmp_path, train_file="d.json", batch_size=1, grad_accum=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_in_process(["--config", cfg, "--output_dir", tmp_path / "o", "--dry_run", "--sample_group_by", "record",
                        "--max_samples_per_user", "1"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["sampling"] == {"max_samples_per_user": 1, "sample_seed": 42, "group_by": "record",
                                "resample_each_epoch": False}
    n_records = 3 + 2 + 1 + 1 + 1
    assert plan["split"]["sampled"] == n_records  # one per record
    assert plan["split"]["validation"] == 1  # round(0.1 * 8)
    assert plan["schedule"]["world_size"] == 1
    assert plan["schedule"]["steps_per_epoch"] == plan["split"]["train_encoded"] == n_records - 1
    rows = {row["max_samples_per_user"]: row for row in plan["guide_table"]}
    assert rows[1]["samples"] == rows[1]["samples_if_grouped_by_record"] == n_records
    assert rows[2]["samples"] == 2 * 3 + 2 * 2 + 2 * 3 and rows["all"]["samples"] == 30
