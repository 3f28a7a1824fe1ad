"""An independent leak report of a split: does any validation target's text reach training?

It reads only what training is shown: every training sample's rendered system prompt (dialogue
and history lines as the prompt builder writes them), its history lines and its target, in
every epoch the run may train. Lines are compared by `normalised` text (case-folded, accents
and punctuation dropped, spacing collapsed), its own rule and not the splitter's, so a flaw in
the split's line identity cannot hide itself here.

A validation target whose text training shows is a leak, unless the line is common: said after
COMMON_CONTEXTS or more different lines in the corpus ("Yeah.", "What?"), i.e. in many
unrelated scenes, where its text alone says nothing about the scene; or said after exactly two
different lines and shown by training only elsewhere (after another line than in validation, or
in a history line or at the start of a dialogue, where no line before it is shown): the same
words in another scene, which a split by scene rightly allows. Both are counted and listed
apart, with examples; those of GAG_WORDS or more words (a series' catchphrases and running
gags, not "Yeah.") are counted again as `running_gags`, so a real corpus's repeats are seen. `leaked_after_the_same_line` counts the leaks training shows after the
line that precedes them in validation (the same place: the split failed). Reading the prompts
line by line, a history line that history cut at MAX_HISTORY_CHARS is matched by its first
PREFIX_CHARS normalised characters.
"""

import functools
import re
import unicodedata

from .prompts import MAX_HISTORY_CHARS

COMMON_CONTEXTS = 3
GAG_WORDS = 4  # a line set apart with this many words is a repeated phrase, not a generic "Yeah."
PREFIX_CHARS = 80
EXAMPLES = 10
AUDIT_NAME = "split_audit.json"
_LABEL = re.compile(r"^\s*(?:\d+\.|[^:\n]{1,40}:)\s+")
_NOT_WORD = re.compile(r"[\W_]+")


@functools.lru_cache(maxsize=1 << 18)
def normalised(text: str) -> str:
    """Case-folded, accents and compatibility forms folded, apostrophes dropped ("don't" =
    "dont"), every other run of non-letters and non-digits one space. Cached: a dialogue line
    is shown in many prompts."""
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(_NOT_WORD.sub(" ", text.casefold().replace("'", "").replace("\u2019", "")).split())


def _keys(text: str, cut: bool = True) -> set:
    """The keys a line matches by: its normalised text and, when long and `cut` (a validation
    target, or a history line cut short), its prefix."""
    n = normalised(text)
    return {n, ("prefix", n[:PREFIX_CHARS])} if cut and len(n) >= PREFIX_CHARS else {n}


def _prompt_keys(system: str) -> set:
    """Every line of a rendered prompt, as it stands and without a leading label ("User: ",
    "Ann: ", "3. "), so a quoted line is found whatever the template calls its speaker."""
    keys = set()
    for line in system.splitlines():
        keys |= _line_keys(line)
    keys.discard("")
    return keys


@functools.lru_cache(maxsize=1 << 18)
def _line_keys(line: str) -> frozenset:
    return frozenset(_keys(line, False) | _keys(_LABEL.sub("", line, count=1), False))


def line_contexts(samples) -> dict:
    """normalised line -> how many different lines precede it in the corpus."""
    before = {}
    for s in samples:
        seq = [normalised(c) for _, c in s.context] + [normalised(s.target)]
        for a, b in zip(seq, seq[1:]):
            before.setdefault(b, set()).add(a)
    return {line: len(prev) for line, prev in before.items()}


def common_lines(samples) -> dict:
    """The lines said after at least COMMON_CONTEXTS different ones, with that count."""
    return {line: n for line, n in line_contexts(samples).items() if n >= COMMON_CONTEXTS}


def shown_keys(sample, builder) -> dict:
    """What one training sample shows, by place: history lines, the rest of the prompt, target."""
    history = builder.history_lines(sample)
    system = builder.system(sample, builder.turns(sample), history)
    history_keys = set().union(*(_keys(h, len(h) >= MAX_HISTORY_CHARS) for h in history)) if history else set()
    return {"history": history_keys, "prompt": _prompt_keys(system) - history_keys,
            "target": _keys(sample.target, False)}


def _pairs(sample, builder) -> set:
    """(line before, line) of the dialogue shown and the target, normalised: a line's place."""
    seq = [normalised(c) for _, c in builder.turns(sample)] + [normalised(sample.target)]
    return set(zip(seq, seq[1:]))


def _place(v):
    return (normalised(v.context[-1][1]), normalised(v.target)) if v.context else None


def _val_keys(val) -> dict:
    """key -> validation samples whose target it matches (the prefix key only for long ones)."""
    out = {}
    for s in val:
        for k in _keys(s.target):
            out.setdefault(k, []).append(s)
    return out


_RANK = {"common": 0, "elsewhere": 1, "leak": 2}


def _kind(v, s, contexts, builder) -> str:
    """How training sample `s` shows validation target `v`: a `leak`, a `common` line, or a line
    said after two different lines that `s` shows `elsewhere` than after v's line before it."""
    n = contexts.get(normalised(v.target), 0)
    if n >= COMMON_CONTEXTS:
        return "common"
    return "leak" if n <= 1 or _place(v) in _pairs(s, builder) else "elsewhere"


def audit(val, epochs, all_samples, builder) -> dict:
    """The report: `epochs` is each epoch's training samples; `all_samples` the whole corpus
    (for telling common lines)."""
    by_key = _val_keys(val)
    contexts = line_contexts(all_samples)
    found, per_epoch, cache, same_place = {}, [], {}, set()
    for e, train in enumerate(epochs):
        leaked = {"prompt": set(), "history": set(), "target": set()}
        for s in train:
            if s.sample_id not in cache:
                cache[s.sample_id] = {w: [k for k in keys if k in by_key] for w, keys in
                                      shown_keys(s, builder).items()}
            for where, keys in cache[s.sample_id].items():
                for v in (v for k in keys for v in by_key[k]):
                    kind = _kind(v, s, contexts, builder)
                    if v.sample_id not in found or _RANK[kind] > _RANK[found[v.sample_id][0]]:
                        found[v.sample_id] = (kind, v, where, s, e)
                    if kind == "leak":
                        leaked[where].add(v.sample_id)
                        if _place(v) in _pairs(s, builder):
                            same_place.add(v.sample_id)
        per_epoch.append({"epoch": e, "train_samples": len(train), "leaked_targets": len(set().union(*leaked.values())),
                          **{f"in_{w}": len(ids) for w, ids in leaked.items()}})
    return {**_report(val, found, contexts, per_epoch), "leaked_after_the_same_line": len(same_place)}


def _report(val, found, contexts, per_epoch) -> dict:
    by_kind = {k: sorted((f for f in found.values() if f[0] == k), key=lambda f: f[1].sample_id) for k in _RANK}

    def example(f):
        _, v, where, s, e = f
        return {"validation_sample": v.sample_id, "text": v.target[:200], "shown_in": where,
                "training_sample": s.sample_id, "epoch": e}

    leaks = by_kind["leak"]
    gags = [f for k in ("common", "elsewhere") for f in by_kind[k] if len(normalised(f[1].target).split()) >= GAG_WORDS]
    common_texts = sorted({normalised(f[1].target) for f in by_kind["common"]}, key=lambda t: (-contexts[t], t))
    return {
        "validation_targets": len(val),
        "leaked_targets": len(leaks),
        "leaked_share": round(len(leaks) / len(val), 4) if val else 0.0,
        "epochs": per_epoch,
        "examples": [example(f) for f in leaks[:EXAMPLES]],
        "leaked_samples": [f[1].sample_id for f in leaks],
        "common_targets_shown": len(by_kind["common"]),
        "common_lines": [{"text": t, "preceded_by_different_lines": contexts[t]} for t in common_texts[:50]],
        "shown_elsewhere": len(by_kind["elsewhere"]),
        "elsewhere_examples": [example(f) for f in by_kind["elsewhere"][:EXAMPLES]],
        "running_gags": len(gags),
        "running_gag_examples": [example(f) for f in sorted(gags, key=lambda f: f[1].sample_id)[:EXAMPLES]],
        "rule": f"normalised text (case, accents, punctuation, spacing ignored); common = said after >= "
                f"{COMMON_CONTEXTS} different lines in the corpus; elsewhere = said after 2 different lines, shown "
                f"by training after another line than in validation (or without the line before it); running gags "
                f"= those of the two kinds with {GAG_WORDS} or more words (catchphrases, stock exchanges)",
    }


def audit_split(split, builder, samples, n_epochs: int) -> dict:
    """The report for a split as training would use it: `n_epochs` epochs (1 without resampling)."""
    return {**audit(split.val, [split.epoch_train(e) for e in range(n_epochs)], samples, builder),
            "grouping": grouping(split)}


def grouping(split) -> dict:
    """What the split's grouping did: its notices and every near-duplicate join, with the lines
    that matched (the audit reports it beside the leaks it checks)."""
    return split.settings.leak_check.report(split.index)


def summary(report: dict) -> dict:
    """The plan's figures."""
    return {"validation_targets": report["validation_targets"], "leaked_targets": report["leaked_targets"],
            "epochs": len(report["epochs"]),
            "worst_epoch": max((e["leaked_targets"] for e in report["epochs"]), default=0),
            "common_targets_shown": report["common_targets_shown"], "shown_elsewhere": report["shown_elsewhere"],
            "running_gags": report.get("running_gags", 0)}


def summary_line(sm: dict) -> str:
    """The dry run's line, from `summary`."""
    return (f"audit      {sm['leaked_targets']:,} of {sm['validation_targets']:,} validation targets shown to training "
            f"by normalised text ({sm['epochs']} epoch(s), at most {sm['worst_epoch']:,} in one); "
            f"apart: {sm['common_targets_shown']:,} common lines, {sm['shown_elsewhere']:,} said in another scene, "
            f"{sm.get('running_gags', 0):,} of them running gags of {GAG_WORDS}+ words ({AUDIT_NAME})")
