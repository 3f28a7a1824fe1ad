"""Does a generated line sound like its character? Speaker attribution and style statistics.

BLEU and ROUGE-L compare a line with one possible answer; two models that differ in how much
they sound like the character can score the same. Here a speaker classifier (character 1-6-gram
TF-IDF, a linear model trained by SGD on log-loss: scikit-learn) learns from the run's training
lines which character says a line, and every generated line gets the probability and the rank
of its intended character among the characters of its film and among all characters the
classifier knows. The same figures for the reference lines are the ceiling; for a reference
line of another character (of the same film where there is one) they are the chance-like
baseline. Style statistics need no model: length ratio to the character's training lines,
distinct-1/2 and how often a line copies a context line verbatim.

The classifier learns only from the run's training pool: lines that validation never holds
(see `splitting`), minus any line whose text is a reference of the evaluated file, so the
ceiling is always scored on unseen lines. A film is a set of records joined by shared
conversations (`conversations.Conversations`), as the format names no film. The style figures live
in `fidelity_style`, the run's aggregation in `fidelity_summary`.
"""

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .fidelity_cache import CACHE_NAME, load_cached, save_cache
from .fidelity_scene import Scenes, film_mates, likelihoods, pick_baselines
from .fidelity_style import TrainingLines, normalize, style
from .fidelity_summary import aggregate

# Character 1-6-grams across word boundaries (punctuation and the spaces between words are style)
# and a little more regularisation than before (char_wb 2-4, alpha 1e-5): on the Seinfeld
# conversion the reference - same-scene baseline margin at 200 items rose from 0.063 to 0.121
# pooled over val seeds 0-2, and to 0.128 on seeds 3-5, not looked at while choosing (docs/PREDICTION.md).
SETTINGS = {"analyzer": "char", "ngram_range": [1, 6], "min_df": 2, "sublinear_tf": True, "loss": "log_loss",
            "alpha": 3e-5, "random_state": 0, "format": 2}
# One-vs-rest SGD costs characters x lines: 428 characters x 4,170 lines (1.8e6) fit in 6-11 s of
# CPU; the real corpus (7,797 characters x 72k lines) would take hours and a dense weight matrix
# of characters x n-grams, so above this class centroids are fitted instead (`fidelity_centroids`).
MAX_FIT_SIZE = 2_000_000
MIN_CLASS_LINES = 40  # above MAX_FIT_SIZE, the classifier's characters (`classifier_lines`)
CONTEXT_MARK = "\x1e"  # joins a line and its context line in a classifier input (--fidelity_context on)

def training_lines(samples, held_out=(), context: bool = False) -> dict:
    """{character: [line, ...]} from the samples' targets; lines whose normalised text is in
    `held_out` (the evaluated references) are left out. With `context`, each line carries the
    context line it answers (`with_context`)."""
    held = {normalize(t) for t in held_out if t}
    out = {}
    for s in samples:
        if s.target and normalize(s.target) not in held:
            line = with_context(s.target, [c for _, c in s.context]) if context else s.target
            out.setdefault(s.user_hash, []).append(line)
    return out


def with_context(line: str, context) -> str:
    """A classifier input of a line and the last context line (the turn it answers), joined by
    CONTEXT_MARK; `line_and_context_ngrams` keeps their n-grams apart."""
    return f"{line or ''}{CONTEXT_MARK}{context[-1] if context else ''}"


def line_and_context_ngrams(text: str) -> list:
    """The line's character n-grams (as without context) and the context line's, marked: the
    classifier weighs "who answers this" apart from "who says this"."""
    line, _, context = text.partition(CONTEXT_MARK)
    ngrams = _char_ngrams()
    return ngrams(line) + [CONTEXT_MARK + g for g in ngrams(context)]


@functools.lru_cache(maxsize=1)
def _char_ngrams():
    """scikit-learn's own character analyzer (SETTINGS) with the classifier's n-gram range."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=SETTINGS["analyzer"], ngram_range=tuple(SETTINGS["ngram_range"])).build_analyzer()


def lines_key(lines_by_char: dict) -> str:
    """What the classifier depends on: its settings, scikit-learn's version and every line (with
    its context line where the classifier uses them)."""
    from importlib.metadata import version

    h = hashlib.sha256(json.dumps([SETTINGS, version("scikit-learn")], sort_keys=True).encode())
    for c in sorted(lines_by_char):
        h.update(b"\x00" + c.encode())
        for line in lines_by_char[c]:
            h.update(b"\x01" + line.encode())
    return h.hexdigest()


@dataclass
class Attributor:
    """A fitted speaker classifier and the facts about the training lines that scoring needs."""
    key: str
    classes: list
    pipeline: object
    mean_words: dict  # character -> mean words of its training lines
    kind: str = "sgd"  # or "centroid" (`model_kind`)
    context: bool = False  # inputs are `with_context(line, context)`

    def describe(self) -> dict:
        """What a summary records about the classifier."""
        return {"characters": len(self.classes), "key": self.key[:16], "settings": SETTINGS, "model": self.kind,
                "context": self.context}

    def probabilities(self, lines, chunk: int = 500):
        """One row of class probabilities (in `classes` order) per line, computed `chunk` lines at
        a time: with thousands of characters a whole file's rows would not fit in memory."""
        for start in range(0, len(lines), chunk):
            yield from self.pipeline.predict_proba([line or "" for line in lines[start:start + chunk]]).tolist()


def fit_attributor(lines_by_char: dict) -> Attributor:
    """Character n-gram TF-IDF and a linear log-loss model; SGD rather than lbfgs logistic
    regression because it fits a few thousand lines of 50 characters in under a second (lbfgs:
    2-5 s) with the same attribution on the shipped sample. Above MAX_FIT_SIZE (characters x
    lines) class centroids instead (`fidelity_centroids`). Needs two characters."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    from .fidelity_centroids import CentroidClassifier

    if len(lines_by_char) < 2:
        raise ValueError("a speaker classifier needs lines of at least two characters")
    texts = [line for c in sorted(lines_by_char) for line in lines_by_char[c]]
    labels = [c for c in sorted(lines_by_char) for _ in lines_by_char[c]]
    context = any(CONTEXT_MARK in t for t in texts)
    min_df = SETTINGS["min_df"] if len(texts) >= 50 else 1  # a tiny set has almost no n-gram twice
    ngrams = {"analyzer": line_and_context_ngrams} if context else \
        {"analyzer": SETTINGS["analyzer"], "ngram_range": tuple(SETTINGS["ngram_range"])}
    vectorizer = TfidfVectorizer(**ngrams, min_df=min_df, sublinear_tf=SETTINGS["sublinear_tf"])
    if model_kind(lines_by_char) == "centroid":
        model = CentroidClassifier(vectorizer).fit(texts, labels)
    else:
        from sklearn.pipeline import make_pipeline

        model = make_pipeline(vectorizer, SGDClassifier(loss=SETTINGS["loss"], alpha=SETTINGS["alpha"],
                                                        random_state=SETTINGS["random_state"])).fit(texts, labels)
    mean_words = {c: sum(len(x.partition(CONTEXT_MARK)[0].split()) for x in lines) / len(lines)
                  for c, lines in lines_by_char.items()}
    return Attributor(key=lines_key(lines_by_char), classes=[str(c) for c in model.classes_], pipeline=model,
                      mean_words=mean_words, kind=model_kind(lines_by_char), context=context)


def classifier_lines(lines_by_char: dict, warn=None) -> dict:
    """Above MAX_FIT_SIZE, the characters with at least MIN_CLASS_LINES training lines (when two
    or more have that many): a series' hundreds of one-episode characters would otherwise force
    the centroid classifier, which hears style far worse (on the Seinfeld conversion the
    reference - same-scene baseline margin was 0.034 with centroids over 523 characters, 0.090
    with SGD over the 28 with 40+ lines). Their items are not attributed; a notice says so."""
    size = len(lines_by_char) * sum(len(v) for v in lines_by_char.values())
    kept = {c: v for c, v in lines_by_char.items() if len(v) >= MIN_CLASS_LINES}
    if size <= MAX_FIT_SIZE or len(kept) < 2 or len(kept) == len(lines_by_char):
        return lines_by_char
    if warn:
        warn(f"fidelity: {len(lines_by_char) - len(kept):,} of {len(lines_by_char):,} characters have fewer than "
             f"{MIN_CLASS_LINES} training lines: left out of the classifier, their items not attributed")
    return kept


def model_kind(lines_by_char: dict) -> str:
    """The classifier for these lines: sgd, or centroid where one-vs-rest SGD (its cost grows with
    characters x lines) would not fit on a CPU in about a minute."""
    size = len(lines_by_char) * sum(len(v) for v in lines_by_char.values())
    return "centroid" if size > MAX_FIT_SIZE else "sgd"


def attribution(probs, classes, intended: str, candidates=None) -> dict:
    """Probability (renormalised over the candidates) and rank (1 = most likely; ties count
    against the intended character) of `intended` among `candidates` (default: all classes)."""
    index = {c: i for i, c in enumerate(classes)}
    pool = [c for c in (candidates if candidates is not None else classes) if c in index]
    if intended not in index or intended not in pool:
        return {"p": None, "rank": None, "n": len(pool)}
    mine = probs[index[intended]]
    total = sum(probs[index[c]] for c in pool)
    rank = 1 + sum(1 for c in pool if c != intended and probs[index[c]] >= mine)
    return {"p": round(mine / total, 6) if total > 0 else 1.0 / len(pool), "rank": rank, "n": len(pool)}


@dataclass
class Item:
    """One evaluated data item: its intended character, context lines, generated lines and
    reference (empty when the file has none)."""
    sample_id: str
    uid: str
    character: str
    context: list
    generated: list
    reference: str = ""
    baseline: str = field(default="", repr=False)  # another character's line, set by pick_baselines
    baseline_from: str = ""
    baselines: tuple = field(default=(), repr=False)  # every same-scene baseline line (`baseline` the first)
    sources: tuple = ()  # the context turns' speaker names (fidelity_scene)


def _figures(probs, attributor, it, film, line: str, scene=None) -> dict:
    """`scene`: (candidates, likelihoods) of the item (`fidelity_scene`), or None."""
    character = it.character
    every = attribution(probs, attributor.classes, character)
    mates = attribution(probs, attributor.classes, character, sorted(film)) if film else {"p": None, "rank": None}
    here = attribution(scene[1], attributor.classes, character, scene[0]) if scene else {"p": None, "rank": None,
                                                                                        "n": None}
    top = attributor.classes[max(range(len(probs)), key=probs.__getitem__)]
    return {"p_film": mates["p"], "rank_film": mates["rank"], "p_all": every["p"], "rank_all": every["rank"],
            "p_scene": here["p"], "rank_scene": here["rank"], "n_scene": here["n"] if scene else None, "top_all": top,
            **style(line, it.context, attributor.mean_words.get(character))}


def score_items(attributor: Attributor, films: dict, items, scenes=None) -> tuple:
    """Per-item figures (JSON-able) and the notices for items that cannot be fully scored: a
    character without training lines is not attributed; one alone in its film (no other
    character with training lines) gets no film figures; with `scenes`, ranks among the scene's
    candidates too (`fidelity_scene`)."""
    known = set(attributor.classes)
    lines, where = [], []
    for k, it in enumerate(items):
        if it.character in known:
            texts = [("generated", j, t) for j, t in enumerate(it.generated) if normalize(t)]
            texts += [("reference", 0, it.reference)] if it.reference else []
            texts += [("baseline", j, t) for j, t in enumerate(it.baselines or [it.baseline]) if t]
            for kind, j, text in texts:
                lines.append(text)
                where.append((k, kind, j))
    inputs = [with_context(t, items[k].context) for t, (k, _, _) in zip(lines, where)] if attributor.context else lines
    probs = attributor.probabilities(inputs)
    rows = [{"sample_id": it.sample_id, "character": it.character, "attributed": it.character in known,
             "film_characters": len(films.get(it.character, {it.character}) & known), "reference": None,
             "baseline": None} for it in items]
    unattributed = {"p_film": None, "rank_film": None, "p_all": None, "rank_all": None, "p_scene": None,
                    "rank_scene": None, "n_scene": None}
    for k, it in enumerate(items):  # an empty line (nothing extracted) would score at the classifier's prior
        rows[k]["generated"] = [{**unattributed, **style(t, it.context, attributor.mean_words.get(it.character))}
                                for t in it.generated]
    cands = {k: scenes.candidates(it.character, it.sources, known) for k, it in enumerate(items)} if scenes else {}
    baselines = {}
    # SGD's probabilities are posteriors, so the scene ranks divide out each character's prior; the
    # centroids' are a softmax of similarities that never saw a prior (dividing would rank the
    # series' main cast last: a corpus shipped twice, which crosses MAX_FIT_SIZE, scored 0.017)
    in_scene = (lambda p: likelihoods(p, attributor.classes, scenes.line_counts)) if attributor.kind == "sgd" \
        else (lambda p: p)
    for (k, kind, j), p, text in zip(where, probs, lines):
        it = items[k]
        film = films.get(it.character, {it.character}) & known
        scene = (cands[k], in_scene(p)) if cands.get(k) else None
        figures = _figures(p, attributor, it, film if len(film) > 1 else None, text, scene)
        if kind == "generated":
            rows[k]["generated"][j] = figures
        elif kind == "reference":
            rows[k]["reference"] = figures
        else:
            baselines.setdefault(k, []).append(figures)
    for k, figures in baselines.items():
        rows[k]["baseline"] = {**averaged(figures), "from": items[k].baseline_from}
    return rows, _notices(rows, items)


def averaged(figures: list) -> dict:
    """One baseline row from the figures of an item's baseline lines: the first line's, with each
    scope's probability and rank the mean over the lines and top-1 / top-3 their shares (the rank
    score is linear in the rank, so the mean rank gives the mean score); `rank_scene_first` keeps
    the first line's, for the spread of a comparison of single lines (`classifier_accuracy`)."""
    out = {**figures[0], "lines": len(figures), "rank_scene_first": figures[0]["rank_scene"]}
    for scope in ("all", "film", "scene"):
        ranks = [f[f"rank_{scope}"] for f in figures]
        if None in ranks:
            continue
        out.update({f"rank_{scope}": sum(ranks) / len(ranks),
                    f"p_{scope}": sum(f[f"p_{scope}"] for f in figures) / len(figures),
                    f"top1_{scope}": sum(r == 1 for r in ranks) / len(ranks),
                    f"top3_{scope}": sum(r <= 3 for r in ranks) / len(ranks)})
    return out


def _notices(rows, items) -> list:
    unknown = [r for r in rows if not r["attributed"]]
    alone = [r for r in rows if r["attributed"] and r["film_characters"] < 2]
    out = []
    if unknown:
        chars = len({r["character"] for r in unknown})
        out.append(f"fidelity: {len(unknown)} of {len(rows)} items ({chars} characters) have no training lines in the "
                   f"run's training pool: not attributed (style figures only)")
    if alone:
        out.append(f"fidelity: {len(alone)} items' characters are the only character with training lines in their "
                   f"film: no film figures for them (ranks among all characters only)")
    empty = sum(1 for it in items for t in it.generated if not normalize(t))
    if empty:
        out.append(f"fidelity: {empty} generated lines are empty (nothing extracted): not attributed")
    if any(it.reference for it in items) and not any(it.baseline for it in items):
        out.append("fidelity: the file has references of one character only: no other-character baseline")
    return out


# The run's edge: the training pool of a run folder, the cached classifier, the whole evaluation.

def validation_ids(run_dir) -> set:
    """Sample ids the run's split_manifest.json lists as validation (empty when there is none
    or it cannot be read: the split is then the only guard)."""
    path = Path(run_dir) / "split_manifest.json"
    try:
        return set(json.loads(path.read_text(encoding="utf-8")).get("validation") or [])
    except (OSError, ValueError, AttributeError):
        return set()


def cached_attributor(folder, lines_by_char: dict, warn=None) -> tuple:
    """(classifier, whether it was fitted now): read from the run folder's cache when it was
    fitted on exactly these lines and settings, else fitted (a cache that cannot be used is one
    notice; one fitted on other lines is simply stale)."""
    key = lines_key(lines_by_char)
    path = Path(folder) / CACHE_NAME if folder else None
    cached, why = load_cached(path, key, Attributor) if path and path.is_file() else (None, "")
    if why and warn:
        warn(f"fidelity: the classifier cache {path} is {why}; ignored, the classifier is fitted again")
    return (cached, False) if cached is not None else (fit_attributor(lines_by_char), True)


@dataclass(frozen=True)
class TrainingPool:
    """What a run's classifier learns from: the training file's samples (their films), the run's
    pool of them, and their conversations (`conversations.Conversations`)."""
    samples: list
    pool: list
    conversations: object


@dataclass
class Setup:
    """What scoring needs from the run: the classifier and the films."""
    attributor: Attributor
    films: dict
    training_lines: int
    excluded_validation: int
    run_dir: object = None
    fitted_now: bool = False
    lines: object = None  # fidelity_style.TrainingLines of the pool: memorisation figures
    scenes: object = None  # fidelity_scene.Scenes: the scene candidates and baselines


def setup(training: TrainingPool, held_out, run_dir=None, warn=None, context: bool = False):
    """The classifier of a run (its training pool, minus the manifest's validation ids and the
    evaluated references; with `context`, each line with the line it answers) and its films;
    None, with one notice, when it cannot be built."""
    val = validation_ids(run_dir) if run_dir else set()
    pool = [s for s in training.pool if s.sample_id not in val]
    lines = classifier_lines(training_lines(pool, held_out, context), warn)
    if len(lines) < 2:
        if warn:
            warn(f"fidelity: the run's training pool has lines of {len(lines)} character(s); a speaker classifier "
                 f"needs two: no fidelity figures")
        return None
    if model_kind(lines) == "centroid" and warn:
        size = sum(len(v) for v in lines.values())
        warn(f"fidelity: {len(lines):,} characters x {size:,} training lines is beyond what one-vs-rest SGD fits on "
             f"a CPU in about a minute (limit {MAX_FIT_SIZE:,}): class-centroid classifier instead (ranks exact, "
             f"probabilities relative; compare runs only within one classifier kind)")
    try:
        attributor, fitted = cached_attributor(run_dir, lines, warn)
    except ValueError as exc:  # e.g. scikit-learn's "empty vocabulary" for lines with no n-gram in common
        if warn:
            warn(f"fidelity: no speaker classifier could be fitted ({exc}): no fidelity figures")
        return None
    films = film_mates(training.samples, training.conversations)
    return Setup(attributor=attributor, films=films,
                 training_lines=sum(len(v) for v in lines.values()), excluded_validation=len(training.pool) - len(pool),
                 run_dir=run_dir, fitted_now=fitted,
                 lines=TrainingLines({c: [x.partition(CONTEXT_MARK)[0] for x in v] for c, v in lines.items()}),
                 scenes=Scenes(training.samples, films, {c: len(v) for c, v in lines.items()}))


def evaluate_items(fid: Setup, items, warn=None) -> tuple:
    """Per-item figures and the summary of `items` (their baselines are picked here)."""
    other_film = pick_baselines(items, fid.films, fid.scenes, fid.attributor.classes)
    rows, notices = score_items(fid.attributor, fid.films, items, fid.scenes)
    if fid.scenes is not None and fid.scenes.unmatched:
        top = ", ".join(f"{name} ({k})" for name, k in fid.scenes.unmatched.most_common(5))
        notices.append(f"fidelity: {len(fid.scenes.unmatched):,} context speaker names match no character of their "
                       f"film (not scene candidates), most often: {top}")
    if other_film:
        notices.append(f"fidelity: {other_film} items' baselines come from another film's character (no other "
                       f"character of their film has a reference in the file)")
    summary = aggregate(rows, items, fid.attributor.describe(), notices, fid.lines)
    summary["classifier"].update(training_lines=fid.training_lines, excluded_validation=fid.excluded_validation,
                                 cached=not fid.fitted_now)
    for line in notices:
        if warn:
            warn(line)
    return rows, summary


def prediction_items(samples, results: dict) -> list:
    """An Item per predicted sample: its continuations, context lines and reference."""
    return [Item(s.sample_id, s.uid, s.user_hash, [c for _, c in s.context],
                 list(results[s.sample_id]["continuations"]), s.target, sources=s.sources)
            for s in samples if s.sample_id in results]
