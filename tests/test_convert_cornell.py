"""Tests for tools/convert_cornell.py against a tiny invented corpus in the Cornell file format."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("convert_cornell", _ROOT / "tools" / "convert_cornell.py")
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)

FIXTURE = _ROOT / "tests" / "fixtures" / "cornell"


def _by_name(records):
    return {r["user"]["profile"]["name"]: r for r in records}


def _data(record):
    return record["task"]["task_behavior_collections"][0]["data"]


def test_fixture_is_iso_8859_1():
    """The fixture must exercise the decoding: é is one 0xE9 byte, not UTF-8."""
    raw = (FIXTURE / "movie_lines.txt").read_bytes()
    assert b"caf\xe9" in raw and "é".encode("utf-8") not in raw


def test_record_and_item_counts():
    """One record per speaking character; CLERK only opens a conversation, so has none."""
    records = cc.convert(str(FIXTURE))
    assert [r["user"]["profile"]["name"] for r in records] == ["RENÉE", "TOBIAS", "HARBORMASTER", "JUNO", "DEL"]
    assert {n: len(_data(r)) for n, r in _by_name(records).items()} == {
        "RENÉE": 2, "TOBIAS": 3, "HARBORMASTER": 1, "JUNO": 2, "DEL": 2,
    }


def test_hash_and_profile():
    """user_hash is md5 of the characterID; '?' gender is omitted; the movie title is kept."""
    recs = _by_name(cc.convert(str(FIXTURE)))
    assert recs["RENÉE"]["user_hash"] == hashlib.md5(b"u0").hexdigest()
    assert recs["RENÉE"]["user"]["profile"] == {
        "name": "RENÉE", "gender": "female", "movie_title": "the lighthouse keeper",
    }
    assert recs["JUNO"]["user"]["profile"]["gender"] == "female"
    assert recs["DEL"]["user"]["profile"]["gender"] == "male"
    assert "gender" not in recs["HARBORMASTER"]["user"]["profile"]
    assert recs["DEL"]["user"]["profile"]["movie_title"] == "static on channel nine"


def test_contexts_roles_and_decoding():
    """Contexts are the earlier lines in order, sourced by speaker name, text decoded from Latin-1."""
    recs = _by_name(cc.convert(str(FIXTURE)))
    renee = _data(recs["RENÉE"])
    assert renee[0] == {
        "context": [
            {"source": "RENÉE", "content": "The lamp went out at midnight."},
            {"source": "TOBIAS", "content": "Then who lit it again at one?"},
        ],
        "continuation": "Nobody. That's what frightens me.",
    }
    assert renee[1]["continuation"] == "I'll make café au lait, then we wait."
    assert [t["source"] for t in renee[1]["context"]] == ["HARBORMASTER", "TOBIAS", "HARBORMASTER"]
    # The empty line L9 is dropped; TOBIAS answers L8 directly.
    assert _data(recs["TOBIAS"])[2] == {
        "context": [{"source": "RENÉE", "content": "Tobias, the lens is cracked."}],
        "continuation": "Cracked from the inside.",
    }
    # L99 is referenced but absent from movie_lines.txt.
    assert [it["continuation"] for it in _data(recs["DEL"])] == ["Just static.", "It is now."]
    for r in recs.values():
        name = r["user"]["profile"]["name"]
        for it in _data(r):
            assert it["context"] and it["context"][-1]["source"] != name and it["continuation"]


def test_max_context_keeps_the_latest_lines():
    recs = _by_name(cc.convert(str(FIXTURE), max_context=2))
    assert [t["content"] for t in _data(recs["RENÉE"])[1]["context"]] == ["Late or lost?", "Late. For now."]


def test_cli_writes_utf8_json(tmp_path):
    """The CLI output is UTF-8 JSON equal to convert(); a missing corpus file is a clean error."""
    out = tmp_path / "cornell.json"
    assert cc.main([str(FIXTURE), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == cc.convert(str(FIXTURE))
    with pytest.raises(cc.UserError, match="movie_lines.txt not found"):
        cc.main([str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
