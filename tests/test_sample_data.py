"""Checks on the shipped data/sample_chameleons.json, which tests and demos rely on."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_chameleons.json"


@pytest.fixture(scope="module")
def records():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def _usable(record, item):
    name = record["user"]["profile"]["name"].strip()
    last = item["context"][-1]["source"].strip() if item["context"] else ""
    return bool(item["continuation"].strip()) and last.lower() != "user" and last != name


def test_size_under_2mb():
    """Keeps the repository light."""
    assert SAMPLE.stat().st_size < 2 * 1024 * 1024


def test_is_a_json_list_of_records(records):
    assert isinstance(records, list) and records
    for r in records:
        assert re.fullmatch(r"[0-9a-f]{32}", r["user_hash"])
        assert r["user"]["profile"]["name"]
        assert isinstance(r["task"]["description"], str)
        assert r["task"]["task_behavior_collections"][0]["data"]


def test_characters_and_repeated_hashes(records):
    """Enough characters for a split, and one character over several records, as in the real corpus."""
    per_hash = Counter(r["user_hash"] for r in records)
    assert len(per_hash) >= 40
    assert max(per_hash.values()) > 1


def test_items_are_usable_and_named(records):
    """Every item is trainable, and every turn's source is a readable name."""
    usable = Counter()
    for r in records:
        for it in r["task"]["task_behavior_collections"][0]["data"]:
            assert _usable(r, it)
            assert all(t["source"] and t["content"] for t in it["context"])
            usable[r["user_hash"]] += 1
    assert min(usable.values()) >= 8 and max(usable.values()) <= 60


def test_profiles_vary(records):
    """Optional profile and personality fields appear in some records, not all."""
    profiles = [r["user"]["profile"] for r in records]
    for key in ("gender", "age"):
        assert 0 < sum(key in p for p in profiles) < len(profiles)
    assert any(r["user"]["personality"]["structured"] for r in records)
