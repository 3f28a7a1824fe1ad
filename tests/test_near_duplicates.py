"""Near-duplicate joins (chameleons/corpus/near_duplicates.py) are verified on the lines: what joins,
what never does, and what the grouping says about a conversation that grew too big."""

from conftest import item, record

from chameleons.corpus.conversations import Conversations
from chameleons.corpus.data import extract_samples
from chameleons.corpus.near_duplicates import similar

SCENE = ["I told you the car would never make it past the bridge tonight.",
         "You always say that and then we end up walking home in the rain.",
         "This time I packed two umbrellas and a thermos of hot coffee.",
         "Then why are we still standing here arguing about the old car?",
         "Because the tow truck driver promised to call me back by nine."]


def _scene_record(user_hash, lines, other="B"):
    """A record of `user_hash` answering `other` through `lines` (its items: every second line)."""
    turns = [(other if k % 2 == 0 else user_hash, text) for k, text in enumerate(lines)]
    return record(user_hash, [item(turns[:k], turns[k][1]) for k in range(1, len(turns), 2)], name=user_hash)


def _edited(text):
    words = text.split()
    return " ".join(words[:2] + ["really"] + words[3:])


def _grouped(records):
    samples = extract_samples(records).samples
    return samples, Conversations(samples)


def test_similar_lines_are_one_line_transcribed_twice():
    line = "You always say that and then we end up walking home in the rain."
    assert similar(line.lower(), _edited(line).lower())
    assert not similar("we left at 3 and came back late", "we left at 4 and came back late")  # numbers differ
    assert not similar("you always say that and then we go", "then we end up walking home in the rain")


def test_a_scene_held_twice_with_word_edits_is_one_conversation():
    """Every line of the copy differs in a word: no place key ties it to the original, the
    verified join does, and it keeps the lines that matched."""
    samples, grouped = _grouped([_scene_record("A", SCENE), _scene_record("A2", [_edited(x) for x in SCENE], "B2")])
    assert len({grouped.label[s.sample_id] for s in samples}) == 1
    (join,) = grouped.near_duplicate_joins
    assert join["lines_matched"] >= 3 and all(a != b for a, b in join["lines"])


def test_a_shared_exchange_in_unrelated_scenes_never_joins():
    """Two scenes that share one edited exchange of two long lines (a running gag) and nothing
    else: the pair matches, but it does not chain into three lines, so the scenes stay apart
    (the false joins that built one series-wide conversation rested on one matched pair)."""
    gag = ["These pretzels are making me thirsty, said the man at the bar.",
           "And then he ordered another beer and asked for the check please."]
    first = SCENE[:2] + gag + ["Nothing else happened that night, I swear it on my mother."]
    second = ["Where did you park the van when we came back from the airport?",
              "Across the street, next to the bakery that sells the marble rye."] + [_edited(x) for x in gag] + \
             ["Anyway, the van is gone and the bakery closed an hour ago, sadly."]
    samples, grouped = _grouped([_scene_record("A", first), _scene_record("C", second, "D")])
    assert len({grouped.label[s.sample_id] for s in samples}) == 2
    assert grouped.near_duplicate_joins == []


def test_a_conversation_over_a_fifth_of_the_samples_is_a_notice_naming_its_links():
    """Three scenes tied by one exchange (the same three lines in each, the middle one always
    between the same two: one place) make one conversation of 75% of the samples: the notice
    names the lines that tie them."""
    tie = ["Did anybody see where I left the keys to the storage room?", "They are on the hook behind the door.",
           "Thanks."]
    scenes = [_scene_record(f"c{k}", [f"Scene {k} begins with this line number {k} here."] + tie) for k in range(3)]
    apart = [_scene_record(f"d{k}", [f"Unrelated scene {k} line one.", f"Unrelated {k} answer."]) for k in range(2)]
    samples, grouped = _grouped(scenes + apart)
    assert grouped.largest == 6 and len(samples) == 8
    (notice,) = grouped.notices
    assert "holds 6 of 8 samples (75%)" in notice
    assert "did anybody see where i left the keys to the storage room / they are on the hook behind the door" in notice


def test_a_short_scene_holding_only_a_running_gag_glues_nothing():
    """Two unrelated scenes share an edited running gag; a third, short scene holds the gag alone.
    The short scene matches both (every line of it), which would glue all three: a short run
    matching scenes of several conversations joins none of them."""
    gag = ["These pretzels are making me thirsty, said the man at the bar.",
           "And then he ordered another beer and asked for the check please."]
    alpha = ["Where did you park the van when we came back from the airport?",
             "Across the street, next to the bakery that sells the marble rye."] + gag + \
            ["Anyway, the van is gone and the bakery closed an hour ago, sadly.",
             "Then we should call a cab before the rain starts again tonight."]
    bravo = SCENE[:2] + [_edited(x) for x in gag] + SCENE[2:4]
    short = [" ".join(x.split()[:2] + ["truly"] + x.split()[3:]) for x in gag]
    samples, grouped = _grouped([_scene_record("X", alpha), _scene_record("Y", bravo, "Z"),
                                 _scene_record("S", short, "T")])
    assert len({grouped.label[s.sample_id] for s in samples}) == 3
    assert grouped.near_duplicate_joins == []
