"""Tests for tools/make_synthetic_corpus.py, the stand-in for the non-redistributable corpus."""

import json
import re
from collections import Counter

import pytest
from conftest import load_tool



msc, synth, base = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes"), load_tool("synthetic_base")


def _items(records):
    for r in records:
        for coll in r["task"]["task_behavior_collections"]:
            for item in coll["data"]:
                yield r, item


def _usable(record, item):
    """The format's rule: non-empty continuation, context not ending on the character's own turn."""
    name = record["user"]["profile"]["name"].strip()
    last = item["context"][-1]["source"].strip() if item["context"] else ""
    own = last.lower() == "user" or last == name
    return bool(item["continuation"]) and not own


@pytest.fixture(scope="module")
def small():
    return msc.make_corpus(0, *msc._counts(0.02))


def test_small_scale_counts(small):
    """Scaled counts are exact, so loaders can assert them."""
    n_records, n_hashes, n_items = msc._counts(0.02)
    assert (n_records, n_hashes, n_items) == (156, 122, 1449)
    assert len(small) == n_records
    assert sum(1 for _ in _items(small)) == n_items
    assert len({r["user_hash"] for r in small}) == n_hashes


def test_small_scale_shape(small):
    """Every record matches the documented schema, so the real loader can read it."""
    for r in small:
        assert re.fullmatch(r"[0-9a-f]{32}", r["user_hash"])
        prof = r["user"]["profile"]
        assert prof["name"] and prof["gender"] in ("male", "female")
        assert isinstance(r["user"]["personality"]["structured"], dict)
        assert isinstance(r["user"]["personality"]["unstructured"], str)
        assert isinstance(r["task"]["description"], str)
        for item in r["task"]["task_behavior_collections"][0]["data"]:
            assert 1 <= len(item["context"]) <= base.MAX_CONTEXT
            assert all(set(t) == {"source", "content"} and t["content"] for t in item["context"])
            assert isinstance(item["continuation"], str)
        assert 1 <= len({t["source"] for _, it in _items([r]) for t in it["context"]}) <= 4


def test_small_scale_has_variety(small):
    """The optional profile/personality fields and the 'user' source all occur."""
    profiles = [r["user"]["profile"] for r in small]
    assert any("age" in p for p in profiles) and any("age" not in p for p in profiles)
    assert any(r["user"]["personality"]["structured"].get("big_five") for r in small)
    sources = {t["source"] for _, it in _items(small) for t in it["context"]}
    assert "user" in {s.lower() for s in sources}
    assert Counter(r["user_hash"] for r in small).most_common(1)[0][1] > 1


def test_small_scale_unusable_fraction(small):
    """About 0.7% of items are unusable, in both ways the format allows."""
    pairs = list(_items(small))
    bad = [(r, it) for r, it in pairs if not _usable(r, it)]
    assert len(bad) == round(len(pairs) * base.UNUSABLE_FRACTION)
    assert any(it["continuation"] == "" for _, it in bad)
    assert any(it["continuation"] for _, it in bad)


def test_deterministic_and_seed_dependent():
    """Same seed gives byte-identical output; another seed does not."""
    counts = msc._counts(0.02)
    a = json.dumps(msc.make_corpus(3, *counts))
    assert a == json.dumps(msc.make_corpus(3, *counts))
    assert a != json.dumps(msc.make_corpus(4, *counts))


def test_full_scale_counts():
    """Full size matches the real corpus: 7,797 records, 72,471 items, 71,964 usable."""
    records = msc.make_corpus()
    assert len(records) == 7797
    pairs = list(_items(records))
    assert len(pairs) == 72471
    assert sum(_usable(r, it) for r, it in pairs) == 71964
    per_hash = Counter(r["user_hash"] for r in records)
    assert abs(len(per_hash) - 6117) <= 0.03 * 6117
    assert max(per_hash.values()) <= base.MAX_RECORDS_PER_HASH
    items_per_char = Counter(r["user_hash"] for r, _ in pairs)
    sizes = sorted(items_per_char.values())
    assert sizes[len(sizes) // 2] < 12 and sizes[-1] >= 200
    words = [len(it["continuation"].split()) for _, it in pairs[:20000] if it["continuation"]]
    words.sort()
    assert 8 <= words[len(words) // 2] <= 13 and words[-1] >= 60


def test_cli_writes_json_and_jsonl(tmp_path):
    """Both output formats load back to the same records; no temp file is left behind."""
    out_json, out_jsonl = tmp_path / "c.json", tmp_path / "c.jsonl"
    assert msc.main(["--out", str(out_json), "--scale", "0.005", "--seed", "1"]) == 0
    assert msc.main(["--out", str(out_jsonl), "--scale", "0.005", "--seed", "1", "--jsonl"]) == 0
    as_list = json.loads(out_json.read_text(encoding="utf-8"))
    as_lines = [json.loads(x) for x in out_jsonl.read_text(encoding="utf-8").splitlines()]
    assert as_list == as_lines == msc.make_corpus(1, *msc._counts(0.005))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.jsonl"]


# --------------------------------------------------------------------------- --scenes

@pytest.fixture(scope="module")
def scenes():
    places = {}
    records = synth.make_scene_corpus(0, *msc._counts(0.05), places=places)
    return records, places


def test_scene_corpus_counts_and_schema(scenes):
    """Same counts as the default corpus at any scale, same schema, same share of unusable items."""
    records, _ = scenes
    n_records, n_hashes, n_items = msc._counts(0.05)
    assert len(records) == n_records and len({r["user_hash"] for r in records}) == n_hashes
    pairs = list(_items(records))
    assert len(pairs) == n_items
    assert sum(not _usable(r, it) for r, it in pairs) == round(n_items * base.UNUSABLE_FRACTION)
    for r, item in pairs:
        assert 1 <= len(item["context"]) <= base.MAX_CONTEXT
        assert all(set(t) == {"source", "content"} and t["content"] for t in item["context"])
    per_hash = Counter(r["user_hash"] for r, _ in pairs)
    assert max(per_hash.values()) >= 10 * sorted(per_hash.values())[len(per_hash) // 2]  # heavy tail


def test_scene_corpus_has_scenes(scenes):
    """Films of many scenes with many items each; a line of one character is quoted in its
    partners' items; generic lines are about GENERIC_SHARE of all lines."""
    records, places = scenes
    line_text, records_of_line = {}, {}
    for k, r in enumerate(records):
        for i, item in enumerate(r["task"]["task_behavior_collections"][0]["data"]):
            texts = [t["content"] for t in item["context"]] + [item["continuation"]]
            for place, text in zip(places[(k, i)], texts):
                if text:  # (an unusable item's empty continuation aside) a place is one line
                    assert line_text.setdefault(place, text) == text
                records_of_line.setdefault(place, set()).add(k)
    quoted_elsewhere = sum(len(rs) > 1 for rs in records_of_line.values())
    assert quoted_elsewhere > 0.35 * len(records_of_line)
    # scenes: a new scene starts where an item's first line is not in the record's previous item
    films = Counter(r["task"]["description"].split(" in the film ")[1] for r in records)
    scene_starts, items = 0, 0
    for k, r in enumerate(records):
        prev = set()
        for i, _ in enumerate(r["task"]["task_behavior_collections"][0]["data"]):
            ids = places[(k, i)]
            scene_starts += ids[0] not in prev
            prev = set(ids)
            items += 1
    assert len(films) >= 0.05 * len(records) and films.most_common(1)[0][1] >= 5
    assert items / scene_starts >= 2.5  # several items of a record per scene, and every record in several
    texts = list(line_text.values())
    generic = sum(t in synth.GENERIC_LINES for t in texts) / len(texts)
    assert abs(generic - synth.GENERIC_SHARE) < 0.03
    assert Counter(texts).most_common(1)[0][0] == synth.GENERIC_LINES[0]


def test_scene_corpus_deterministic_and_seed_dependent():
    counts = msc._counts(0.01)
    a = json.dumps(synth.make_scene_corpus(3, *counts))
    assert a == json.dumps(synth.make_scene_corpus(3, *counts))
    assert a != json.dumps(synth.make_scene_corpus(4, *counts))
    assert a != json.dumps(synth.make_scene_corpus(3, *counts, generic_share=0.3))


def test_cli_scenes_and_bad_generic_share(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert msc.main(["--out", str(out), "--scale", "0.005", "--scenes", "--jsonl"]) == 0
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == \
        synth.make_scene_corpus(0, *msc._counts(0.005))
    capsys.readouterr()
    for bad in (["--generic_share", "1.5"], ["--scale", "0"]):
        with pytest.raises(SystemExit) as exc:
            msc.main(["--out", str(tmp_path / "x.json"), "--scenes", *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "x.json").exists()
