"""The adversarial variants of tools/make_synthetic_corpus.py (--duplicate_films, --renormalise,
--split_records, --reorder, --truth): the transcription noise real corpora have, with the
identity of every line tracked so leak tests can follow it."""

import json
import re
from collections import Counter

import pytest
from conftest import load_tool



msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")


def _norm(text):
    return " ".join(re.sub(r"[^\w\s]", "", text.casefold()).split())


def _base(seed=1, scale=0.01):
    places = {}
    records = synth.make_scene_corpus(seed, *msc._counts(scale), places=places)
    return records, places


def _lines(records, truth):
    """(line id, text, record index) of every spoken line shown anywhere."""
    for k, (r, ids) in enumerate(zip(records, truth)):
        for item, item_ids in zip(r["task"]["task_behavior_collections"][0]["data"], ids):
            texts = [t["content"] for t in item["context"]] + [item["continuation"]]
            assert len(texts) == len(item_ids)
            for x, text in zip(item_ids, texts):
                if text:
                    yield x, text, k


def _key(record):
    return json.dumps(record, sort_keys=True)


def test_no_variant_is_the_plain_corpus():
    records, places = _base()
    out, truth = synth.make_adversarial(records, places, seed=3)
    assert sorted(map(_key, out)) == sorted(map(_key, records))
    assert sorted(map(json.dumps, truth)) == sorted(json.dumps(t) for t in synth._truth_lists(records, places))


def test_renormalised_styles():
    assert synth.renormalised("Go home, Ed.", "lower") == "go home, ed."
    assert synth.renormalised("Go home, Ed?!", "nopunct") == "Go home, Ed"
    assert synth.renormalised("...", "nopunct") == "..."
    assert synth.renormalised("Go home.", "spaces") == "Go  home."
    with pytest.raises(ValueError):
        synth.renormalised("x", "upper")


@pytest.mark.parametrize("style", synth.NOISE_STYLES)
def test_duplicated_films_keep_line_ids_under_new_character_ids(style):
    records, places = _base()
    out, truth = synth.make_adversarial(records, places, seed=2, duplicate_films=0.3, duplicate_style=style)
    old_hashes = {r["user_hash"] for r in records}
    copies = [k for k, r in enumerate(out) if r["user_hash"] not in old_hashes]
    assert 0.1 * len(records) < len(copies) < 0.6 * len(records)
    assert len(out) == len(records) + len(copies)
    text_of = {x: t for x, t, _ in _lines(records, synth._truth_lists(records, places))}
    changed = 0
    for x, text, k in _lines(out, truth):
        assert text == (text_of[x] if out[k]["user_hash"] in old_hashes else synth.renormalised(text_of[x], style))
        changed += text != text_of[x]
    assert changed > 0
    # a copy holds the same lines as an original record, item for item
    originals = {json.dumps(t) for t in synth._truth_lists(records, places)}
    assert all(json.dumps(truth[k]) in originals for k in copies)


def test_renormalised_split_and_reordered_records():
    records, places = _base()
    out, truth = synth.make_adversarial(records, places, seed=5, renormalise=0.3, split_records=0.2, reorder=0.2)
    assert len({r["user_hash"] for r in out}) == len({r["user_hash"] for r in records})
    n_items = sum(len(t) for t in truth)
    assert n_items == sum(len(r["task"]["task_behavior_collections"][0]["data"]) for r in records)
    assert len(records) < len(out) < 1.4 * len(records)
    texts = {}
    for x, text, _ in _lines(out, truth):
        texts.setdefault(x, set()).add(text)
    assert all(len({_norm(t) for t in v}) == 1 for v in texts.values())  # one line, one normalised text
    differently_written = sum(len(v) > 1 for v in texts.values())
    assert differently_written > 0.1 * len(texts)
    # a scene's items in two records of one character, and items out of the scene's order
    starts = Counter()
    for ids in truth:
        starts.update({i[0] for i in ids})
    assert any(n > 1 for n in starts.values())
    assert any(any(len(a) > len(b) and a[0] == b[0] for a, b in zip(ids, ids[1:])) for ids in truth)


def test_cli_truth_file_and_errors(tmp_path, capsys):
    out, truth = tmp_path / "m.json", tmp_path / "t.json"
    args = ["--out", str(out), "--scale", "0.005", "--scenes", "--seed", "4", "--truth", str(truth)]
    assert msc.main(args + ["--duplicate_films", "0.2", "--renormalise", "0.3"]) == 0
    records, places = synth.make_scene_corpus(4, *msc._counts(0.005), places=(p := {})), p
    want = synth.make_adversarial(records, places, 4, duplicate_films=0.2, renormalise=0.3)
    assert json.loads(out.read_text()) == want[0] and json.loads(truth.read_text()) == want[1]
    capsys.readouterr()
    for bad in (["--scenes", "--reorder", "2"], ["--renormalise", "0.1"], ["--scenes", "--duplicate_style", "up"]):
        with pytest.raises(SystemExit) as exc:
            msc.main(["--out", str(tmp_path / "x.json"), "--scale", "0.005", *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "x.json").exists()


def test_line_ids_name_the_scene_and_the_order():
    """An item's lines are consecutive lines of one scene (id // SCENE_STRIDE), the target last."""
    records, places = _base(seed=2)
    scenes = set()
    for ids in places.values():
        assert len({x // synth.SCENE_STRIDE for x in ids}) == 1
        assert list(ids) == list(range(ids[0], ids[-1] + 1))
        scenes.add(ids[0] // synth.SCENE_STRIDE)
    assert 0.05 * len(places) < len(scenes) < 0.5 * len(places)  # several items per scene


def test_unique_lines_repeat_only_generic_ones():
    """By chance the random lines repeat (the control); with unique_lines only generic lines do."""
    def repeated(**kw):
        places = {}
        records = synth.make_scene_corpus(0, *msc._counts(0.05), places=places, **kw)
        text_of = {x: _norm(t) for x, t, _ in _lines(records, synth._truth_lists(records, places))}
        ids_of = {}
        for x, t in text_of.items():
            ids_of.setdefault(t, set()).add(x)
        generic = {_norm(g) for g in synth.GENERIC_LINES}
        return sum(len(v) > 1 for t, v in ids_of.items() if t not in generic)
    assert repeated() > 0
    assert repeated(unique_lines=True) == 0
