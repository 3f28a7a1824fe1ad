"""Tests for tools/convert_chitchat.py on an in-memory dataset shaped like the package's, so the package isn't needed."""

import builtins
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("convert_chitchat", _ROOT / "tools" / "convert_chitchat.py")
ccc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ccc)


def _u(sender, text, ts="2018-05-02T19:38:15Z"):
    return {"text": text, "timestamp": ts, "sender": sender}


A, B, C = "aaaa-1111", "bbbb-2222", "cccc-3333"

DATASET = {
    "conv-1": {
        "messages": [
            [_u(A, "Hello"), _u(A, "How are you doing today?")],
            [_u(B, "whats up"), _u(B, "im good")],
            [_u(A, "Just took a nap.")],
            [_u(B, "nice")],
        ],
        "prompt": "What did you do today?",
        "ratings": {"witty": 6, "upbeat": 8, "interesting": 4},
        "start": "2018-05-02T19:38:15Z",
    },
    "conv-2": {
        "messages": [
            [_u(C, "hey there")],
            [_u(A, "hi!")],
            [_u(A, "  ")],
            [_u(A, "who is this?")],
            [_u(C, "   ")],
        ],
        "start": "2018-05-03T10:00:00Z",
    },
    "conv-3": {"messages": [[_u(B, "anyone here?")]], "start": "2018-05-04T10:00:00Z"},
}


def _data(record):
    return record["task"]["task_behavior_collections"][0]["data"]


def test_conversation_turns_joins_and_merges():
    """Utterances join with a space; blank ones vanish; a sender's consecutive messages become one turn."""
    assert ccc.conversation_turns(DATASET["conv-1"])[0] == (A, "Hello How are you doing today?")
    assert ccc.conversation_turns(DATASET["conv-2"]) == [(C, "hey there"), (A, "hi! who is this?")]


def test_convert_records_and_items():
    """One record per speaker with items; C only opens a conversation, B's lone message has no context."""
    names = {A: ("Ada Abbott", "female"), B: ("Bruno Brandt", "male"), C: ("Clara Castellano", "female")}
    records = ccc.convert(DATASET, names=names)
    assert [r["user"]["profile"]["name"] for r in records] == ["Ada Abbott", "Bruno Brandt"]
    ada, bruno = records
    assert ada["user_hash"] == hashlib.md5(A.encode()).hexdigest()
    assert bruno["user_hash"] == hashlib.md5(B.encode()).hexdigest()
    assert _data(bruno) == [
        {"context": [{"source": "Ada Abbott", "content": "Hello How are you doing today?"}],
         "continuation": "whats up im good"},
        {"context": [{"source": "Ada Abbott", "content": "Hello How are you doing today?"},
                     {"source": "Bruno Brandt", "content": "whats up im good"},
                     {"source": "Ada Abbott", "content": "Just took a nap."}],
         "continuation": "nice"},
    ]
    assert [it["continuation"] for it in _data(ada)] == ["Just took a nap.", "hi! who is this?"]
    assert _data(ada)[1]["context"] == [{"source": "Clara Castellano", "content": "hey there"}]


def test_every_item_is_usable():
    """Merging same-sender runs means no context ends on the character's own turn."""
    for r in ccc.convert(DATASET):
        name = r["user"]["profile"]["name"]
        for it in _data(r):
            assert it["continuation"] and it["context"][-1]["source"] != name


def test_max_context_keeps_the_latest_turns():
    bruno = ccc.convert(DATASET, max_context=2)[1]
    assert [t["content"] for t in _data(bruno)[1]["context"]] == ["whats up im good", "Just took a nap."]


def test_assign_names_is_unique_and_order_independent():
    """Names must be unique (role detection compares source to name) and stable under reordering."""
    ids = [f"sender-{i}" for i in range(2500)]
    names = ccc.assign_names(ids, seed=0)
    assert len({n for n, _ in names.values()}) == len(ids)
    assert names == ccc.assign_names(list(reversed(ids)), seed=0)
    assert names != ccc.assign_names(ids, seed=1)
    assert {g for _, g in names.values()} == {"female", "male"}


def _many_conversations(n_speakers=12, n_convs=40, turns=8):
    convs = {}
    for k in range(n_convs):
        a, b = f"s{k % n_speakers}", f"s{(k * 5 + 1) % n_speakers}"
        if a == b:
            b = f"s{(k + 1) % n_speakers}"
        convs[f"c{k}"] = {
            "messages": [[_u(a if i % 2 == 0 else b, f"line {i} of {k}")] for i in range(turns)],
            "ratings": {"witty": 5, "upbeat": 10, "interesting": 1},
        }
    return convs


def test_make_sample_is_seeded_and_bounded():
    """The slice is deterministic, keeps 8..max items per character, and may split a character over records."""
    convs = _many_conversations()
    a = ccc.make_sample(convs, seed=0, n_characters=10, max_items=20)
    assert json.dumps(a) == json.dumps(ccc.make_sample(convs, seed=0, n_characters=10, max_items=20))
    per_hash = {}
    for r in a:
        per_hash[r["user_hash"]] = per_hash.get(r["user_hash"], 0) + len(_data(r))
        assert _data(r)
        ratings = r["user"]["personality"]["structured"].get("chat_ratings")
        assert ratings in (None, {"interesting": 0.1, "upbeat": 1.0, "witty": 0.5})
    assert len(per_hash) == 10
    assert all(8 <= n <= 20 for n in per_hash.values())
    assert json.dumps(a) != json.dumps(ccc.make_sample(convs, seed=1, n_characters=10, max_items=20))
    with pytest.raises(ValueError):
        ccc.make_sample(convs, n_characters=13)


def test_cli_reads_dataset_json(tmp_path):
    src, out = tmp_path / "dataset.json", tmp_path / "out.json"
    src.write_text(json.dumps(DATASET), encoding="utf-8")
    assert ccc.main(["--dataset-json", str(src), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == ccc.convert(DATASET)


def test_cli_missing_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """Without the package the CLI exits 2 with a single line naming it, not a traceback."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "chitchat_dataset":
            raise ModuleNotFoundError("No module named 'chitchat_dataset'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert ccc.main(["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chitchat-dataset" in err
    assert not (tmp_path / "x.json").exists()
