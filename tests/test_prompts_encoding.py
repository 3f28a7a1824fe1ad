"""Prompt layout (chameleons/text/prompts.py) and token ids / label masks (chameleons/text/encoding.py),
on the real Qwen3 tokenizer.

Expected prompts are written out by hand from the spec (`expected_simple` below), and expected
token ids come from the tokenizer's own chat template, never from the code under test.
"""

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chameleons.core.errors import UserError
from chameleons.corpus.data import extract_samples
from chameleons.text.encoding import IGNORE_INDEX, build_labels, encode_samples
from chameleons.text.prompts import INSTRUCTION_TEXT, TASK_TEXT, Ablation, HistoryIndex, PromptBuilder, target_text
from chameleons.train.planning import token_stats

from conftest import item, record

IM_END = "<|im_end|>"
ALL_ON = Ablation("all", True, True, True)
PROFILE_CONTEXT = Ablation("profile_and_context", True, False, True)
CONTEXT_ONLY = Ablation("context_only", False, False, True)
PROFILE_ONLY = Ablation("profile_only", True, False, False)

RICK_PROFILE = {"name": "Rick Blaine", "age": 37, "gender": "male", "occupation": "saloon owner",
                "aliases": ["Richard"], "nickname": "", "film": "Casablanca"}
RICK_PERSONALITY = {"structured": {"big5": {"openness": 0.62, "neuroticism": 3, "label": "high"}},
                    "unstructured": "Cynical but kind."}
RICK_TURNS = [("Ilsa", "Play it once, Sam."), ("Rick Blaine", "I told you never to play it."),
              ("Ilsa", "   "), ("Sam", "You played it for her.")]


def rick_sample(turns=RICK_TURNS, target="  Of all the gin joints in all the towns.  "):
    rec = record("rick01", [item(turns, target)], profile=RICK_PROFILE, personality=RICK_PERSONALITY)
    return extract_samples([rec]).samples[0]


PROFILE_BLOCK = "\n".join([
    "[USER_PROFILE]",
    "[USER_NAME=Rick Blaine]",
    "[USER_AGE=37]",
    "[USER_GENDER=male]",
    "[USER_OCCUPATION=saloon owner]",
    "[USER_FILM=Casablanca]",
    "[DIM_BIG5_OPENNESS=0.62]",
    "[DIM_BIG5_NEUROTICISM=3]",
])


def expected_simple(user_hash, profile_block=None, history=(), dialogue=()):
    """The spec's simple layout, written out independently of prompts.py."""
    sections = [f"[USER_HASH={user_hash}]"]
    if profile_block:
        sections.append(profile_block)
    sections.append("[TASK]\n" + TASK_TEXT)
    if history:
        sections.append("\n".join(["[HISTORY]"] + [f"{i}. {h}" for i, h in enumerate(history, 1)]))
    if dialogue:
        sections.append("\n".join(["[RECENT_DIALOGUE]"] + [f"{'Assistant' if r == 'assistant' else 'User'}: {c}"
                                                         for r, c in dialogue]))
    sections.append(INSTRUCTION_TEXT)
    return "\n\n".join(sections)


def chat_text(tokenizer, system, target=None):
    """What the tokenizer's own chat template makes of one system message (+ one assistant turn)."""
    msgs = [{"role": "system", "content": system}]
    if target is not None:
        msgs.append({"role": "assistant", "content": target_text(target)})
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def joint_ids(tokenizer, system, target):
    """The whole conversation tokenized in one go; the newline after the final <|im_end|> is not trained."""
    text = chat_text(tokenizer, system, target)
    assert text.endswith(IM_END + "\n")
    return tokenizer(text[:-1], add_special_tokens=False)["input_ids"]


def encode_one(sample, builder, tokenizer, fmt, max_length=4096):
    out = encode_samples([sample], builder, tokenizer, fmt, max_length)
    return {k: v[0] for k, v in out.items()}


DIALOGUE = (("user", "Play it once, Sam."), ("assistant", "I told you never to play it."),
            ("user", "You played it for her."))


# --------------------------------------------------------------------------- simple layout

def test_simple_layout_exact_profile_and_context():
    s = rick_sample()
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    system = builder.system(s, builder.turns(s), builder.history_lines(s))
    assert system == expected_simple("rick01", PROFILE_BLOCK, dialogue=DIALOGUE)


def test_simple_layout_exact_context_only():
    s = rick_sample()
    builder = PromptBuilder(CONTEXT_ONLY, "simple")
    assert builder.system(s, builder.turns(s), []) == expected_simple("rick01", dialogue=DIALOGUE)


def test_simple_layout_exact_profile_only():
    s = rick_sample()
    builder = PromptBuilder(PROFILE_ONLY, "simple")
    system = builder.system(s, builder.turns(s), builder.history_lines(s))
    assert system == expected_simple("rick01", PROFILE_BLOCK)
    assert "[RECENT_DIALOGUE]" not in system and "Play it once" not in system


def test_simple_layout_with_history():
    pool_recs = [record("rick01", [item([("Ilsa", f"q{i}")], f"Rick line number {i}") for i in range(3)],
                        profile=RICK_PROFILE, personality=RICK_PERSONALITY)]
    pool = extract_samples(pool_recs).samples
    s = rick_sample()
    builder = PromptBuilder(ALL_ON, "simple", HistoryIndex(pool))
    history = builder.history_lines(s)
    assert sorted(history) == sorted(p.target for p in pool)
    system = builder.system(s, builder.turns(s), history)
    assert system == expected_simple("rick01", PROFILE_BLOCK, history=history, dialogue=DIALOGUE)
    assert system.index("[TASK]") < system.index("[HISTORY]") < system.index("[RECENT_DIALOGUE]")


def test_target_text():
    assert target_text("Here's looking at you, kid.") == "[ANSWER]\nHere's looking at you, kid.\n[/ANSWER]"


def test_one_system_message(tokenizer, chat_format):
    """The encoded prompt is exactly one system message then the assistant header."""
    s = rick_sample()
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    enc = encode_one(s, builder, tokenizer, chat_format)
    prompt = tokenizer.decode(enc["input_ids"][:enc["prompt_len"]], skip_special_tokens=False)
    system = expected_simple("rick01", PROFILE_BLOCK, dialogue=DIALOGUE)
    assert prompt == "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.count("<|im_start|>") == 2 and "<|im_start|>user" not in prompt


# --------------------------------------------------------------------------- history lines

def test_history_lines_bounded_own_character_and_never_own_target():
    long = "x" * 150
    own = [item([("P", f"c{i}")], f"rick {i} {long} {'y' * (i * 5)}") for i in range(30)]
    other = [item([("P", f"d{i}")], f"someone else {i}") for i in range(5)]
    samples = extract_samples([record("rick", own, name="Rick"), record("ilsa", other, name="Ilsa")]).samples
    index = HistoryIndex(samples)
    rick_targets = {s.target for s in samples if s.user_hash == "rick"}
    for s in samples:
        lines = index.lines_for(s)
        assert 0 < len(lines) <= 15
        assert all(len(line) <= 200 for line in lines)
        assert s.target not in lines and s.target[:200] not in lines
        mine = {t for t in (x.target for x in samples if x.user_hash == s.user_hash) if t != s.target}
        assert all(any(t.startswith(line) for t in mine) for line in lines)
        if s.user_hash == "ilsa":
            assert len(lines) == 4  # the other 4 of Ilsa's 5 lines
            assert not any(line.startswith("rick") for line in lines)
    assert any(len(t) > 200 for t in rick_targets)  # the corpus really tests the 200-char cut


def test_history_off_without_use_history():
    samples = extract_samples([record("rick", [item([("P", f"c{i}")], f"line {i}") for i in range(4)])]).samples
    builder = PromptBuilder(PROFILE_CONTEXT, "simple", HistoryIndex(samples))
    assert builder.history_lines(samples[0]) == []
    assert "[HISTORY]" not in builder.system(samples[0], builder.turns(samples[0]), [])


# --------------------------------------------------------------------------- detailed style

def test_detailed_default_template_renders():
    s = rick_sample()
    pool = extract_samples([record("rick01", [item([("P", "q")], "An old line of Rick.")])]).samples
    builder = PromptBuilder(ALL_ON, "detailed", HistoryIndex(pool))
    text = builder.system(s, builder.turns(s), builder.history_lines(s))
    for needle in ("Rick Blaine", "rick01", "saloon owner", "0.62", "An old line of Rick.",
                   "Play it once, Sam.", "I told you never to play it.", "You played it for her.", "[ANSWER]"):
        assert needle in text
    assert "{" not in text and "}" not in text  # every placeholder filled
    assert "[USER_HASH=" not in text  # not the simple layout
    assert text.index("Play it once") < text.index("I told you never") < text.index("You played it")


def test_detailed_custom_template_exact(tmp_path):
    tpl = tmp_path / "t.txt"
    tpl.write_text("\n".join([
        "[header]", "H {name} {user_hash}", "[profile]", "P {name}:", "{lines}", "[profile_line]", "* {key}={value}",
        "[task]", "T {name}", "[history]", "Hist:", "{lines}", "[history_line]", "{number}) {text}",
        "[dialogue]", "D:", "{lines}", "[user_line]", "U> {text}", "[assistant_line]", "{name}> {text}",
        "[instruction]", "I {name}", ""]), encoding="utf-8")
    s = rick_sample(turns=[("Ilsa", "hi {name}"), ("Rick Blaine", "hello"), ("Sam", "bye")])
    builder = PromptBuilder(Ablation("pc", True, False, True), "detailed", template_path=tpl)
    text = builder.system(s, builder.turns(s), [])
    expected = "\n\n".join([
        "H Rick Blaine rick01",
        "P Rick Blaine:\n* USER_NAME=Rick Blaine\n* USER_AGE=37\n* USER_GENDER=male\n* USER_OCCUPATION=saloon owner\n"
        "* USER_FILM=Casablanca\n* DIM_BIG5_OPENNESS=0.62\n* DIM_BIG5_NEUROTICISM=3",
        "T Rick Blaine",
        "D:\nU> hi {name}\nRick Blaine> hello\nU> bye",
        "I Rick Blaine",
    ])
    assert text == expected


def test_detailed_template_missing_section(tmp_path):
    tpl = tmp_path / "t.txt"
    tpl.write_text("[header]\nH\n", encoding="utf-8")
    with pytest.raises(UserError):
        PromptBuilder(ALL_ON, "detailed", template_path=tpl)


# --------------------------------------------------------------------------- label masks and joint tokenization

def test_label_mask_exact(tokenizer, chat_format):
    s = rick_sample()
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    enc = encode_one(s, builder, tokenizer, chat_format)
    ids, plen = enc["input_ids"], enc["prompt_len"]
    labels = build_labels(ids, plen)
    assert len(labels) == len(ids) == enc["length"]
    supervised = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert [l for l in labels if l != IGNORE_INDEX] == supervised
    assert all(l == IGNORE_INDEX for l in labels[:plen]) and IGNORE_INDEX not in labels[plen:]
    assert tokenizer.decode(supervised, skip_special_tokens=False) == \
        "[ANSWER]\nOf all the gin joints in all the towns.\n[/ANSWER]<|im_end|>"
    assert ids[-1] == tokenizer.convert_tokens_to_ids(IM_END)
    # nothing of the prompt is supervised: the masked part is the whole chat-template prompt
    system = expected_simple("rick01", PROFILE_BLOCK, dialogue=DIALOGUE)
    full_text = chat_text(tokenizer, system, s.target)
    prompt_text = full_text[:full_text.index(target_text(s.target))]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert ids[:plen] == prompt_ids


def test_separate_equals_joint_tokenization_fixed(tokenizer, chat_format):
    s = rick_sample()
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    enc = encode_one(s, builder, tokenizer, chat_format)
    system = builder.system(s, builder.turns(s), [])
    assert enc["input_ids"] == joint_ids(tokenizer, system, s.target)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda t: t.strip() and "<|" not in t and "|>" not in t)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=_text, last_turn=_text)
def test_separate_equals_joint_tokenization_property(tokenizer, chat_format, target, last_turn):
    """Prompt and completion tokenized apart give the same ids as the whole conversation, and
    the supervised span decodes to exactly the answer block and <|im_end|>."""
    s = extract_samples([record("h", [item([("Other", last_turn)], target)], name="N")]).samples[0]
    builder = PromptBuilder(CONTEXT_ONLY, "simple")
    enc = encode_one(s, builder, tokenizer, chat_format)
    system = builder.system(s, builder.turns(s), [])
    assert enc["input_ids"] == joint_ids(tokenizer, system, s.target)
    labels = build_labels(enc["input_ids"], enc["prompt_len"])
    supervised = [t for t, l in zip(enc["input_ids"], labels) if l != IGNORE_INDEX]
    # the Qwen tokenizer NFC-normalizes its input (a CJK compatibility ideograph comes back as its
    # unified form), in training and prediction alike
    expected = unicodedata.normalize("NFC", f"[ANSWER]\n{s.target}\n[/ANSWER]{IM_END}")
    assert tokenizer.decode(supervised, skip_special_tokens=False) == expected


# --------------------------------------------------------------------------- truncation

LONG_TURNS = [("Ilsa" if i % 2 == 0 else "Rick Blaine", f"turn {i}: " + " ".join(f"word{i}x{j}" for j in range(12)))
              for i in range(11)]


def _len_with(tokenizer, s, dialogue, profile=True, history=()):
    system = expected_simple(s.user_hash, PROFILE_BLOCK if profile else None, history=history, dialogue=dialogue)
    return len(joint_ids(tokenizer, system, s.target))


def _dialogue(s):
    return list(s.context)


def test_truncation_drops_oldest_turns_first(tokenizer, chat_format):
    s = rick_sample(turns=LONG_TURNS, target="Round up the usual suspects.")
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    turns = _dialogue(s)
    full = _len_with(tokenizer, s, turns)
    none = _len_with(tokenizer, s, [])
    assert full > none + 50
    for max_length in (none, none + 1, (none + full) // 2, full - 1, full, full + 10):
        expect_k = max(k for k in range(len(turns) + 1)
                       if _len_with(tokenizer, s, turns[len(turns) - k:] if k else []) <= max_length)
        enc = encode_one(s, builder, tokenizer, chat_format, max_length)
        assert enc["length"] <= max_length and enc["length"] > 0
        assert enc["turns_kept"] == expect_k, max_length
        assert enc["turns_total"] == len(turns)
        assert enc["truncated"] == (max_length < full)
        kept = turns[len(turns) - expect_k:] if expect_k else []
        system = expected_simple("rick01", PROFILE_BLOCK, dialogue=kept)
        assert enc["input_ids"] == joint_ids(tokenizer, system, s.target)


def test_truncation_never_cuts_profile_task_or_target(tokenizer, chat_format):
    s = rick_sample(turns=LONG_TURNS, target="Louis, I think this is the beginning of a beautiful friendship.")
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    none = _len_with(tokenizer, s, [])
    enc = encode_one(s, builder, tokenizer, chat_format, none)
    text = tokenizer.decode(enc["input_ids"], skip_special_tokens=False)
    assert PROFILE_BLOCK in text and TASK_TEXT in text and INSTRUCTION_TEXT in text
    assert text.endswith(f"[ANSWER]\n{s.target}\n[/ANSWER]{IM_END}")
    assert "[RECENT_DIALOGUE]" not in text and enc["turns_kept"] == 0
    # one token less and even the bare prompt cannot hold the target: dropped
    dropped = encode_one(s, builder, tokenizer, chat_format, none - 1)
    assert dropped["input_ids"] == [] and dropped["length"] == 0


def test_truncation_cuts_dialogue_before_history(tokenizer, chat_format):
    pool = extract_samples([record("rick01", [item([("P", f"q{i}")], f"Remembered line {i} " + "ab " * 10)
                                              for i in range(10)], profile=RICK_PROFILE)]).samples
    s = rick_sample(turns=LONG_TURNS, target="We'll always have Paris.")
    builder = PromptBuilder(ALL_ON, "simple", HistoryIndex(pool))
    history = builder.history_lines(s)
    assert len(history) == 10
    turns = _dialogue(s)
    full = _len_with(tokenizer, s, turns, history=history)
    bare = _len_with(tokenizer, s, [], history=())
    previous_turns, previous_hist = len(turns), len(history)
    for max_length in range(full, bare - 1, -40):
        enc = encode_one(s, builder, tokenizer, chat_format, max_length)
        text = tokenizer.decode(enc["input_ids"], skip_special_tokens=False)
        shown = [h for h in history if h in text]
        assert 0 < enc["length"] <= max_length
        if enc["turns_kept"] > 0:
            assert shown == history, "history was cut while dialogue turns remained"
        assert PROFILE_BLOCK in text and TASK_TEXT in text and text.endswith(f"[/ANSWER]{IM_END}")
        assert enc["turns_kept"] <= previous_turns and len(shown) <= previous_hist
        previous_turns, previous_hist = enc["turns_kept"], len(shown)
    assert previous_turns == 0 and previous_hist < len(history)  # the sweep reached history cuts


def test_target_too_long_is_dropped_and_counted(tokenizer, chat_format):
    short = rick_sample(target="Short answer.")
    long = rick_sample(target=" ".join(f"word{i}" for i in range(400)))
    builder = PromptBuilder(PROFILE_CONTEXT, "simple")
    out = encode_samples([short, long], builder, tokenizer, chat_format, 300)
    assert out["length"][0] > 0 and out["input_ids"][1] == [] and out["length"][1] == 0
    stats = token_stats(out["length"], out["prompt_len"], out["truncated"])
    assert stats["dropped_target_too_long"] == 1 and stats["kept"] == 1 and stats["encoded"] == 2
    completion = len(tokenizer(f"[ANSWER]\nShort answer.\n[/ANSWER]{IM_END}", add_special_tokens=False)["input_ids"])
    assert stats["supervised_tokens"] == completion
    assert stats["tokens_total"] == out["length"][0]


def test_max_context_turns(tokenizer, chat_format):
    s = rick_sample(turns=LONG_TURNS, target="Here's looking at you, kid.")
    turns = _dialogue(s)
    builder = PromptBuilder(PROFILE_CONTEXT, "simple", max_context_turns=3)
    enc = encode_one(s, builder, tokenizer, chat_format, 8192)
    assert enc["turns_kept"] == 3 and not enc["truncated"]
    assert enc["input_ids"] == joint_ids(tokenizer, expected_simple("rick01", PROFILE_BLOCK, dialogue=turns[-3:]), s.target)
    text = tokenizer.decode(enc["input_ids"], skip_special_tokens=False)
    assert turns[-4][1] not in text and all(c in text for _, c in turns[-3:])
    # with a tight budget the cap still holds and truncation goes below it
    tight = _len_with(tokenizer, s, turns[-1:])
    enc = encode_one(s, builder, tokenizer, chat_format, tight)
    assert enc["turns_kept"] == 1


def test_the_one_label_mask_ignores_prompt_and_first_token():
    assert build_labels([5, 6, 7, 8], 2) == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]
    assert build_labels([5, 6, 7], 0) == [IGNORE_INDEX, 6, 7]  # nothing inside the sample predicts its first token
    assert build_labels([5], 1) == [IGNORE_INDEX]
