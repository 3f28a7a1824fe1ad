"""--final_fidelity_items N (chameleons/predict/final_fidelity.py): one tiny single-process training that
scores the run's fixed validation subset after saving, checked against the subset
tools/validation_subset.py writes for the same run; a bad value is one error line."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_DENSE = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
              "tie_word_embeddings": True}


def _config(build, tmp_path):
    train = build.write_data(tmp_path / "data.json", build.scene_corpus())
    cfg = build.tiny_config(tmp_path, train_file=train, max_length=1024)
    raw = json.loads(cfg.read_text())
    raw["model"]["random_init"] = TINY_DENSE
    cfg.write_text(json.dumps(raw))
    return cfg, train


def test_final_fidelity_scores_the_runs_fixed_validation_subset(build, run_in_process, run_predict_in_process,
                                                                 tmp_path, monkeypatch, load_tokenizer_once):
    from chameleons.predict import model_loading

    monkeypatch.setattr(model_loading, "load_tokenizer", load_tokenizer_once)  # the run folder's: parsed once
    cfg, train = _config(build, tmp_path)
    out = tmp_path / "run"
    proc = run_in_process(["--config", cfg, "--output_dir", out, "--max_steps", "1", "--evals_per_epoch", "100",
                           "--final_fidelity_items", "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "final_fidelity.json").read_text())
    assert record["items_requested"] == 3 and len(record["items"]) == 3
    assert all(len(row["generated"]) == 1 for row in record["items"])
    summary = record["summary"]
    assert summary["generated"]["style"]["lines"] == 3  # one continuation each (a random model's: no [ANSWER])
    assert summary["items"] == 3 and summary["classifier"]["characters"] >= 2
    ceiling = summary["reference"]["all"]
    assert ceiling["items"] == 3 and ceiling["top1"]["mean"] > ceiling["chance"]["top1"]  # lines name their speaker
    assert summary["classifier"]["excluded_validation"] == 0  # the pool never held validation

    spec = importlib.util.spec_from_file_location("validation_subset", REPO / "tools" / "validation_subset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    subset = tmp_path / "subset.json"
    assert tool.main([str(out), "--data_file", str(train), "--n", "3", "--out", str(subset)]) == 0
    targets = sorted(it["continuation"] for r in json.loads(subset.read_text())
                     for c in r["task"]["task_behavior_collections"] for it in c["data"])
    scored = {row["sample_id"] for row in record["items"]}
    manifest = json.loads((out / "split_manifest.json").read_text())
    assert scored <= set(manifest["whole_validation"]) and set(manifest["validation"]) <= set(manifest["whole_validation"])
    trained = {s.user_hash for s in _samples(train) if s.sample_id in set(manifest["epochs"][0]["train"])}
    assert {s.user_hash for s in _samples(train) if s.sample_id in scored} <= trained  # characters it trained on
    samples = {s.sample_id: s.target for s in _samples(train)}
    assert sorted(samples[sid] for sid in scored) == targets  # the tool's items, chosen by one function
    log = (out / "training_logs" / "detailed_training_log.txt").read_text()
    assert sum("final fidelity among" in line for line in log.splitlines()) == 1

    # the untrained baseline: the model the run started from, on the same items, by the same classifier
    pred = tmp_path / "subset.untrained.json"
    proc = run_predict_in_process(["--model", out, "--untrained", "--input_file", subset, "--output_file", pred,
                                   "--max_new_tokens", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "untrained model: fidelity among 6 characters" in proc.stdout
    assert json.loads(Path(f"{pred}.summary.json").read_text())["untrained"] is True
    versus = importlib.util.spec_from_file_location("fidelity_versus", REPO / "tools" / "fidelity_versus.py")
    tool = importlib.util.module_from_spec(versus)
    versus.loader.exec_module(tool)
    assert tool.main([str(out / "final_fidelity.json"), str(pred)]) == 0  # same classifier key, or an error
    _untrained_is_seeded_and_not_the_trained_model(out)
    bad = run_predict_in_process(["--model", out, "--model", out, "--untrained", "--input_file", subset,
                                  "--output_file", tmp_path / "two.json"])
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --untrained") and not (tmp_path / "two.json").exists()


def _untrained_is_seeded_and_not_the_trained_model(run):
    import torch

    from chameleons.predict import model_loading

    model = SimpleNamespace(random_init=TINY_DENSE, name_or_path=None)  # the run's config.model
    cpu = torch.device("cpu")
    first, again = (model_loading.load_untrained(run, model, 42, cpu).state_dict() for _ in range(2))
    other_seed = model_loading.load_untrained(run, model, 43, cpu).state_dict()
    trained = model_loading.load_model(run, cpu).state_dict()
    assert first.keys() == trained.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)
    assert not all(torch.equal(first[k], trained[k]) for k in first)


def _samples(path):
    from chameleons.corpus.data import load_corpus

    return load_corpus(path).samples


def test_a_bad_final_fidelity_value_is_one_error_line(build, run_in_process, tmp_path):
    cfg, _ = _config(build, tmp_path)
    out = tmp_path / "run"
    proc = run_in_process(["--config", cfg, "--output_dir", out, "--final_fidelity_items", "-2"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--final_fidelity_items" in lines[0]
    assert not out.exists()


def test_the_fidelity_subset_holds_characters_the_run_trained_on():
    """At N = 1 a run's own validation holds no character it trained on; the subset is drawn from
    the whole validation set, kept to the characters the run trained on, in content-hash order."""
    from chameleons.corpus.data import Sample
    from chameleons.predict.final_fidelity import validation_subset

    def sample(sid, who):
        return Sample(sid, f"u{sid}", 0, "k", who, {}, {}, (), f"line {sid}")

    samples = [sample(f"r0.c0.i{k}", "ann" if k % 2 else "bob") for k in range(10)]
    ids = [s.sample_id for s in samples]
    anyone = validation_subset(samples, ids, 10)
    assert len(anyone) == 10 and validation_subset(samples, list(reversed(ids)), 10) == anyone  # order by content
    only_ann = validation_subset(samples, ids, 3, trained={"ann"})
    assert len(only_ann) == 3 and {s.user_hash for s in only_ann} == {"ann"}
    assert only_ann == [s for s in anyone if s.user_hash == "ann"][:3]
