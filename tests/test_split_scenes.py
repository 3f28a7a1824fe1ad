"""The conversation split on film-shaped data (chameleons/corpus/splitting.py, `--val_leak_check`).

Corpora come from `tools/make_synthetic_corpus.py --scenes`: films of shared scenes, every line
of a recorded character an item of its record, ~10% generic lines ("Yeah.", "What?"). The
generator also reports the ground truth the format lacks, the id of every spoken line, so a
leak is checked by place (the same line at the same place of the same scene), independently
of how the split recognises places.

Promises checked: the split costs at most 1% of the sampled set and gives val_ratio within one
percentage point at N = all, three at every other N of the plan's guide table (text screening does not, on the same
corpus); no validation utterance reaches a training prompt, history line or target in any
epoch; the split is the same for every file order, world size and sample seed (with one
val_seed); the plan's guide table uses the same rule as the real split.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleons.corpus.conversations import COMMON_RECORDS, Conversations
from chameleons.corpus.data import extract_samples, load_corpus
from chameleons.corpus.leak_checks import TEXT, named
from chameleons.corpus.splitting import SplitSettings, split_train_val
from chameleons.text.prompts import Ablation, HistoryIndex, PromptBuilder
from chameleons.train.planning import GUIDE_SIZES, format_plan, guide_splits
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_chameleons.json"




msc, synth = load_tool("make_synthetic_corpus"), load_tool("synthetic_scenes")

ALL_ON = Ablation("profile_and_history_and_context", True, True, True)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scene_samples(seed, scale, generic_share=synth.GENERIC_SHARE):
    """Samples of a scene corpus, and sample_id -> the ids of the lines it shows (context, target)."""
    places = {}
    records = synth.make_scene_corpus(seed, *msc._counts(scale), generic_share=generic_share, places=places)
    samples = extract_samples(records).samples
    return samples, {s.sample_id: _places_of(places, s) for s in samples}, records


def _places_of(places, s):
    r, _, i = (int(p[1:]) for p in s.sample_id.split("."))
    return places[(r, i)]


def ids(samples):
    return {s.sample_id for s in samples}


def leaked_places(split, place_of, epochs=range(1)):
    """Places of validation lines (context or target) that a training-eligible sample shows."""
    val = {p for s in split.val for p in place_of[s.sample_id]}
    shown = [s for e in epochs for s in split.epoch_train(e)] + split.pool_samples()
    return {p for s in shown for p in place_of[s.sample_id] if p in val}


def _is_common_line(samples, place_of, place) -> bool:
    """Said in more than COMMON_RECORDS records (a "Yeah."), found by its text."""
    text = next(line for s in samples for p, line in zip(place_of[s.sample_id], [c for _, c in s.context] + [s.target])
                if p == place)
    return len({s.record_index for s in samples if text == s.target or text in (c for _, c in s.context)}) \
        > COMMON_RECORDS


# --------------------------------------------------------------------------- full-size corpus

@pytest.fixture(scope="module")
def full_scenes():
    samples, place_of, _ = scene_samples(0, 1.0)
    return samples, place_of, Conversations(samples)


@pytest.mark.parametrize("n", GUIDE_SIZES)
def test_full_size_scene_corpus_loses_at_most_one_percent(full_scenes, n):
    """Done-when of issue 13, at every N of the guide table: loss <= 1% of the sampled set,
    validation within +-1 percentage point of val_ratio, and no validation line by place in
    any training sample or the pool the history lines come from. Validation is chosen once over
    the corpus (within one point there); each smaller N gets its sample's share of it, within
    the dry run's 3-point guard."""
    samples, place_of, index = full_scenes
    assert len(samples) == 71964
    assert index.split_up == 0 and index.largest <= index.cap
    split = split_train_val(samples, SplitSettings(n, 42, 0.1), index=index)
    st_ = split.stats
    assert st_.lost_to_split <= 0.01 * st_.sampled, st_
    assert abs(st_.validation / st_.sampled - 0.1) <= (0.01 if n is None else 0.03), st_
    assert st_.train + st_.validation + st_.lost_to_split == st_.sampled
    assert st_.train == len(split.train) and st_.validation == len(split.val)
    assert not leaked_places(split, place_of)


def test_text_screening_loses_more_on_the_same_corpus(full_scenes):
    """The control: whole-text matching fails the 1% bound on this corpus (generic lines)."""
    samples, _, _ = full_scenes
    split = split_train_val(samples, SplitSettings(None, 42, 0.1, leak_check=TEXT))
    assert split.stats.lost_to_split > 0.01 * split.stats.sampled


def test_generic_lines_do_not_join_scenes(full_scenes):
    """"Yeah." is said in hundreds of scenes; a conversation is one scene's worth, not all of them."""
    samples, _, index = full_scenes
    yeah = [s for s in samples if s.target == "Yeah."]
    assert len(yeah) > 500
    assert len({index.label[s.sample_id] for s in yeah}) > 0.5 * len(yeah)
    assert index.largest < 0.05 * len(samples)


# --------------------------------------------------------------------------- no leak by place

@SETTINGS
@given(st.integers(0, 10**6), st.sampled_from([0.003, 0.006, 0.01]), st.floats(0.0, 0.15),
       st.sampled_from([None, 1, 2, 4]), st.integers(0, 1000), st.integers(0, 1000),
       st.sampled_from(["user_hash", "record"]), st.floats(0.05, 0.3))
def test_no_validation_utterance_reaches_training(corpus_seed, scale, generic, n, seed, val_seed, group_by, ratio):
    """In no epoch (resampled) does a training prompt, history line or target show a line of a
    validation sample at its place; history lines come only from the training pool."""
    samples, place_of, _ = scene_samples(corpus_seed, scale, generic)
    split = split_train_val(samples, SplitSettings(n, seed, ratio, val_seed, group_by))
    leaked = leaked_places(split, place_of, range(4))
    if split.stats.grouping.huge_conversations_split:  # cut only between common lines: see the test below
        leaked = {p for p in leaked if not _is_common_line(samples, place_of, p)}
    assert not leaked
    # the history lines a prompt shows are targets of the pool (so they are covered above)
    builder = PromptBuilder(ALL_ON, "simple", HistoryIndex(split.pool_samples()))
    pool_targets = {}
    for s in split.pool_samples():
        pool_targets.setdefault(s.user_hash, set()).add(s.target)
    for e in range(2):
        for s in split.epoch_train(e):
            assert set(builder.history_lines(s)) <= {t[:200] for t in pool_targets[s.user_hash]}


def test_a_huge_conversation_is_split_at_scene_boundaries():
    """With half of all lines generic, exchanges such as "Yeah." / "Okay." / "What?" chain
    scenes into one component; it is divided at scene boundaries (reported), validation stays
    on target, and a line shared across a cut is at worst a common one, never a scene's own."""
    samples, place_of, records = scene_samples(5, 0.05, generic_share=0.5)
    index = Conversations(samples)
    whole = Conversations(samples, huge_share=1.0)  # nothing divided
    assert whole.largest > 2 * index.cap and index.split_up >= 1
    assert index.largest < whole.largest / 2 and len(index) > len(whole)
    text_of = {}
    for s in samples:
        for p, line in zip(place_of[s.sample_id], [c for _, c in s.context] + [s.target]):
            text_of[p] = line
    records_of = {}
    for s in samples:
        for line in {c for _, c in s.context} | {s.target}:
            records_of.setdefault(line, set()).add(s.record_index)
    for n in (None, 2):
        split = split_train_val(samples, SplitSettings(n, 3, 0.1), index=index)
        assert split.stats.grouping.huge_conversations_split >= 1
        assert abs(split.stats.validation_share - 0.1) <= (0.01 if n is None else 0.03)
        assert split.stats.lost_to_split <= 0.01 * split.stats.sampled
        for p in leaked_places(split, place_of):
            assert len(records_of[text_of[p]]) > COMMON_RECORDS, text_of[p]


def test_a_window_that_cut_off_the_line_before(build):
    """Bob's item starts its window at Ann's line (no line before it), Ann's item ends on it (no
    line after it): they share no neighbour, but the line has one place, so it is matched."""
    ann = build.record("A", [build.item([("Bob", "So you came back.")], "I never left, Bob."),
                             build.item([("Bob", "Coffee?")], "Black.")], name="Ann")
    bob = build.record("B", [build.item([("Ann", "I never left, Bob.")], "Then where were you?"),
                             build.item([("Ann", "Hm.")], "Fine.")], name="Bob")
    samples = extract_samples([ann, bob]).samples
    index = Conversations(samples)
    by_target = {s.target: index.label[s.sample_id] for s in samples}
    assert by_target["I never left, Bob."] == by_target["Then where were you?"]
    assert len(index) == 3


@pytest.mark.parametrize("check", ["conversation", "text"])
def test_a_generic_line_in_two_scenes_is_two_places(build, check):
    """Ann says "Yeah." in two unrelated scenes (after different lines), and the later items
    quote it. With the conversation split the scenes are two conversations, and validation
    of one costs the other nothing; text screening throws the other scene away."""
    def scene(tag):
        return [build.item([("Bob", f"Is {tag} ready?")], "Yeah."),
                build.item([("Bob", f"Is {tag} ready?"), ("Ann", "Yeah."), ("Bob", f"Then bring {tag}.")],
                           f"Bringing {tag} now."),
                build.item([("Bob", f"Then bring {tag}."), ("Ann", f"Bringing {tag} now."), ("Bob", "Good.")],
                           f"{tag} is heavy.")]
    samples = extract_samples([build.record("A", scene("the car") + scene("the dog"), name="Ann"),
                               build.record("C", [build.item([("Zed", f"z{j}")], f"Cy {j}") for j in range(6)],
                                            name="Cy")]).samples
    index = Conversations(samples)
    if check == "conversation":
        labels = {s.target: index.label[s.sample_id] for s in samples}
        assert labels["Bringing the car now."] != labels["Bringing the dog now."]
        assert len(index) == 2 + 6
    for seed in range(30):
        split = split_train_val(samples, SplitSettings(None, seed, 0.25, leak_check=named(check)))
        if "Yeah." in [s.target for s in split.val]:
            break
    else:
        pytest.fail("no seed puts a 'Yeah.' in validation")
    trained = {s.target for s in split.train}
    other_scene = {"Bringing the car now.", "Bringing the dog now."} - {s.target for s in split.val}
    if check == "conversation":
        assert other_scene <= trained and split.stats.lost_to_split == 0
    else:
        assert not other_scene & trained and split.stats.lost_to_split > 0


# --------------------------------------------------------------------------- the same split everywhere

def _outcome(split, uid_of=lambda s: s.uid):
    return (sorted(uid_of(s) for s in split.val),
            [sorted(uid_of(s) for s in split.epoch_train(e)) for e in range(3)],
            split.stats)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.sampled_from([None, 1, 3]), st.integers(0, 100), st.integers(2, 8),
       st.randoms(use_true_random=False))
def test_split_identical_across_file_orders_and_world_sizes(corpus_seed, n, seed, world_size, rnd):
    """Records shuffled (sample ids change, content does not), and each of `world_size` ranks
    computing the split from its own order of the samples: the same split by content."""
    _, _, records = scene_samples(corpus_seed, 0.004)
    base = split_train_val(extract_samples(records).samples, SplitSettings(n, seed, 0.1))
    shuffled = list(records)
    rnd.shuffle(shuffled)
    samples = extract_samples(shuffled).samples
    for _ in range(world_size):
        mine = list(samples)
        rnd.shuffle(mine)
        assert _outcome(split_train_val(mine, SplitSettings(n, seed, 0.1))) == _outcome(base)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.sampled_from([None, 1, 2, 5]), st.lists(st.integers(0, 10**4), min_size=2,
                                                                          max_size=4), st.integers(0, 100))
def test_one_validation_set_for_all_sample_seeds(corpus_seed, n, sample_seeds, val_seed):
    samples, place_of, _ = scene_samples(corpus_seed, 0.006)
    index = Conversations(samples)
    splits = [split_train_val(samples, SplitSettings(n, s, 0.1, val_seed), index=index) for s in sample_seeds]
    assert len({frozenset(ids(sp.val)) for sp in splits}) == 1
    for sp in splits:
        assert not leaked_places(sp, place_of, range(2))


def test_same_split_under_other_hash_seeds():
    """No dependence on Python's per-process string hashing (each rank is a process), also when
    a huge conversation is divided."""
    code = ("import sys; sys.path[:0] = [%r, %r];"
            "from make_synthetic_corpus import _counts; from synthetic_scenes import make_scene_corpus;"
            "from chameleons.corpus.data import extract_samples; from chameleons.corpus.splitting import SplitSettings, split_train_val;"
            "s = extract_samples(make_scene_corpus(1, *_counts(0.03), generic_share=0.5)).samples;"
            "x = split_train_val(s, SplitSettings(2, 7, 0.1));"
            "print(x.stats.grouping.huge_conversations_split, sorted(v.uid for v in x.val), sorted(v.uid for v in x.train))"
            ) % (str(REPO), str(REPO / "tools"))
    outs = set()
    for hs in ("0", "1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    assert not outs.pop().startswith("0 ")  # the case with a divided conversation was exercised


# --------------------------------------------------------------------------- the plan uses the same rule

@pytest.mark.parametrize("check", ["conversation", "text"])
@pytest.mark.parametrize("run_n", [None, 2])
def test_guide_table_uses_the_real_split(check, run_n):
    """Issue 9 item 17: on the shipped sample the "all" row promised more training samples than
    the split gave. Every row is now the split that N would really get."""
    corpus = load_corpus(SAMPLE)
    split = split_train_val(corpus.samples, SplitSettings(run_n, 42, 0.1, None, "user_hash", named(check)))
    rows = guide_splits(corpus, split)
    assert list(rows) == list(GUIDE_SIZES)
    for n, stats in rows.items():
        real = split_train_val(corpus.samples, SplitSettings(n, 42, 0.1, None, "user_hash", named(check))).stats
        assert stats == real, n
        assert stats.leak_check == check
    assert rows[run_n] is split.stats


def test_plan_reports_the_conversation_split(tmp_path, build, run_trainer):
    """The dry run's printout and plan.json name the mode and the conversation figures."""
    import json

    samples = build.scene_corpus(n_chars=6, scenes=4, lines_per_scene=8)
    data = build.write_data(tmp_path / "d.json", samples)
    cfg = build.tiny_config(tmp_path, train_file=data)
    proc = run_trainer(["--config", cfg, "--dry_run", "--output_dir", tmp_path / "o"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    text, sp = proc.stdout, plan["split"]
    assert sp["leak_check"] == "conversation" and sp["lost_to_split"] == 0
    assert f"{sp['conversations']:,} conversations" in text and "leak check conversation" in text
    assert sp["validation_conversations"] >= 1 and sp["validation_share"] == round(sp["validation"] / sp["sampled"], 4)
    assert plan["guide_table"][-1]["train_samples"] == sp["train"]
    for row in plan["guide_table"]:  # each N's share of the one validation set is printed
        shown = f"{row['validation_samples']:>11,} {row['validation_share']:>7.1%} {row['train_samples']:>9,}"
        assert shown in text
    assert f"{sp['near_duplicate_scenes']:,} scenes of {sp['near_duplicate_records']:,} records joined" in text
    assert f"({sp['whole_validation']:,} samples, one set for every N)" in text
    text_split = split_train_val(extract_samples(samples).samples, SplitSettings(None, 42, 0.1, leak_check=TEXT))
    assert "quote a validation line" in format_plan({**plan, "split": {**plan["split"], **text_split.stats.as_dict()}})


def test_bad_leak_check_is_one_error_line(capsys):
    from chameleons.run.cli import parse_train_args

    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--config", "c.json", "--output_dir", "o", "--val_leak_check", "words"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "val_leak_check" in err[0]
