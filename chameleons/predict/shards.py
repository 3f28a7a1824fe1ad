"""The files a prediction run writes, and the resumable shards behind them: every path is
checked before the run starts, and every rank appends each finished item to its own shard so
that a killed run resumes where it stopped. Separate from the flow so that the on-disk layout
of partial results (and when they may be reused) is read in one place.

Shards: every rank appends each finished item as one JSON line (flushed) to
`<output>.parts/rank<R>.jsonl`; `meta.json` there records the settings the lines were made
with, the models' identities included (a fingerprint of their files, so a model retrained into
the same folder is a different model). A rerun with the same settings reads the lines back and
generates only the rest; rank 0 merges everything into the output, written atomically, then
removes the folder.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..core.errors import UserError
from ..core.outputs import write_json
from .generation import Sampling
from .model_loading import model_fingerprint


def output_paths(output_file) -> dict:
    out = Path(output_file)
    return {"output": out, "summary": Path(f"{out}.summary.json"), "examples": Path(f"{out}.examples.log"),
            "eval": Path(f"{out}.eval.json"), "parts": Path(f"{out}.parts")}


def check_output(output_file, overwrite: bool, probe: bool = True):
    """Everything the run will write can be written: found out before hours of generation, and
    before anything is created. `probe` tries a write (a test file, removed at once): do it
    after every other check."""
    paths = output_paths(output_file)
    out = paths["output"]
    if out.is_dir():
        raise UserError(f"--output_file {out}: is a folder")
    if out.exists() and not overwrite:
        raise UserError(f"--output_file {out}: exists; pass --overwrite to replace it")
    for key in ("summary", "examples", "eval"):
        if paths[key].is_dir():
            raise UserError(f"--output_file {out}: {paths[key]} is a folder")
    if paths["parts"].exists() and not paths["parts"].is_dir():
        raise UserError(f"--output_file {out}: {paths['parts']} (partial results) is a file, not a folder")
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--output_file {out}: {folder} is a file, not a folder")
    if not probe:
        return
    try:  # os.access says yes to root on a read-only mount: try it
        fd, probe = tempfile.mkstemp(prefix=".chameleons-write-test.", dir=folder)
    except OSError as exc:
        raise UserError(f"--output_file {out}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


class PartStore:
    """`<output>.parts/`: meta.json (settings), rank<R>.jsonl (one finished item a line) and, for
    ensembles, <stage>.rank<R>.jsonl (one member's proposals or scores of an item a line)."""

    def __init__(self, output_file, rank: int = 0):
        self.dir = Path(f"{output_file}.parts")
        self.rank = rank
        self._file = None
        self._stage_files = {}
        self.created = False  # by this run: removed again if bad input stops it (nothing written)
        self.bad_lines = 0
        self.stale_lines = 0

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def prepare(self, meta: dict, rows, num_samples: int, overwrite: bool) -> dict:
        """(Rank 0.) The results already done with these settings, by sample id."""
        self.created = not self.dir.exists()
        old = None
        if self.dir.exists():
            try:
                old = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
            has_lines = any(p.stat().st_size for p in self.dir.glob("*.jsonl"))
            if old != meta and (old is not None or has_lines):
                if not overwrite:
                    raise UserError(self._mismatch(old, meta))
                shutil.rmtree(self.dir)
                old = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if old != meta:
            write_json(self.meta_path, meta)
        uid_of = {r.sample_id: r.sample.uid for r in rows}
        done = {}
        for path in sorted(self.dir.glob("rank*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        res = json.loads(line)
                    except json.JSONDecodeError:
                        self.bad_lines += 1  # a line cut short when a run was killed
                        continue
                    sid = res.get("sample_id") if isinstance(res, dict) else None
                    ok = (sid in uid_of and res.get("uid") == uid_of[sid]
                          and isinstance(res.get("continuations"), list) and len(res["continuations"]) == num_samples)
                    if not ok:
                        self.stale_lines += 1
                        continue
                    done.setdefault(sid, res)
        return done

    def _mismatch(self, old, meta) -> str:
        """One line saying what changed; a retrained model is named as such."""
        old = old if isinstance(old, dict) else {}
        differ = sorted(k for k in set(meta) | set(old) if old.get(k) != meta.get(k))
        if old and old.get("models") == meta.get("models") and "model_fingerprints" in differ:
            changed = [m for m, a, b in zip(meta["models"], old.get("model_fingerprints") or [],
                                            meta["model_fingerprints"]) if a != b] or meta["models"]
            return (f"{self.dir}: holds partial results of an earlier version of --model {changed[0]} (its config or "
                    f"weight files changed since, e.g. retrained); pass --overwrite to discard them, or delete the folder")
        return (f"{self.dir}: holds partial results made with other settings "
                f"({', '.join(differ) or 'unreadable meta.json'} differ); pass --overwrite to "
                f"discard them, or delete the folder")

    @staticmethod
    def _open_append(path: Path):
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                ends_clean = f.read(1) == b"\n"
            if not ends_clean:  # killed mid-line: start the next line on a fresh line
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
        return open(path, "a", encoding="utf-8")

    def open(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = self._open_append(self.dir / f"rank{self.rank}.jsonl")

    def append(self, result: dict):
        self._file.write(json.dumps(result, ensure_ascii=False) + "\n")
        self._file.flush()

    def read_stage(self, stage: str, uid_of: dict) -> dict:
        """An ensemble stage's lines for these items ({sample_id: uid}), from every rank's file
        (an earlier run may have had another world size); unreadable or stale lines are skipped."""
        found = {}
        for path in sorted(self.dir.glob(f"{stage}.rank*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # cut short by a kill
                    sid = value.get("sample_id") if isinstance(value, dict) else None
                    if sid in uid_of and value.get("uid") == uid_of[sid]:
                        found.setdefault(sid, value)
        return found

    def append_stage(self, stage: str, value: dict):
        if stage not in self._stage_files:
            self._stage_files[stage] = self._open_append(self.dir / f"{stage}.rank{self.rank}.jsonl")
        f = self._stage_files[stage]
        f.write(json.dumps(value, ensure_ascii=False) + "\n")
        f.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        for f in self._stage_files.values():
            f.close()
        self._stage_files = {}

    def remove(self):
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_meta(model_dirs, rows, sampling: Sampling, backend: str, prompts: dict) -> dict:
    """What the shard lines depend on; a rerun resumes only when all of it matches. `prompts`: the
    run spec's prompt flags and the token budget, recorded by name beside the hash of the ids."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.sample_id}\x00{r.sample.uid}\x00".encode())
        h.update(",".join(map(str, r.ids)).encode() + b"\x01")  # prompts: history pool, template, budget
    return {
        "input": h.hexdigest()[:24],
        "models": [str(Path(d).resolve()) for d in model_dirs],
        "model_fingerprints": [model_fingerprint(d) for d in model_dirs],
        "backend": backend,
        **prompts,
        "sampling": asdict(sampling),
    }
