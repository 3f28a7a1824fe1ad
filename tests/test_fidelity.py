"""chameleons/evaluate/fidelity.py: speaker attribution, style statistics, baselines and aggregation as
pure functions; the classifier fitted on tiny sets (milliseconds); and the calibration on the
shipped real dialogue sample: reference lines must score clearly above other characters' lines."""

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chameleons.corpus.data import load_corpus
from chameleons.evaluate import fidelity, fidelity_style, fidelity_summary
from chameleons.evaluate.fidelity import Item


def _sample(sid, user_hash, target, record_key=None, context=(), sources=()):
    return SimpleNamespace(sample_id=sid, uid=f"u{sid}", user_hash=user_hash, target=target,
                           record_key=record_key or user_hash, context=tuple(("user", c) for c in context),
                           profile={"name": user_hash.upper()}, sources=tuple(sources))


VOICES = {"pirate": ["arr matey the sea be calling", "shiver me timbers arr", "the sea and the rum arr matey",
                     "arr hoist the sails matey", "rum for every pirate arr"],
          "robot": ["beep affirmative unit online", "processing beep beep", "affirmative human unit ready",
                    "error beep recalibrating unit", "unit processing affirmative"],
          "poet": ["the moonlight weeps on silver leaves", "o gentle night of quiet dreams",
                   "the silver moon and gentle leaves", "dreams of night and moonlight weep", "o quiet leaves of night"]}


@pytest.fixture(scope="module")
def attributor():
    return fidelity.fit_attributor(VOICES)


def test_attribution_probability_is_renormalised_and_ties_count_against():
    classes = ["a", "b", "c", "d"]
    probs = [0.1, 0.4, 0.4, 0.1]
    assert fidelity.attribution(probs, classes, "b") == {"p": 0.4, "rank": 2, "n": 4}  # tie with c
    film = fidelity.attribution(probs, classes, "a", ["a", "d"])
    assert film == {"p": 0.5, "rank": 2, "n": 2}
    assert fidelity.attribution(probs, classes, "zzz")["rank"] is None
    assert fidelity_summary.rank_score(1, 4) == 1 and fidelity_summary.rank_score(4, 4) == 0 and fidelity_summary.rank_score(1, 1) is None


def test_copies_context_needs_a_whole_line_of_five_words():
    context = ["Where were you last night, John?", "I know."]
    assert fidelity_style.copies_context("where were you  last night, john?", context)  # equal once normalised
    assert fidelity_style.copies_context("Well. Where were you last night, John? Tell me.", context)  # holds it whole
    assert fidelity_style.copies_context("I know.", context)  # equal, however short
    assert not fidelity_style.copies_context("I know. Fine.", context)  # holds a short line: not a copy
    assert not fidelity_style.copies_context("", context)


def test_style_figures():
    s = fidelity_style.style("a b a b", ["x"], 2.0)
    assert s == {"words": 4, "length_ratio": 2.0, "distinct_1": 0.5, "distinct_2": round(2 / 3, 4),
                 "copies_context": False}
    assert fidelity_style.style("a", [], None)["length_ratio"] is None


def test_training_lines_leave_out_the_evaluated_references():
    samples = [_sample("1", "a", "Hello there."), _sample("2", "a", "Bye."), _sample("3", "b", "hello  THERE."),
               _sample("4", "b", "")]
    assert fidelity.training_lines(samples, held_out=["Hello there."]) == {"a": ["Bye."]}


def test_film_mates_join_records_that_share_a_conversation():
    s = [_sample("1", "a", "x", "ra"), _sample("2", "b", "y", "rb"), _sample("3", "c", "z", "rc"),
         _sample("4", "a", "w", "ra2"), _sample("5", "d", "v", "rd")]
    conversations = SimpleNamespace(members=[[s[0], s[1]], [s[2]], [s[3], s[4]], [s[4]]])
    films = fidelity.film_mates(s, conversations)
    assert films["b"] == {"a", "b"} and films["c"] == {"c"}
    assert films["a"] == {"a", "b", "d"}  # in two films: both casts


def test_baselines_prefer_the_same_film_and_are_deterministic():
    items = [Item("1", "u1", "a", [], [], "line of a"), Item("2", "u2", "b", [], [], "line of b"),
             Item("3", "u3", "c", [], [], "line of c"), Item("4", "u4", "d", [], [], "")]
    films = {"a": {"a", "b"}, "b": {"a", "b"}, "c": {"c"}}
    assert fidelity.pick_baselines(items, films) == 1  # c has no film-mate with a reference
    assert items[0].baseline == "line of b" and items[1].baseline == "line of a"
    assert items[2].baseline in ("line of a", "line of b") and items[3].baseline == ""
    again = [Item(i.sample_id, i.uid, i.character, [], [], i.reference) for i in items]
    fidelity.pick_baselines(again, films)
    assert [i.baseline for i in again] == [i.baseline for i in items]


def test_mean_ci_is_seeded_and_brackets_the_mean():
    assert fidelity_summary.mean_ci([2, 2, 2]) == {"mean": 2.0, "ci95": [2.0, 2.0], "n": 3}
    assert fidelity_summary.mean_ci([None]) == {"mean": None, "ci95": None, "n": 0}
    values = [0, 1] * 50
    ci = fidelity_summary.mean_ci(values)
    assert ci == fidelity_summary.mean_ci(values) and ci["ci95"][0] < 0.5 < ci["ci95"][1] and ci["ci95"][1] - ci["ci95"][0] < 0.3


def test_the_classifier_attributes_distinct_voices(attributor):
    held_out = {"pirate": "arr the rum matey", "robot": "beep unit affirmative", "poet": "o silver moonlight"}
    probs = list(attributor.probabilities(list(held_out.values()), chunk=2))
    for (character, _), row in zip(held_out.items(), probs):
        assert fidelity.attribution(row, attributor.classes, character)["rank"] == 1, character
    with pytest.raises(ValueError, match="two characters"):
        fidelity.fit_attributor({"pirate": VOICES["pirate"]})


def test_scoring_bad_items_is_notices_not_a_crash(attributor):
    films = {"pirate": {"pirate", "robot"}, "robot": {"pirate", "robot"}, "poet": {"poet"}}
    items = [Item("1", "u1", "pirate", ["ahoy there"], ["arr matey", "beep"], "rum arr"),
             Item("2", "u2", "robot", [], ["beep beep"], "affirmative unit"),
             Item("3", "u3", "poet", [], ["the moon"], ""),  # alone in its film
             Item("4", "u4", "stranger", [], ["who am i"], "nobody")]  # no training lines
    fidelity.pick_baselines(items, films)
    rows, notices = fidelity.score_items(attributor, films, items)
    assert [r["attributed"] for r in rows] == [True, True, True, False]
    assert rows[0]["generated"][0]["rank_all"] == 1 and rows[0]["generated"][1]["rank_all"] > 1
    assert rows[0]["reference"]["rank_film"] == 1 and rows[0]["baseline"]["from"] == "2"
    assert rows[2]["generated"][0]["rank_film"] is None and rows[2]["generated"][0]["rank_all"] is not None
    assert rows[3]["generated"][0]["rank_all"] is None and rows[3]["generated"][0]["words"] == 3 and len(notices) == 2
    assert "1 of 4 items (1 characters) have no training lines" in notices[0] and "only character" in notices[1]
    summary = fidelity_summary.aggregate(rows, items, attributor.describe(), notices)
    assert summary["generated"]["all"]["items"] == 3 and summary["generated"]["film"]["items"] == 2
    assert summary["generated"]["all"]["chance"]["top1"] == pytest.approx(1 / 3)
    assert summary["generated"]["style"]["lines"] == 4  # style needs no classifier
    assert summary["generated"]["style"]["empty"] == 0 and summary["baseline"]["style"]["lines"] == 3
    json.dumps(summary)  # JSON-able as written
    assert "fidelity among 3 characters" in fidelity_summary.format_summary(summary)

    # an empty answer (nothing extracted) is not attributed: at the classifier's prior it could
    # outscore the reference; the order of an item's continuations is kept
    items[1].generated[:] = [" ", "beep beep"]
    rows, notices = fidelity.score_items(attributor, films, items)
    assert rows[1]["generated"][0]["rank_all"] is None and rows[1]["generated"][0]["words"] == 0
    assert rows[1]["generated"][1]["rank_all"] == 1
    assert "1 generated lines are empty" in " ".join(notices)
    assert fidelity_summary.aggregate(rows, items, attributor.describe(), notices)["generated"]["all"]["items"] == 2


def test_setup_excludes_manifest_validation_and_needs_two_characters(tmp_path, monkeypatch):
    pool = [_sample(str(i), c, line) for i, (c, line) in
            enumerate((c, line) for c, lines in VOICES.items() for line in lines)]
    (tmp_path / "split_manifest.json").write_text(json.dumps({"validation": ["0", "1"]}))
    conversations = SimpleNamespace(members=[[s] for s in pool])
    training = fidelity.TrainingPool(pool, pool, conversations)
    fid = fidelity.setup(training, [], tmp_path)
    assert fid.excluded_validation == 2 and fid.training_lines == len(pool) - 2 and fid.fitted_now
    fidelity.save_cache(tmp_path, fid.attributor)
    assert not fidelity.setup(training, [], tmp_path).fitted_now  # read from the cache
    (tmp_path / fidelity.CACHE_NAME).write_bytes(b"damaged")
    damaged = []
    assert fidelity.setup(training, [], tmp_path, damaged.append).fitted_now  # refitted, no error
    assert len(damaged) == 1 and "is not a classifier cache this trainer wrote" in damaged[0]
    notices = []
    assert fidelity.setup(fidelity.TrainingPool(pool[:5], pool[:5], conversations), [], None, notices.append) is None
    assert len(notices) == 1 and "needs two" in notices[0]
    odd = [_sample(str(i), "ab"[i % 2], chr(0x4e00 + i)) for i in range(60)]  # no n-gram twice: no vocabulary
    assert fidelity.setup(fidelity.TrainingPool(odd, odd, conversations), [], None, notices.append) is None
    assert len(notices) == 2 and "no speaker classifier could be fitted" in notices[1]
    monkeypatch.setattr(fidelity, "MAX_FIT_SIZE", 3 * 12)  # 3 characters x 13 lines is over it: class centroids
    big = fidelity.setup(training, [], None, notices.append)
    assert big.attributor.kind == "centroid" and big.attributor.describe()["model"] == "centroid"
    assert len(notices) == 3 and "class-centroid classifier instead" in notices[2]


def test_the_centroid_classifier_attributes_distinct_voices(monkeypatch):
    """Above MAX_FIT_SIZE (the real corpus: 5,845 characters x 64,768 lines fit in 4.9 s of CPU):
    ranks by cosine similarity to each character's summed TF-IDF; rows are distributions."""
    monkeypatch.setattr(fidelity, "MAX_FIT_SIZE", 0)
    attributor = fidelity.fit_attributor(VOICES)
    held_out = {"pirate": "arr the rum matey", "robot": "beep unit affirmative", "poet": "o silver moonlight"}
    rows = list(attributor.probabilities(list(held_out.values())))
    assert attributor.kind == "centroid" and all(abs(sum(r) - 1) < 1e-9 for r in rows)
    for character, row in zip(held_out, rows):
        assert fidelity.attribution(row, attributor.classes, character)["rank"] == 1, character


def _calibration_tool():
    spec = importlib.util.spec_from_file_location("fidelity_calibration", REPO / "tools" / "fidelity_calibration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_reference_lines_score_above_other_characters_lines():
    """The shipped real dialogue (Chit-Chat, 50 characters): pooled over held-out validation
    splits of five seeds, the reference lines rank their own character clearly higher than another
    character's lines rank it (docs/PREDICTION.md reports the figures; one small split alone may
    not separate)."""
    tool = _calibration_tool()
    samples = load_corpus(REPO / "data" / "sample_chameleons.json").samples
    rows, n_all = [], None
    for seed in range(5):
        seed_rows, summary = tool.calibrate(samples, seed)
        rows += seed_rows
        n_all = summary["classifier"]["characters"]
        assert summary["reference"]["all"]["score"]["mean"] >= summary["baseline"]["all"]["score"]["mean"], seed
    margin = tool.pooled_margin(rows, n_all)
    assert margin["score"]["ci95"][0] > 0.05 and tool.verdict(margin, 0.05) == "separates"


def test_validation_subset_is_fixed_by_content_and_keeps_record_fields(tmp_path):
    spec = importlib.util.spec_from_file_location("validation_subset", REPO / "tools" / "validation_subset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    item = lambda text: {"context": [{"source": "Partner", "content": f"say {text}"}], "continuation": text}  # noqa: E731
    records = [{"user_hash": h, "user": {"profile": {"name": h}}, "extra": h,
                "task": {"task_behavior_collections": [{"data": [item(f"{h}{i}") for i in range(3)]},
                                                       {"data": [item(f"{h}x")]}]}} for h in ("a", "b")]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    run = tmp_path / "run"
    run.mkdir()
    val = ["r0.c0.i1", "r1.c0.i2", "r1.c1.i0", "r0.c0.i0"]
    (run / "split_manifest.json").write_text(json.dumps({"validation": val}))
    out = tmp_path / "subset.json"
    assert tool.main([str(run), "--data_file", str(data), "--n", "3", "--out", str(out)]) == 0
    subset = json.loads(out.read_text())
    kept = [it["continuation"] for r in subset for c in r["task"]["task_behavior_collections"] for it in c["data"]]
    every = {"r0.c0.i1": "a1", "r1.c0.i2": "b2", "r1.c1.i0": "bx", "r0.c0.i0": "a0"}
    assert len(kept) == 3 and set(kept) <= set(every.values()) and all(r["extra"] == r["user_hash"] for r in subset)
    (run / "split_manifest.json").write_text(json.dumps({"validation": list(reversed(val))}))
    again = tmp_path / "again.json"
    tool.main([str(run), "--data_file", str(data), "--n", "3", "--out", str(again)])
    assert json.loads(again.read_text()) == subset  # the order of the ids does not matter
    (run / "split_manifest.json").write_text(json.dumps({"validation": ["r7.c0.i0"]}))
    with pytest.raises(tool.UserError, match="r7.c0.i0 is not an item"):
        tool.main([str(run), "--data_file", str(data), "--out", str(tmp_path / "x.json")])


def test_prediction_reads_the_training_file_once_and_a_missing_one_is_a_notice(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("predict_script", REPO / "predict_Chameleons.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    notices = []
    dist = SimpleNamespace(is_main=True, warn=notices.append)
    missing = str(tmp_path / "missing.json")
    history = SimpleNamespace(ablation=SimpleNamespace(use_history=True), training_file=missing)
    plain = SimpleNamespace(ablation=SimpleNamespace(use_history=False), training_file=missing)
    off, on = SimpleNamespace(fidelity="off"), SimpleNamespace(fidelity="on")
    assert script.training_data(off, plain, None, dist) is None and notices == []
    assert script.training_data(on, plain, None, dist) is None
    assert len(notices) == 1 and "missing.json not found" in notices[0] and not list(tmp_path.iterdir())
    assert script.fidelity_setup(on, None, SimpleNamespace(samples=[]), [tmp_path], dist) is None

    reads = []
    monkeypatch.setattr(script.prediction, "training_pool", lambda *a: reads.append(a) or ([], []))
    training = script.training_data(on, history, None, dist)
    assert len(reads) == 1 and training == ([], [])  # one read serves the history index and the classifier

    pool = [_sample(str(i), c, line, context=["hello"]) for i, (c, line) in
            enumerate((c, line) for c, lines in VOICES.items() for line in lines)]
    with_context = SimpleNamespace(fidelity="on", fidelity_context="on")
    monkeypatch.setattr(script, "Conversations", lambda samples: SimpleNamespace(members=[[s] for s in samples]))
    fid = script.fidelity_setup(with_context, (pool, pool), SimpleNamespace(samples=[]), [tmp_path], dist)
    assert fid.attributor.context  # --fidelity_context on reaches the classifier


def _row(sid, rank_all, p_all, attributed=True):
    line = {"p_film": None, "rank_film": None, "p_all": p_all, "rank_all": rank_all}
    return {"sample_id": sid, "attributed": attributed, "film_characters": 1, "generated": [line],
            "reference": None, "baseline": None}


def test_versus_pairs_two_outputs_by_item_for_the_untrained_baseline_line(tmp_path):
    trained = [_row("a", 1, 0.6), _row("b", 2, 0.3), _row("c", 1, 0.9)]
    untrained = [_row("a", 3, 0.1), _row("b", 2, 0.3), _row("d", 1, 0.8)]  # c and d are in one output only
    result = fidelity_summary.versus(trained, untrained, 3)
    assert result["items"] == 2
    base = result["baseline"]["all"]
    assert (base["items"], base["rank"]["mean"], base["top1"]["mean"], base["score"]["mean"]) == (2, 2.5, 0.0, 0.25)
    assert result["margin"]["score"]["mean"] == 0.5 and result["margin"]["p"]["mean"] == 0.25  # (1 - 0 + 0) / 2
    line = fidelity_summary.format_versus(result)
    assert line.startswith("untrained baseline: score 0.250 top-1 0.000 rank 2.5 (2 items); margin over it +0.500")

    spec = importlib.util.spec_from_file_location("fidelity_versus", REPO / "tools" / "fidelity_versus.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    summary = {"classifier": {"characters": 3, "key": "k1"}}
    (tmp_path / "t.json.fidelity.json").write_text(json.dumps({"summary": summary, "items": trained}))
    (tmp_path / "u.json.fidelity.json").write_text(json.dumps({"summary": summary, "items": untrained}))
    assert tool.main([str(tmp_path / "t.json"), str(tmp_path / "u.json")]) == 0
    other = {"summary": {"classifier": {"characters": 3, "key": "k2"}}, "items": untrained}
    (tmp_path / "o.json.fidelity.json").write_text(json.dumps(other))
    with pytest.raises(tool.UserError, match="another speaker classifier"):
        tool.main([str(tmp_path / "t.json"), str(tmp_path / "o.json")])
    with pytest.raises(tool.UserError, match="not a readable fidelity file"):
        tool.main([str(tmp_path / "t.json"), str(tmp_path / "missing.json")])


def test_the_context_line_is_an_optional_classifier_feature():
    """Two characters who say the same things, told apart only by what they answer: with the
    context feature the answering character ranks first; the style figures and the cache key
    keep the line and the setting apart."""
    says = ["yes indeed", "of course", "very well", "as you wish", "right away"]
    topics = {"cook": "kitchen soup pepper", "pilot": "runway altitude wind"}
    samples = [_sample(f"{c}{i}", c, line, context=[f"{topic} question {i}"]) for c, topic in topics.items()
               for i, line in enumerate(says)]
    training = fidelity.TrainingPool(samples, samples, SimpleNamespace(members=[[s] for s in samples]))
    plain, ctx = fidelity.setup(training, []), fidelity.setup(training, [], context=True)
    assert not plain.attributor.context and ctx.attributor.describe()["context"] is True
    assert ctx.attributor.mean_words == plain.attributor.mean_words and ctx.attributor.key != plain.attributor.key
    item = [Item("q", "uq", "pilot", ["check the runway wind"], ["of course"], "")]
    with_ctx = fidelity.score_items(ctx.attributor, ctx.films, item)[0][0]["generated"][0]
    without = fidelity.score_items(plain.attributor, plain.films, item)[0][0]["generated"][0]
    assert with_ctx["rank_all"] == 1 and with_ctx["p_all"] > 0.9  # the line alone: 0.55 (seen when it was dropped)
    cook = [Item("q", "uq", "cook", ["check the runway wind"], ["of course"], "")]
    assert fidelity.score_items(ctx.attributor, ctx.films, cook)[0][0]["generated"][0]["rank_all"] == 2
    assert with_ctx["words"] == without["words"] == 2


class _Planted:
    """What an attacker plants as fidelity_attributor.pkl: unpickling it calls `os.system`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("centroid", [False, True])
def test_a_planted_pickle_in_the_model_folder_runs_nothing(tmp_path, monkeypatch, centroid):
    """The cache is signed with this user's key and only a file that verifies is unpickled (with an
    unpickler that builds only a classifier's own types): a planted pickle naming os.system, or a
    cache signed by another user's key, is one notice and a refit and runs nothing, while the
    cache training writes for either classifier kind reads back."""
    import pickle

    from chameleons.evaluate import fidelity_cache

    monkeypatch.setenv("CHAMELEONS_FIDELITY_KEY", str(tmp_path / "mine.key"))
    pool = [_sample(str(i), c, line) for i, (c, line) in
            enumerate((c, line) for c, lines in VOICES.items() for line in lines)]
    training = fidelity.TrainingPool(pool, pool, SimpleNamespace(members=[[s] for s in pool]))
    if centroid:
        monkeypatch.setattr(fidelity, "MAX_FIT_SIZE", 3 * 12)
    fitted = fidelity.setup(training, [], tmp_path)
    fidelity.save_cache(tmp_path, fitted.attributor)
    assert not fidelity.setup(training, [], tmp_path).fitted_now
    marker = tmp_path / "ran"
    planted = pickle.dumps(_Planted(marker))
    assert pickle.loads(pickle.dumps(_Planted(tmp_path / "control"))) == 0  # the control: plain pickle runs it
    assert (tmp_path / "control").exists()
    for content in (planted, fidelity_cache.MAGIC + b"\0" * 32 + planted):
        (tmp_path / fidelity.CACHE_NAME).write_bytes(content)
        notices = []
        assert fidelity.setup(training, [], tmp_path, notices.append).fitted_now
        assert not marker.exists()
        assert "classifier cache" in notices[-1] and ("not a classifier cache" in notices[-1] or "not signed" in notices[-1])
    fidelity.save_cache(tmp_path, fitted.attributor)  # signed with this user's key: reads back
    monkeypatch.setenv("CHAMELEONS_FIDELITY_KEY", str(tmp_path / "someone_else.key"))
    notices = []
    assert fidelity.setup(training, [], tmp_path, notices.append).fitted_now  # another user's key: refit
    assert "not signed with this user's key" in notices[-1]


def test_memorisation_counts_lines_the_character_already_said_in_training():
    """A generated line that is one of the character's training lines, or whose word 4-grams the
    character mostly said in training, repeats it; a new line or another character's line does
    not; a line under 4 words has no overlap figure and repeats only by an exact long match."""
    from chameleons.evaluate.fidelity_style import TrainingLines

    lines = TrainingLines({"ann": ["I told you the car would never make it past the bridge.", "Sure."],
                           "bob": ["The weather is lovely down by the harbour today."]})
    assert lines.repeats("ann", "i told you the CAR would never make it past the bridge")
    assert lines.overlap("ann", "I told you the car would never make it past the river.") == pytest.approx(8 / 9)
    assert lines.repeats("ann", "I told you the car would never make it past the river.")  # one word changed
    assert lines.overlap("ann", "I told you the car was fine all along.") == pytest.approx(2 / 6)
    assert not lines.repeats("ann", "I told you the car was fine all along.")
    assert not lines.repeats("ann", "The weather is lovely down by the harbour today.")  # bob's, not hers
    assert lines.overlap("ann", "Sure.") is None and not lines.repeats("ann", "Sure.")
    items = [Item("1", "u1", "ann", ["Hi."], ["I told you the car would never make it past the bridge."], "Fine."),
             Item("2", "u2", "ann", ["Hi."], ["Something entirely new is happening over here now."], "Fine.")]
    rows = [{"attributed": False, "generated": [None], "reference": None, "baseline": None}] * 2
    style = fidelity_summary.style_summary(rows, items, "generated", lines)
    assert style["repeats_training_line"]["mean"] == 0.5 and style["training_4gram_overlap"]["n"] == 2


def test_scene_candidates_and_same_scene_baselines(attributor):
    """Who in this scene said it: the context's speaker names map to characters of the item's film
    (case folded; a name matching no one is counted), the candidates are the intended character,
    the scene's speakers and the film's main cast (at least 3), and the baseline is the last
    context line of another known speaker. Distinct voices rank their own lines first among them."""
    from chameleons.evaluate.fidelity_scene import Scenes

    samples = [_sample(f"{c}{k}", c, line) for c, lines in VOICES.items() for k, line in enumerate(lines)]
    films = {c: frozenset(VOICES) for c in VOICES}
    scenes = Scenes(samples, films, {c: len(v) for c, v in VOICES.items()})
    assert scenes.speakers("pirate", ["Robot", "NOBODY", "POET"]) == ["poet", "robot"]
    assert scenes.unmatched["NOBODY"] == 1
    assert scenes.candidates("pirate", ["ROBOT"], attributor.classes) == ["pirate", "poet", "robot"]  # + main cast
    items = [Item("1", "u1", "pirate", ["processing beep beep unit", "o quiet moonlight leaves"], ["arr rum matey"],
                  "the sea be calling arr matey", sources=("ROBOT", "POET")),
             Item("2", "u2", "robot", ["arr hoist the rum"], ["beep unit"], "affirmative unit processing beep",
                  sources=("PIRATE",))]
    fidelity.pick_baselines(items, films, scenes, attributor.classes)
    assert (items[0].baseline, items[0].baseline_from) == ("o quiet moonlight leaves", "scene:poet,robot")
    assert items[0].baselines == ("o quiet moonlight leaves", "processing beep beep unit")  # every other speaker's
    assert items[1].baseline == "arr hoist the rum" and items[1].baselines == ("arr hoist the rum",)
    rows, _ = fidelity.score_items(attributor, films, items, scenes)
    assert all(r["reference"]["n_scene"] == 3 and r["reference"]["rank_scene"] == 1 for r in rows)
    # the item's baseline figures are the mean over its lines: pirate ranks last (3) for both lines
    assert rows[0]["baseline"]["lines"] == 2 and rows[0]["baseline"]["rank_scene"] == 3
    assert rows[0]["baseline"]["top1_scene"] == 0.0
    summary = fidelity_summary.aggregate(rows, items, attributor.describe())
    assert summary["reference"]["scene"]["items"] == 2 and summary["reference"]["scene"]["chance"]["top1"] == pytest.approx(1 / 3)
    assert summary["margin_scene"]["reference_minus_baseline"]["score"]["mean"] > 0


def test_at_scale_the_classifier_keeps_characters_with_enough_lines(monkeypatch):
    """Above MAX_FIT_SIZE the characters with at least MIN_CLASS_LINES lines make the classifier
    (one notice), so one-vs-rest SGD still fits instead of the centroids; below it, or when fewer
    than two characters have that many lines, nothing is dropped."""
    monkeypatch.setattr(fidelity, "MIN_CLASS_LINES", 3)
    lines = {"a": ["x"] * 5, "b": ["y"] * 4, "c": ["z"] * 2}
    notices = []
    monkeypatch.setattr(fidelity, "MAX_FIT_SIZE", 10)
    assert set(fidelity.classifier_lines(lines, notices.append)) == {"a", "b"}
    assert len(notices) == 1 and "1 of 3 characters have fewer than 3 training lines" in notices[0]
    assert fidelity.classifier_lines({"a": ["x"] * 5, "c": ["z"] * 2}) == {"a": ["x"] * 5, "c": ["z"] * 2}
    monkeypatch.setattr(fidelity, "MAX_FIT_SIZE", 1000)
    assert fidelity.classifier_lines(lines) == lines


def test_the_summary_says_what_the_classifier_can_see():
    """Top-1 of the held-out references in the scene and among all with chance, macro-F1 over
    characters with enough references (from the top class), and the smallest detectable
    difference from the spread of reference - baseline."""
    def ref(rank, top, n=4):
        return {"rank_scene": rank, "n_scene": n, "rank_all": rank, "top_all": top}

    rows = [{"attributed": True, "character": "a", "reference": ref(1, "a"), "baseline": ref(3, "a")}] * 5 + \
           [{"attributed": True, "character": "b", "reference": ref(2, "a"), "baseline": ref(2, "a")}] * 5
    acc = fidelity_summary.classifier_accuracy(rows)
    assert acc["references"] == 10 and acc["top1_scene"] == 0.5 and acc["top1_scene_chance"] == 0.25
    # a baseline averaged over several scene lines is narrower than one line: the spread of a
    # comparison of single lines comes from the first line's rank
    averaged = [{**r, "baseline": {**r["baseline"], "rank_scene": 2.5, "rank_scene_first": r["baseline"]["rank_scene"]}}
                for r in rows]
    assert fidelity_summary.classifier_accuracy(averaged)["detectable_difference"] == acc["detectable_difference"]
    assert acc["macro_f1"] == pytest.approx((2 * 5 / (5 + 10) + 0.0) / 2, abs=1e-6) and acc["macro_f1_characters"] == 2
    spread = statistics.stdev([2 / 3] * 5 + [0.0] * 5)
    assert acc["detectable_difference"] == pytest.approx(2.8 * spread / math.sqrt(200), abs=1e-4)


def test_context_speakers_matching_no_character_are_reported():
    pool = [_sample(str(i), c, line) for i, (c, line) in
            enumerate((c, line) for c, lines in VOICES.items() for line in lines)]
    fid = fidelity.setup(fidelity.TrainingPool(pool, pool, SimpleNamespace(members=[pool])), [])
    items = [Item("1", "u1", "pirate", ["beep unit", "who goes there"], ["arr"], "rum arr matey",
                  sources=("ROBOT", "NOBODY"))]
    _, summary = fidelity.evaluate_items(fid, items)
    (notice,) = [n for n in summary["notices"] if "match no character" in n]
    assert "1 context speaker names" in notice and "NOBODY (1)" in notice


def test_scene_ranks_divide_out_the_prior_only_for_posteriors():
    """SGD's probabilities are posteriors: the scene rank divides out each character's share of
    the training lines. The centroids' are a softmax of similarities with no prior in them: the
    same division would rank a series' main cast last (a corpus shipped twice, which crosses into
    centroids, fell from 0.105 to 0.017), so their ranks use the similarities as they are."""
    from types import SimpleNamespace

    from chameleons.evaluate.fidelity_scene import Scenes

    class Fixed:  # the line sounds most like "lead", who also says most lines
        def predict_proba(self, lines):
            return __import__("numpy").array([[0.5, 0.3, 0.2]] * len(lines))

    samples = [_sample(f"{c}{k}", c, "line") for c in ("lead", "mate", "extra") for k in range(2)]
    films = {c: frozenset({"lead", "mate", "extra"}) for c in ("lead", "mate", "extra")}
    scenes = Scenes(samples, films, {"lead": 900, "mate": 90, "extra": 10})
    item = Item("1", "u1", "lead", ["hi"], ["a line"], "")
    ranks = {}
    for kind in ("sgd", "centroid"):
        att = fidelity.Attributor(key="k", classes=["lead", "mate", "extra"], pipeline=Fixed(),
                                  mean_words={"lead": 2.0}, kind=kind)
        rows, _ = fidelity.score_items(att, films, [item], scenes)
        ranks[kind] = rows[0]["generated"][0]["rank_scene"]
    assert ranks == {"sgd": 3, "centroid": 1}  # 0.5/0.9 < 0.3/0.09 < 0.2/0.01; as they are, lead first


def test_calibration_of_a_one_character_corpus_is_a_notice_not_a_crash(tmp_path, capsys):
    """One character: no classifier can be fitted; the tool says so per split and exits 0 (it
    raised an AttributeError)."""
    from conftest import simple_corpus

    path = tmp_path / "one.json"
    path.write_text(json.dumps(simple_corpus({"solo": 30})))
    assert _calibration_tool().main([str(path), "--val_seeds", "0"]) == 0
    assert "a speaker classifier needs two: no fidelity figures" in capsys.readouterr().out
