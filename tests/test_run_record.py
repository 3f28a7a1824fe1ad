"""The run record: a model folder written by training tells prediction how its prompts were
built (chameleons/run/run_record.py). Unit tests on hand-written run files, and one tiny training
run predicted with nothing but --model."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chameleons.core.config import load_config
from chameleons.core.errors import UserError
from chameleons.corpus import data
from chameleons.text.prompts import DEFAULT_TEMPLATE
from chameleons.run import cli, run_record
from chameleons.run.run_spec import RunSpec
from chameleons.predict import prediction

ABLATIONS = {"history_and_context": {"use_profile": False, "use_history": True, "use_context": True},
             "context_only": {"use_profile": False, "use_history": False, "use_context": True}}
CUSTOM_MARK = "CUSTOM TEMPLATE MARK"


def _custom_template(path: Path) -> Path:
    text = DEFAULT_TEMPLATE.read_text(encoding="utf-8").replace("[header]\n", f"[header]\n{CUSTOM_MARK}: ", 1)
    path.write_text(text, encoding="utf-8")
    return path


def _fake_run(folder: Path, config_path: Path, template=None, pool=None, overrides=(), **args) -> Path:
    """A model folder's three run files as training writes them (no weights: resolve reads none)."""
    folder.mkdir(parents=True)
    config = load_config(config_path, list(overrides))
    flags = {"ablation_config": "context_only", "prompt_style": "simple", "template_filename": None,
             "data_file": None, "max_samples_per_user": None, "sample_seed": 42, "sample_group_by": "user_hash",
             "val_ratio": 0.1, "val_seed": None, "val_leak_check": "conversation", "overrides": list(overrides),
             **args}
    (folder / "training_config.json").write_text(json.dumps({"args": flags, "config": config.resolved()}))
    (folder / "split_manifest.json").write_text(json.dumps({"validation": [], "history_pool": pool or {}}))
    (folder / "run_record.json").write_text(json.dumps({"format": 1, "training_file": "/nowhere/train.json",
                                                        "prompt_template": template}))
    return folder


def _opts(*argv):
    return prediction.parse_predict_args(["--input_file", "in.json", "--output_file", "out.json", *map(str, argv)])


@pytest.fixture
def cfg(tmp_path, build):
    return build.tiny_config(tmp_path, ablations=ABLATIONS, max_context_turns=6)


def test_typed_flags_are_only_those_given():
    opts = _opts("--model", "m", "--set", "training.max_length=9", "--max_samples_per_user", "all")
    assert opts.typed == {"input_file", "output_file", "model", "overrides", "max_samples_per_user"}
    assert opts.max_samples_per_user is None and opts.prompt_style == "simple"  # the defaults stay
    assert cli.typed_flags(prediction.PredictOptions, ["--model", "m", "--input_file", "a", "--output_file", "b"]) \
        == {"model", "input_file", "output_file"}


def test_the_record_decides_when_no_flag_is_given(tmp_path, cfg):
    template = _custom_template(tmp_path / "t.txt").read_text()
    run = _fake_run(tmp_path / "run", cfg, template=template, pool={"r0.c0.i0": "u0"},
                    overrides=["training.max_context_turns=4", "ablation_configs.history_and_context.use_profile=true"],
                    ablation_config="history_and_context", prompt_style="detailed", max_samples_per_user=3,
                    sample_seed=5)
    s = run_record.resolve(_opts("--model", run), [run])
    assert s.opts.ablation_config == "history_and_context" and s.opts.prompt_style == "detailed"
    assert s.opts.max_samples_per_user == 3 and s.opts.sample_seed == 5
    assert s.opts.data_file == "/nowhere/train.json"
    assert s.config.training.max_context_turns == 4 and s.config.ablation("history_and_context").use_profile
    assert s.spec.template == template
    assert s.pool.uids == {"r0.c0.i0": "u0"} and s.notices == []


def test_a_typed_flag_wins_with_one_notice(tmp_path, cfg):
    run = _fake_run(tmp_path / "run", cfg, overrides=["training.max_context_turns=4"],
                    ablation_config="history_and_context", sample_seed=5)
    s = run_record.resolve(_opts("--model", run, "--sample_seed", 7, "--prompt_style", "simple",
                                 "--set", "training.max_context_turns=2"), [run])
    assert s.opts.sample_seed == 7 and s.pool is None  # a split flag: the file is split afresh
    assert s.config.training.max_context_turns == 2 and s.config.overrides == ["training.max_context_turns=2"]
    assert s.notices == [f"--sample_seed 7 overrides the run record (--model {run}: 5)",
                         f"--set training.max_context_turns=2 overrides the run record (--model {run}: 4)"]
    s = run_record.resolve(_opts("--model", run, "--model", run, "--config", cfg), [run, run])
    assert s.config.training.max_context_turns == 6 and s.opts.ablation_config == "history_and_context"
    assert s.notices == [f"--config {cfg} replaces the config in the run record of --model {run} "
                         f"(training.max_context_turns differ)"]
    s = run_record.resolve(_opts("--model", run, "--set", "ablation_configs.history_and_context.use_profile=true"), [run])
    assert s.notices == [f"--set ablation_configs.history_and_context.use_profile=true overrides the run record "
                         f"(--model {run}: False)"]


def test_models_without_a_record_need_the_flags(tmp_path, cfg):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UserError, match=f"--model {plain}: no run record .*pass --config"):
        run_record.resolve(_opts("--model", plain), [plain])
    s = run_record.resolve(_opts("--model", plain, "--config", cfg, "--ablation_config", "history_and_context"),
                           [plain])
    assert s.records == {str(plain): None} and s.pool is None and s.notices == []
    assert s.config.training.max_context_turns == 6 and s.config.path == cfg


def test_an_ensemble_that_disagrees_on_the_prompt_is_an_error_unless_a_flag_settles_it(tmp_path, cfg):
    a = _fake_run(tmp_path / "a", cfg, overrides=["training.max_context_turns=4"])
    b = _fake_run(tmp_path / "b", cfg, overrides=["training.max_context_turns=3", "training.learning_rate=0.5"])
    with pytest.raises(UserError, match=r"--model .*a and --model .*b were trained with different "
                                        r"training.max_context_turns \(4 vs 3\); pass --set training.max_con"):
        run_record.resolve(_opts("--model", a, "--model", b), [a, b])
    s = run_record.resolve(_opts("--model", a, "--model", b, "--set", "training.max_context_turns=3"), [a, b])
    assert s.config.training.max_context_turns == 3  # learning rates differ too: they do not change the prompt
    c = _fake_run(tmp_path / "c", cfg, prompt_style="detailed", template=_custom_template(tmp_path / "t").read_text())
    d = _fake_run(tmp_path / "d", cfg, prompt_style="detailed", template=DEFAULT_TEMPLATE.read_text())
    with pytest.raises(UserError, match="different prompt template .*pass --template_filename"):
        run_record.resolve(_opts("--model", c, "--model", d), [c, d])
    s = run_record.resolve(_opts("--model", c, "--model", d, "--template_filename", DEFAULT_TEMPLATE), [c, d])
    assert s.spec.template == DEFAULT_TEMPLATE.read_text() and s.opts.template_filename == str(DEFAULT_TEMPLATE)
    e = _fake_run(tmp_path / "e", cfg, ablation_config="history_and_context", pool={"r0.c0.i0": "u"})
    f = _fake_run(tmp_path / "f", cfg, ablation_config="history_and_context", pool={"r0.c0.i1": "v"})
    with pytest.raises(UserError, match="different history pool .*pass --data_file and the data flags"):
        run_record.resolve(_opts("--model", e, "--model", f), [e, f])


def test_a_damaged_record_is_one_error(tmp_path, cfg):
    run = _fake_run(tmp_path / "run", cfg)
    (run / "training_config.json").unlink()
    with pytest.raises(UserError, match="has run_record.json but no training_config.json"):
        run_record.read_record(run)
    run = _fake_run(tmp_path / "run2", cfg, prompt_style="detailed", template="[header]\n{nickname}")
    with pytest.raises(UserError, match="run_record.json: template section"):
        run_record.read_record(run)


def test_the_recorded_pool_is_read_by_id_and_checked_by_content(tmp_path, build, cfg):
    train = build.write_data(tmp_path / "data.json", build.simple_corpus({"aa": 3, "bb": 2}))
    samples = data.load_corpus(train).samples
    pool = run_record.RecordedPool("m", {s.sample_id: s.uid for s in samples[:3]})
    opts = dataclasses.replace(_opts("--model", "m", "--ablation_config", "history_and_context"), data_file=str(train))
    spec = RunSpec.from_options(opts, load_config(cfg))
    samples_read, pool_samples = prediction.training_pool(spec, pool)
    index = spec.history(pool_samples, samples_read)
    assert index.lines_for(samples[3]) == []  # bb's lines are not in the pool
    assert sorted(index.lines_for(samples[0])) == ["aa answer 1", "aa answer 2"]
    changed = run_record.RecordedPool("m", {**pool.uids, samples[0].sample_id: "other"})
    with pytest.raises(UserError, match=f"{train}: sample r0.c0.i0 is not the one --model m was trained on"):
        prediction.training_pool(spec, changed)


def test_item_ids_have_one_format():
    assert data.item_id(3, 0, 12) == "r3.c0.i12"
    assert data.item_position(data.item_id(3, 0, 12)) == (3, 0, 12)
    assert data.ends_on_character((("user", "hi"), ("assistant", "me"))) and not data.ends_on_character(())


def test_predict_with_only_model_gets_the_training_prompt_ids(tmp_path, build, run_in_process, monkeypatch, tokenizer,
                                                              load_tokenizer_once):
    """Train (one step) with two --set overrides, non-default data flags and a custom template;
    move the template and the config away, add lines to the training file; predict with only
    --model: every prompt is training's."""
    from datasets import Dataset

    from chameleons.predict import generation, model_loading

    scenes = {"n_chars": 4, "scenes": 3, "lines_per_scene": 6}
    train = build.write_data(tmp_path / "data.json", build.scene_corpus(**scenes))
    cfg = build.tiny_config(tmp_path, train_file=train, max_length=2048, ablations=ABLATIONS)
    raw = json.loads(cfg.read_text())
    raw["model"]["random_init"] = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 32,
                                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": True}
    cfg.write_text(json.dumps(raw))
    template = _custom_template(tmp_path / "custom.txt")
    out = tmp_path / "run"
    proc = run_in_process(["--config", cfg, "--output_dir", out, "--ablation_config", "history_and_context",
                           "--prompt_style", "detailed", "--template_filename", template,
                           "--max_samples_per_user", "3", "--sample_seed", "5", "--max_steps", "1",
                           "--evals_per_epoch", "100", "--set", "training.max_context_turns=4",
                           "--set", "ablation_configs.history_and_context.use_profile=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    template.rename(tmp_path / "moved.txt")
    cfg.rename(tmp_path / "moved.json")
    # the training file grew since (more lines of the same characters): a re-split would draw
    # history from them, the run's recorded pool does not
    build.write_data(train, json.loads(train.read_text()) + build.scene_corpus(**scenes, seed=1))
    (encoded,) = (tmp_path / "cache").glob("encoded-*.arrow")
    trained = Dataset.from_file(str(encoded)).to_dict()

    seen = {}
    build_prompts = prediction.build_prompts

    def spy(*a, **k):
        rows = build_prompts(*a, **k)
        seen.update({r.sample_id: r for r in rows})
        return rows

    def fake_generate(self, prompt_batch, seeds):
        return [[generation.Candidate([1], "[ANSWER]x[/ANSWER]", "", True)] * self.n for _ in prompt_batch]

    monkeypatch.setattr(prediction, "build_prompts", spy)
    monkeypatch.setattr(generation.HFGenerator, "generate", fake_generate)
    monkeypatch.setattr(model_loading, "load_tokenizer", load_tokenizer_once)  # the run folder's: parsed once
    reads, training_pool = [], prediction.training_pool
    monkeypatch.setattr(prediction, "training_pool", lambda *a: reads.append(a) or training_pool(*a))
    import predict_Chameleons

    pred = tmp_path / "pred.json"
    assert predict_Chameleons.main(["--model", str(out), "--input_file", str(train), "--output_file", str(pred)]) == 0
    compared = 0
    for sid, ids, plen, cut in zip(trained["sample_id"], trained["input_ids"], trained["prompt_len"],
                                   trained["truncated"]):
        assert not cut and not seen[sid].truncated
        assert seen[sid].ids == ids[:plen], sid
        compared += 1
    assert compared >= 8
    assert len(reads) == 1  # history and the fidelity classifier (on by default) share one read
    text = tokenizer.decode(seen[trained["sample_id"][0]].ids)
    assert CUSTOM_MARK in text and "Other lines" in text and "What we know about" in text  # template, history, profile
    summary = json.loads(Path(f"{pred}.summary.json").read_text())
    assert summary["ablation_config"] == "history_and_context" and summary["prompt_style"] == "detailed"
