#!/usr/bin/env python
"""Time of the validation split (grouping into conversations, near-duplicate joins, the
validation choice and the share check) on real and generated corpora (CPU only, one process).

Corpora: the Seinfeld conversion (`tools/convert_seinfeld.py`; needs requirements-test.txt),
the same with 10% of its episodes transcribed twice (`tools/retranscribe.py`), generated scene
corpora of about 25k / 50k / 100k samples (`tools/make_synthetic_corpus.py --scenes`), and a
file of 100,000 copies of one small record (refused: every copy is one conversation). Each
line prints the corpus, its samples, the seconds of grouping and of the split at N = 2, the
conversations and the largest one's share. Compare rows of one run: the machine is shared.

    python bench/bench_split.py                   # everything (about a minute on 2 cores)
    python bench/bench_split.py --only seinfeld   # rows whose name starts with it
"""

import argparse
import functools
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from chameleons.core.errors import UserError
from chameleons.corpus.conversations import Conversations
from chameleons.corpus.data import extract_samples
from chameleons.corpus.splitting import SplitSettings, check_validation_share, split_train_val


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def seinfeld() -> list:
    convert = _tool("convert_seinfeld")
    return convert.convert(convert.load_episodes())[0]


def corpora(only: str):
    """(name, maker) in order; each corpus is built only when its row runs."""
    msc, synth = _tool("make_synthetic_corpus"), _tool("synthetic_scenes")
    makers = [("seinfeld", seinfeld),
              ("seinfeld+10% twice", lambda: _tool("retranscribe").retranscribe(seinfeld(), 0.1)[0])]
    for samples in (25_000, 50_000, 100_000):
        scale = samples / 71_964
        makers.append((f"scenes {samples // 1000}k", lambda s=scale: synth.make_scene_corpus(0, *msc._counts(s))))
    makers.append(("100k copies of one record", lambda: [msc.make_corpus(0, 1, 1, 1)[0]] * 100_000))
    return [(name, make) for name, make in makers if name.startswith(only)]


def time_split(records) -> str:
    samples = extract_samples(records).samples
    start = time.perf_counter()
    grouped = Conversations(samples)
    grouping = time.perf_counter() - start
    start = time.perf_counter()
    split = split_train_val(samples, SplitSettings(2, 42, 0.1), grouped)
    try:
        check_validation_share(split)
        verdict = f"validation {split.stats.validation_share:.1%}"
    except UserError:
        verdict = "refused"
    splitting = time.perf_counter() - start
    return (f"{len(samples):>8,} samples  grouping {grouping:6.2f} s  split N=2 {splitting:6.2f} s  "
            f"{len(grouped):>6,} conversations, largest {grouped.largest / len(samples):6.1%}; "
            f"{len(grouped.near_duplicate_joins):,} near-duplicate joins; {verdict}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the corpora whose name starts with this")
    args = p.parse_args(argv)
    for name, make in corpora(args.only):
        print(f"{name:<28} {time_split(make())}", flush=True)


if __name__ == "__main__":
    main()
