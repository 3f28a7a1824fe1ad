"""The system prompt and target for one sample: the same builder serves training and prediction.

`simple` is the tag layout researchers evaluate with; `detailed` renders the same fields through
a plain-language template file so the wording can be tried without code changes.
"""

import hashlib
import re
import string
from pathlib import Path

from ..core.config import Ablation
from ..core.errors import UserError
from ..corpus.conversations import Conversations, line_key

TASK_TEXT = ("Given the historical dialogue of a character in a movie, model the character's speaking "
             "style and behavioral patterns, and predict the next utterance the character would produce.")
INSTRUCTION_TEXT = ("Continue the dialogue as the character. Output only the character's line between "
                    "[ANSWER] and [/ANSWER].")
ANSWER_OPEN, ANSWER_CLOSE = "[ANSWER]", "[/ANSWER]"
MAX_HISTORY_LINES = 15
MAX_HISTORY_CHARS = 200
HISTORY_CANDIDATES = 200  # relevance is scored over at most this many lines per character
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "detailed.txt"
PROMPT_STYLES = ("simple", "detailed")


def target_text(continuation: str) -> str:
    return f"{ANSWER_OPEN}\n{continuation}\n{ANSWER_CLOSE}"


def extract_answer(text: str):
    """The text between the first [ANSWER] and the next [/ANSWER], stripped.

    Returns (answer, problem): problem is None, or one of `missing_open_tag`, `missing_close_tag`,
    `empty`. A missing close tag (runaway text) still yields what came after the open tag, but is
    reported.
    """
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return "", "missing_open_tag"
    rest = text[start + len(ANSWER_OPEN):]
    end = rest.find(ANSWER_CLOSE)
    answer = (rest if end < 0 else rest[:end]).strip()
    if end < 0:
        return answer, "missing_close_tag"
    if not answer:
        return "", "empty"
    return answer, None


def _tag_key(key) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(key)).strip("_").upper()


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and str(value).strip() != ""


def profile_fields(profile: dict, personality: dict) -> list:
    """(TAG, value) pairs: name, age, gender first, other scalar keys, then numeric dimensions."""
    fields = []
    for key in ("name", "age", "gender"):
        if _scalar(profile.get(key)):
            fields.append((f"USER_{key.upper()}", str(profile[key]).strip()))
    for key, value in profile.items():
        if key not in ("name", "age", "gender") and _scalar(value):
            fields.append((f"USER_{_tag_key(key)}", str(value).strip()))
    structured = personality.get("structured") if isinstance(personality, dict) else None
    if isinstance(structured, dict):
        for scale, subs in structured.items():
            if isinstance(subs, dict):
                for sub, score in subs.items():
                    if isinstance(score, (int, float)) and not isinstance(score, bool):
                        fields.append((f"DIM_{_tag_key(scale)}_{_tag_key(sub)}", score))
            elif isinstance(subs, (int, float)) and not isinstance(subs, bool):
                fields.append((f"DIM_{_tag_key(scale)}", subs))
    return fields


_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> frozenset:
    return frozenset(_WORD.findall(text.lower()))


def _history_rank(uid: str) -> bytes:
    return hashlib.blake2b(uid.encode(), digest_size=8).digest()


class HistoryIndex:
    """The character's own lines from the training pool, for `use_history` prompts.

    Built from the split's training pool, so a validation target can never be chosen. A sample
    is shown no line of its own conversation (`scene_of`: sample uid -> the split's conversation),
    so nothing said later in its scene, the same for training and validation samples (whose
    conversations are out of the pool), and no line that is, by the split's `line_key` (case,
    punctuation and spacing ignored), one of the sample's own dialogue lines or its target.
    """

    def __init__(self, pool_samples, scene_of: dict = None):
        self._scene_of = scene_of or {}
        by_char = {}
        for s in pool_samples:
            by_char.setdefault(s.user_hash, []).append(s)
        self._lines = {}
        for user_hash, members in by_char.items():
            members = sorted(members, key=lambda s: (_history_rank(s.uid), s.sample_id))[:HISTORY_CANDIDATES]
            self._lines[user_hash] = [(s.target, _words(s.target), line_key(s.target),
                                       self._scene_of.get(s.uid)) for s in members]

    @classmethod
    def for_pool(cls, pool_samples, samples, index=None):
        """The pool, each line tagged with its conversation among `samples` (the training file's):
        the split's own grouping (`index`) when it has one, else the conversation grouping built
        for the purpose (`--val_leak_check text`, or prediction reading a run's recorded pool)."""
        index = index if isinstance(index, Conversations) else Conversations(samples)
        return cls(pool_samples, {s.uid: index.label[s.sample_id] for s in samples})

    def fingerprint(self) -> str:
        """Changes whenever a prompt's history could: the candidate lines and their conversations."""
        stable = sorted((h, [(line, scene) for line, _, _, scene in lines]) for h, lines in self._lines.items())
        return hashlib.sha256(repr(stable).encode()).hexdigest()

    def lines_for(self, sample) -> list:
        """Most relevant to the sample's dialogue first (shared words), at most 15, 200 chars each."""
        context_words = _words(" ".join(content for _, content in sample.context))
        own_scene = self._scene_of.get(sample.uid)
        seen = {line_key(content) for _, content in sample.context} | {line_key(sample.target)}
        scored = []
        for order, (line, words, key, scene) in enumerate(self._lines.get(sample.user_hash, ())):
            if key in seen or (own_scene is not None and scene == own_scene):
                continue
            seen.add(key)
            scored.append((-len(words & context_words), order, line))
        scored.sort()
        return [line[:MAX_HISTORY_CHARS] for _, _, line in scored[:MAX_HISTORY_LINES]]


# The placeholders each template section is filled with (see PromptBuilder._detailed).
TEMPLATE_FIELDS = {
    "header": ("name", "user_hash"), "profile": ("name", "lines"), "profile_line": ("key", "value"),
    "task": ("name",), "history": ("name", "lines"), "history_line": ("number", "text"),
    "dialogue": ("name", "lines"), "user_line": ("name", "text"), "assistant_line": ("name", "text"),
    "instruction": ("name",),
}


def read_template(path) -> str:
    """A detailed template's text (the run record keeps it, so prediction needs no file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prompt template not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a prompt template") from None


def parse_template(text: str, path) -> dict:
    """Sections of a detailed template: `[name]` lines start a section, the text follows; `path`
    names where the text came from in errors."""
    sections, name = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"\[([a-z_]+)\]", line.strip())
        if m:
            name = m.group(1)
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
    sections = {k: "\n".join(v).strip("\n") for k, v in sections.items()}
    missing = [k for k in TEMPLATE_FIELDS if k not in sections]
    if missing:
        raise UserError(f"{path}: template section [{missing[0]}] missing (needs {', '.join(TEMPLATE_FIELDS)})")
    for section, allowed in TEMPLATE_FIELDS.items():
        _check_placeholders(path, section, sections[section], allowed)
    return sections


def _check_placeholders(path, section, text, allowed):
    """A template is filled with str.format: every `{field}` must be one the section supplies, and
    a literal brace must be doubled (`{{`), or the first sample would crash the run."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise UserError(f"{path}: template section [{section}]: {exc} (write a literal brace as {{{{ or }}}})") from None
    for field, spec, conv in fields:
        if field not in allowed or spec or conv:
            shown = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise UserError(f"{path}: template section [{section}]: unknown placeholder {shown} "
                            f"(allowed: {', '.join('{' + a + '}' for a in allowed)})")


class PromptBuilder:
    """Renders a sample's system message; `n_turns` and `n_history` let encoding truncate."""

    def __init__(self, ablation: Ablation, style: str = "simple", history: HistoryIndex = None,
                 max_context_turns: int = None, template_path=None, template_text: str = None):
        """`template_text` (a run record's copy) takes the place of reading `template_path`."""
        if style not in PROMPT_STYLES:
            raise UserError(f"--prompt_style: unknown style {style!r} (choose from {', '.join(PROMPT_STYLES)})")
        self.ablation = ablation
        self.style = style
        self.history = history if ablation.use_history else None
        self.max_context_turns = max_context_turns
        self.template_text, self.template = None, None
        if style == "detailed":
            source = template_path or DEFAULT_TEMPLATE
            self.template_text = read_template(source) if template_text is None else template_text
            self.template = parse_template(self.template_text, source if template_text is None else "run record")

    def turns(self, sample) -> list:
        if not self.ablation.use_context:
            return []
        turns = list(sample.context)
        if self.max_context_turns:
            turns = turns[-self.max_context_turns:]
        return turns

    def history_lines(self, sample) -> list:
        return self.history.lines_for(sample) if self.history is not None else []

    def system(self, sample, turns, history_lines) -> str:
        if self.style == "simple":
            return self._simple(sample, turns, history_lines)
        return self._detailed(sample, turns, history_lines)

    def _simple(self, sample, turns, history_lines) -> str:
        sections = [f"[USER_HASH={sample.user_hash}]"]
        if self.ablation.use_profile:
            tags = [f"[{tag}={value}]" for tag, value in profile_fields(sample.profile, sample.personality)]
            sections.append("\n".join(["[USER_PROFILE]", *tags]))
        sections.append(f"[TASK]\n{TASK_TEXT}")
        if history_lines:
            sections.append("\n".join(["[HISTORY]", *(f"{i}. {line}" for i, line in enumerate(history_lines, 1))]))
        if turns:
            lines = [f"{'Assistant' if role == 'assistant' else 'User'}: {content}" for role, content in turns]
            sections.append("\n".join(["[RECENT_DIALOGUE]", *lines]))
        sections.append(INSTRUCTION_TEXT)
        return "\n\n".join(sections)

    def _detailed(self, sample, turns, history_lines) -> str:
        t = self.template
        name = str(sample.profile.get("name") or "The character")
        sections = [t["header"].format(user_hash=sample.user_hash, name=name)]
        if self.ablation.use_profile:
            lines = [t["profile_line"].format(key=tag, value=value)
                     for tag, value in profile_fields(sample.profile, sample.personality)]
            sections.append(t["profile"].format(name=name, lines="\n".join(lines)))
        sections.append(t["task"].format(name=name))
        if history_lines:
            lines = [t["history_line"].format(number=i, text=line) for i, line in enumerate(history_lines, 1)]
            sections.append(t["history"].format(name=name, lines="\n".join(lines)))
        if turns:
            lines = [t["assistant_line" if role == "assistant" else "user_line"].format(name=name, text=content)
                     for role, content in turns]
            sections.append(t["dialogue"].format(name=name, lines="\n".join(lines)))
        sections.append(t["instruction"].format(name=name))
        return "\n\n".join(s for s in sections if s)
