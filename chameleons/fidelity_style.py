"""Style statistics of a line that need no model: words, length ratio to the character's
mean training line, within-line distinct-1/2, and whether it copies a context line verbatim
(a known failure of dialogue models)."""

from .evaluation import distinct_n

COPY_MIN_WORDS = 5  # a shorter line shared with the context ("yes", "I know") is not a copy


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
