"""Read a Chameleons file and turn every data item into a training sample.

A record is one character in one film; `user_hash` names the character and may repeat across
records. A context turn is the character's own (role `assistant`) when its source is `user`
(any case) or the profile name; everyone else is role `user`.
"""

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError, where

SKIP_EMPTY_CONTINUATION = "empty_continuation"
SKIP_ENDS_WITH_CHARACTER = "context_ends_with_character_turn"
GROUP_BY = ("user_hash", "record")  # --sample_group_by: a character is a hash, or a hash within one record


@dataclass(frozen=True)
class Sample:
    sample_id: str  # position in the file, see `item_id`
    uid: str  # content hash: stable when the file is reordered
    record_index: int
    record_key: str  # content hash of the record: grouping by record must not depend on file order
    user_hash: str
    profile: dict
    personality: dict
    context: tuple  # ((role, content), ...), oldest first
    target: str
    sources: tuple = ()  # each context turn's speaker name as the file gives it (stripped), for fidelity's scenes

    def group_key(self, group_by: str = "user_hash") -> str:
        """The character a sample counts for under `--sample_group_by` (one of GROUP_BY)."""
        return self.user_hash if group_by == "user_hash" else f"{self.user_hash}#{self.record_key}"


@dataclass
class Corpus:
    path: str
    samples: list
    records: int = 0
    data_items: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {
            "file": self.path,
            "records": self.records,
            "characters": len({s.user_hash for s in self.samples}),
            "characters_by_record": len({s.group_key("record") for s in self.samples}),
            "data_items": self.data_items,
            "samples": len(self.samples),
            "skipped": dict(sorted(self.skipped.items())),
        }


def item_id(r: int, c: int, i: int) -> str:
    """A data item's id, its place in the file: `r<record>.c<collection>.i<item>` (0-based)."""
    return f"r{r}.c{c}.i{i}"


def item_position(sample_id: str) -> tuple:
    """(record, collection, item) of an `item_id`."""
    return tuple(int(p[1:]) for p in sample_id.split("."))


def _loads(text, path, line=None):
    """`line`: the JSON Lines line `text` is (its own position is then only a column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}" if line is None else f"line {line}"
        raise UserError(f"{path}: {at}, column {exc.colno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: {'' if line is None else f'line {line}: '}JSON nested too deeply to read") from None


def read_records(path) -> list:
    """A JSON list, or JSON Lines (one record per line) for big files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: is a folder, not a data file" if path.is_dir() else f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a JSON list or JSON Lines") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _loads(text, path)
    if not stripped.startswith("{"):
        value = _loads(text, path)
        raise UserError(f"{path}: top level must be a list of records (or JSON Lines), found {type(value).__name__}")
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict) and "user_hash" not in whole and "task" not in whole:
        raise UserError(f"{path}: top level must be a list of records (or JSON Lines), found an object")
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        records.append(_loads(line, path, lineno))
    return records


def check_values(value, path, index, field=None, depth=0):
    """Python's JSON reader lets through what no tokenizer or file takes: NaN and Infinity, and
    lone surrogate escapes such as "\\ud800"; nesting must stay within what Python can walk."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where(path, index, field)}: {value} is not a valid JSON number")
    if depth > 100:
        raise UserError(f"{where(path, index, field)}: nested more than 100 levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(f"{where(path, index, field)}: invalid text (lone surrogate at character {exc.start})") from None
    elif isinstance(value, dict):
        for key, v in value.items():
            check_values(key, path, index, field, depth + 1)
            check_values(v, path, index, f"{field}.{key}" if field else str(key), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_values(v, path, index, f"{field}[{i}]" if field else f"[{i}]", depth + 1)


def _dict_or_empty(value, path, index, name):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where(path, index, name)}: must be an object, found {type(value).__name__}")
    return value


def _list(value, path, index, name):
    if not isinstance(value, list):
        found = "nothing" if value is None else type(value).__name__
        raise UserError(f"{where(path, index, name)}: must be a list, found {found}")
    return value


def is_character_turn(source: str, name: str) -> bool:
    source = source.strip()
    return source.lower() == "user" or (bool(name) and source == name.strip())


def _content_uid(user_hash, context, target) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(user_hash.encode())
    for role, content in context:
        h.update(b"\x00" + role.encode() + b"\x01" + content.encode())
    h.update(b"\x02" + target.encode())
    return h.hexdigest()


def _context_turns(item: dict, path, r: int, ipath: str, name: str) -> list:
    """The item's non-empty context turns as (role, content, source name), oldest first."""
    if "context" not in item:
        raise UserError(f"{where(path, r, ipath + '.context')}: missing (use [] for an item with no context)")
    turns = []
    for t, turn in enumerate(_list(item["context"], path, r, f"{ipath}.context")):
        tpath = f"{ipath}.context[{t}]"
        turn = _dict_or_empty(turn, path, r, tpath)
        source, content = turn.get("source", ""), turn.get("content", "")
        if source is None:
            source = ""
        if content is None:
            content = ""
        if not isinstance(source, str):
            raise UserError(f"{where(path, r, tpath + '.source')}: must be a string, found {type(source).__name__}")
        if not isinstance(content, str):
            raise UserError(f"{where(path, r, tpath + '.content')}: must be a string, found {type(content).__name__}")
        content = content.strip()
        if content:
            turns.append(("assistant" if is_character_turn(source, name) else "user", content, source.strip()))
    return turns


def extract_samples(records, path="<data>", for_prediction: bool = False) -> Corpus:
    """One sample per usable data item; unusable items are counted by reason, bad ones raise.

    `for_prediction` keeps every item (a test file may have no continuations) and does not
    require a `continuation` key.
    """
    if not isinstance(records, list):
        raise UserError(f"{path}: top level must be a list of records, found {type(records).__name__}")
    corpus = Corpus(path=str(path), samples=[], records=len(records))
    seen_records = Counter()
    for r, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{where(path, r)}: must be an object, found {type(record).__name__}")
        check_values(record, path, r)
        user_hash = record.get("user_hash")
        if not isinstance(user_hash, str) or not user_hash.strip():
            raise UserError(f"{where(path, r, 'user_hash')}: missing or not a non-empty string")
        user = _dict_or_empty(record.get("user"), path, r, "user")
        profile = _dict_or_empty(user.get("profile"), path, r, "user.profile")
        personality = _dict_or_empty(user.get("personality"), path, r, "user.personality")
        name = profile.get("name")
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise UserError(f"{where(path, r, 'user.profile.name')}: must be a string, found {type(name).__name__}")
        if "task" not in record:
            raise UserError(f"{where(path, r, 'task')}: missing")
        task = _dict_or_empty(record["task"], path, r, "task")
        collections = _list(task.get("task_behavior_collections"), path, r, "task.task_behavior_collections")
        pending = []
        for c, collection in enumerate(collections):
            cpath = f"task.task_behavior_collections[{c}]"
            collection = _dict_or_empty(collection, path, r, cpath)
            for i, item in enumerate(_list(collection.get("data"), path, r, f"{cpath}.data")):
                ipath = f"{cpath}.data[{i}]"
                item = _dict_or_empty(item, path, r, ipath)
                corpus.data_items += 1
                if "continuation" not in item and not for_prediction:
                    raise UserError(f"{where(path, r, ipath + '.continuation')}: missing")
                continuation = item.get("continuation", "")
                if continuation is None:
                    continuation = ""
                if not isinstance(continuation, str):
                    raise UserError(f"{where(path, r, ipath + '.continuation')}: must be a string, found {type(continuation).__name__}")
                turns = _context_turns(item, path, r, ipath, name)
                target = continuation.strip()
                context = tuple((role, content) for role, content, _ in turns)
                reason = skip_reason(context, target)
                if reason and not for_prediction:
                    corpus.skipped[reason] += 1
                    continue
                pending.append(dict(sample_id=item_id(r, c, i), uid=_content_uid(user_hash, context, target),
                                    record_index=r, user_hash=user_hash, profile=profile,
                                    personality=personality, context=context, target=target,
                                    sources=tuple(source for _, _, source in turns)))
        content_key = hashlib.blake2b("".join(p["uid"] for p in pending).encode(), digest_size=6).hexdigest()
        seen_records[content_key] += 1  # identical duplicate records stay separate groups
        record_key = f"{content_key}.{seen_records[content_key]}"
        corpus.samples.extend(Sample(record_key=record_key, **p) for p in pending)
    return corpus


def load_corpus(path, for_prediction: bool = False) -> Corpus:
    return extract_samples(read_records(path), path, for_prediction)


def skip_reason(context, target: str):
    """Why an item is not a training sample (None when it is): it needs a target, and a context
    not ending on the character (the model answers someone else's line)."""
    if not target:
        return SKIP_EMPTY_CONTINUATION
    if ends_on_character(context):
        return SKIP_ENDS_WITH_CHARACTER
    return None


def ends_on_character(context) -> bool:
    """The scene's last turn is the character's own: the model would answer its own line."""
    return bool(context) and context[-1][0] == "assistant"


def is_training_sample(sample: Sample) -> bool:
    return skip_reason(sample.context, sample.target) is None


def require_samples(corpus: Corpus):
    if len(corpus.samples) < 2:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(corpus.skipped.items())) or "none"
        raise UserError(f"{corpus.path}: {len(corpus.samples)} usable samples in {corpus.records} records "
                        f"(skipped: {skipped}); at least 2 are needed to train and validate")
