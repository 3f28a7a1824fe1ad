"""Reading Chameleons files: role detection, one sample per usable item, skips by reason, JSONL."""

import json
from collections import Counter
from pathlib import Path

import pytest

from chameleons.core.errors import UserError
from chameleons.corpus.data import (SKIP_EMPTY_CONTINUATION, SKIP_ENDS_WITH_CHARACTER, extract_samples,
                                    is_character_turn, load_corpus)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_chameleons.json"


# --------------------------------------------------------------------------- role detection

@pytest.mark.parametrize("source,name,expected", [
    ("user", "Rick", True),
    ("User", "Rick", True),
    ("USER", "Rick", True),
    ("  user \n", "Rick", True),
    ("Rick", "Rick", True),
    ("  Rick  ", "Rick", True),
    ("user", "", True),
    ("Ilsa", "Rick", False),
    ("username", "Rick", False),
    ("users", "Rick", False),
    ("Rick Blaine", "Rick", False),
    ("", "Rick", False),
    ("", "", False),  # no name: an empty source must not match an empty name
    ("assistant", "Rick", False),
])
def test_is_character_turn(source, name, expected):
    assert is_character_turn(source, name) is expected


def test_roles_in_extracted_context(build):
    rec = build.record("h1", [build.item([
        ("Ilsa", "Play it, Sam."),
        ("Rick", "I said never."),
        ("USER", "Of all the gin joints."),
        (" user ", "Here's looking at you."),
        ("Sam", "Which one?"),
    ], "  As time goes by.  ")], name="Rick")
    corpus = extract_samples([rec])
    assert len(corpus.samples) == 1
    s = corpus.samples[0]
    assert s.context == (
        ("user", "Play it, Sam."),
        ("assistant", "I said never."),
        ("assistant", "Of all the gin joints."),
        ("assistant", "Here's looking at you."),
        ("user", "Which one?"),
    )
    assert s.target == "As time goes by."  # stripped
    assert s.user_hash == "h1" and s.profile["name"] == "Rick"


def test_name_match_needs_the_profile_name(build):
    """Without a profile name only `user` marks the character; named speakers are all role user."""
    rec = build.record("h1", [build.item([("Rick", "a"), ("user", "b"), ("Ilsa", "c")], "d")])
    s = extract_samples([rec]).samples[0]
    assert [role for role, _ in s.context] == ["user", "assistant", "user"]


def test_empty_turns_dropped_and_contents_stripped(build):
    rec = build.record("h1", [build.item([("Ilsa", "  hi  "), ("Sam", ""), ("Sam", "   \n"), ("Ilsa", "there")], "x")],
                       name="Rick")
    s = extract_samples([rec]).samples[0]
    assert s.context == (("user", "hi"), ("user", "there"))


def test_null_content_is_an_empty_turn(build):
    rec = build.record("h1", [{"context": [{"source": "Ilsa", "content": None}, {"source": "Sam", "content": "q"}],
                               "continuation": "a"}], name="Rick")
    assert extract_samples([rec]).samples[0].context == (("user", "q"),)


# --------------------------------------------------------------------------- counts and skips

def _corpus_with_known_counts(build):
    """Hand-made: 3 records (2 share a hash), 4 collections, 9 items, 5 usable."""
    name_a, name_b = "Rick", "Ilsa"
    a_items = [
        build.item([("Ilsa", "q1")], "a1"),                         # usable
        build.item([("Ilsa", "q2")], "   "),                        # empty continuation
        build.item([("Ilsa", "q3"), ("Rick", "own")], "a3"),        # ends with the character (by name)
        build.item([("Ilsa", "q4"), ("user", "own")], "a4"),        # ends with the character (by 'user')
    ]
    a_more = [build.item([], "a5")]                                 # no context: usable
    a2_items = [build.item([("Sam", "q6")], "a6"),                  # usable (second record, same hash)
                build.item([("Sam", "q7")], "")]                    # empty continuation
    b_items = [build.item([("Rick", "q8")], "b1"),                  # usable: Rick is the partner here
               build.item([("Rick", "q9"), ("Ilsa", "own")], "b2")]  # ends with the character
    return [
        build.record("A", a_items, name=name_a, collections=[a_more]),
        build.record("B", b_items, name=name_b),
        build.record("A", a2_items, name=name_a),
    ]


def test_counts_and_skips(build):
    corpus = extract_samples(_corpus_with_known_counts(build))
    assert corpus.records == 3
    assert corpus.data_items == 9
    assert sorted(s.target for s in corpus.samples) == ["a1", "a5", "a6", "b1"]
    assert dict(corpus.skipped) == {SKIP_EMPTY_CONTINUATION: 2, SKIP_ENDS_WITH_CHARACTER: 3}
    summary = corpus.summary()
    assert summary["records"] == 3 and summary["data_items"] == 9 and summary["samples"] == 4
    assert summary["characters"] == 2
    assert summary["characters_by_record"] == 3
    assert summary["skipped"] == {SKIP_EMPTY_CONTINUATION: 2, SKIP_ENDS_WITH_CHARACTER: 3}
    # samples + skips account for every data item
    assert summary["samples"] + sum(summary["skipped"].values()) == summary["data_items"]


def test_sample_ids_and_record_index(build):
    corpus = extract_samples(_corpus_with_known_counts(build))
    by_target = {s.target: s for s in corpus.samples}
    assert by_target["a1"].sample_id == "r0.c0.i0" and by_target["a1"].record_index == 0
    assert by_target["a5"].sample_id == "r0.c1.i0"
    assert by_target["b1"].sample_id == "r1.c0.i0" and by_target["b1"].user_hash == "B"
    assert by_target["a6"].sample_id == "r2.c0.i0" and by_target["a6"].record_index == 2
    assert by_target["a6"].group_key("user_hash") == by_target["a1"].group_key("user_hash")
    assert by_target["a6"].group_key("record") != by_target["a1"].group_key("record")
    assert len({s.sample_id for s in corpus.samples}) == len(corpus.samples)


def test_one_sample_per_usable_item_on_generated_corpus(build):
    counts = {"x": 7, "y": 1, "z": 12}
    corpus = extract_samples(build.simple_corpus(counts, turns=3, repeat_hash={"z": 3}))
    assert Counter(s.user_hash for s in corpus.samples) == Counter(counts)
    assert corpus.records == 1 + 1 + 3
    assert corpus.data_items == sum(counts.values())
    assert not corpus.skipped


def test_uid_depends_on_content_not_position(build):
    records = build.simple_corpus({"x": 4, "y": 3})
    a = extract_samples(records)
    b = extract_samples(list(reversed(records)))
    assert sorted(s.uid for s in a.samples) == sorted(s.uid for s in b.samples)
    assert {s.sample_id for s in a.samples} != {s.sample_id for s in b.samples} or len(records) == 1
    assert len({s.uid for s in a.samples}) == len(a.samples)  # distinct content, distinct uids


def test_shipped_sample_file_matches_an_independent_count():
    """data/sample_chameleons.json: count usable items with a from-scratch reading of the rule."""
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))
    usable, skipped, items = 0, Counter(), 0
    for r in records:
        name = (r.get("user", {}).get("profile", {}) or {}).get("name") or ""
        for coll in r["task"]["task_behavior_collections"]:
            for it in coll["data"]:
                items += 1
                turns = [t for t in it.get("context", []) if (t.get("content") or "").strip()]
                last_own = bool(turns) and (turns[-1]["source"].strip().lower() == "user"
                                            or (name != "" and turns[-1]["source"].strip() == name))
                if not (it.get("continuation") or "").strip():
                    skipped["empty"] += 1
                elif last_own:
                    skipped["own"] += 1
                else:
                    usable += 1
    corpus = load_corpus(SAMPLE)
    assert corpus.records == len(records)
    assert corpus.data_items == items
    assert len(corpus.samples) == usable
    assert sum(corpus.skipped.values()) == sum(skipped.values())
    assert len({s.user_hash for s in corpus.samples}) == len({r["user_hash"] for r in records})


# --------------------------------------------------------------------------- JSON Lines

def test_jsonl_equals_json_list(build, tmp_path):
    records = build.simple_corpus({"x": 3, "y": 5}, repeat_hash={"y": 2})
    records.append(build.record("z", [build.item([("Q", "q")], ""), build.item([("Q", "q2")], "ok")], name="Z"))
    js = load_corpus(build.write_data(tmp_path / "d.json", records))
    jl_path = build.write_data(tmp_path / "d.jsonl", records, jsonl=True)
    # blank lines between records are allowed
    jl_path.write_text(jl_path.read_text().replace("\n", "\n\n", 2) + "\n", encoding="utf-8")
    jl = load_corpus(jl_path)
    assert [(s.sample_id, s.uid, s.target, s.context) for s in js.samples] == \
        [(s.sample_id, s.uid, s.target, s.context) for s in jl.samples]
    assert (js.records, js.data_items, dict(js.skipped)) == (jl.records, jl.data_items, dict(jl.skipped))
    assert jl.records == len(records)


def test_jsonl_bad_line_names_file_and_line(build, tmp_path):
    records = build.simple_corpus({"x": 2, "y": 2})
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(records[0]) + "\n" + "{not json\n", encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_corpus(path)
    assert str(path) in str(exc.value) and "line 2" in str(exc.value)


def test_pretty_json_list_with_leading_whitespace(build, tmp_path):
    records = build.simple_corpus({"x": 2})
    path = tmp_path / "d.json"
    path.write_text("\n  \n" + json.dumps(records, indent=4), encoding="utf-8")
    assert len(load_corpus(path).samples) == 2


# --------------------------------------------------------------------------- bad records raise

@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.pop("task"), "task"),
    (lambda r: r["task"]["task_behavior_collections"][0]["data"][1].pop("continuation"),
     "task.task_behavior_collections[0].data[1].continuation"),
    (lambda r: r["task"]["task_behavior_collections"][0]["data"][0]["context"][1].update(content=["x"]),
     "task.task_behavior_collections[0].data[0].context[1].content"),
    (lambda r: r["task"]["task_behavior_collections"][0]["data"][0]["context"][0].update(content=7),
     "task.task_behavior_collections[0].data[0].context[0].content"),
    (lambda r: r["task"]["task_behavior_collections"][0]["data"][0].update(continuation=3),
     "task.task_behavior_collections[0].data[0].continuation"),
    (lambda r: r.pop("user_hash"), "user_hash"),
])
def test_bad_record_names_record_and_field(build, mutate, field):
    records = build.simple_corpus({"x": 2, "y": 2, "z": 2})
    mutate(records[2])
    with pytest.raises(UserError) as exc:
        extract_samples(records, path="corpus.json")
    msg = str(exc.value)
    assert msg.startswith("corpus.json")
    assert "record 3" in msg  # 1-based, as JSON Lines count lines
    assert field in msg


def test_top_level_must_be_a_list():
    with pytest.raises(UserError):
        extract_samples({"records": []}, path="f.json")
