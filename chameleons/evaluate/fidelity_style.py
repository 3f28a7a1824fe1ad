"""Style statistics of a line that need no model: words, length ratio to the character's
mean training line, within-line distinct-1/2, whether it copies a context line verbatim (a known
failure of dialogue models), and whether it repeats the character's own training lines
(memorisation: `TrainingLines`)."""

import re

from .evaluation import distinct_n

COPY_MIN_WORDS = 5  # a shorter line shared with the context ("yes", "I know") is not a copy
NGRAM = 4  # word n-grams for the overlap with the character's training lines
REPEAT_OVERLAP = 0.8  # a line whose word 4-grams the character mostly said in training repeats them
_WORDS = re.compile(r"[\w']+")


def normalize(text: str) -> str:
    return " ".join((text or "").lower().split())


def copies_context(line: str, context) -> bool:
    """The line repeats a context line: equal to one, or one holds the other whole and the
    shorter has at least COPY_MIN_WORDS words."""
    mine = normalize(line)
    if not mine:
        return False
    for turn in context:
        other = normalize(turn)
        if not other:
            continue
        if mine == other:
            return True
        short, long_ = (mine, other) if len(mine) <= len(other) else (other, mine)
        if len(short.split()) >= COPY_MIN_WORDS and f" {short} " in f" {long_} ":
            return True
    return False


def style(line: str, context, mean_words) -> dict:
    """Style figures of one line: words, length ratio to the character's mean training line,
    within-line distinct-1/2, and whether it copies a context line."""
    words = len((line or "").split())
    return {"words": words, "length_ratio": round(words / mean_words, 4) if mean_words else None,
            "distinct_1": round(distinct_n([line or ""], 1), 4), "distinct_2": round(distinct_n([line or ""], 2), 4),
            "copies_context": copies_context(line, context)}


def _grams(line: str) -> set:
    words = _WORDS.findall(line.lower())
    return {tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


class TrainingLines:
    """Each character's training lines, to tell how much of a line the character already said in
    training: the share of its word 4-grams found in them (`overlap`, None for a line shorter
    than 4 words), and whether it repeats them (`repeats`: one of them exactly, with
    COPY_MIN_WORDS or more words, or an overlap of at least REPEAT_OVERLAP)."""

    def __init__(self, lines_by_char: dict):
        self.lines, self.grams = {}, {}
        for character, lines in lines_by_char.items():
            normal = [normalize(x) for x in lines]
            self.lines[character] = {x for x in normal if len(x.split()) >= COPY_MIN_WORDS}
            self.grams[character] = set().union(*(_grams(x) for x in normal)) if normal else set()

    def overlap(self, character: str, line: str):
        grams = _grams(line or "")
        return sum(g in self.grams.get(character, ()) for g in grams) / len(grams) if grams else None

    def repeats(self, character: str, line: str) -> bool:
        share = self.overlap(character, line)
        return normalize(line) in self.lines.get(character, ()) or (share is not None and share >= REPEAT_OVERLAP)
