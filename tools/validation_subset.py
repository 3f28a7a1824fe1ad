#!/usr/bin/env python3
"""A fixed subset of a training run's validation items, as a Chameleons file to predict: the
same file for every seed and setting that share the validation set, so their fidelity (and
BLEU/ROUGE-L) figures compare.

    python tools/validation_subset.py outputs/ctx_N2_seed_42 --data_file data/train.json --n 200 \\
        --out outputs/val_subset_200.json

The validation ids come from the run's split_manifest.json (never re-split): the corpus's whole
validation set (every sample of the validation conversations, never in any N's training), kept to
the characters the run trained on; the subset is the first --n of them in an order fixed by each
item's content hash (not by file position or seed): `final_fidelity.validation_subset`, the items
a run's `--final_fidelity_items N` scores.
Each record keeps its fields; its collections keep only the chosen items (a collection left
empty is dropped).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.core.outputs import write_json
from chameleons.corpus.data import extract_samples, read_records
from chameleons.run.cli import OneLineParser, positive_int
from chameleons.predict.final_fidelity import validation_subset


def manifest_validation(run_dir) -> dict:
    """The manifest's whole validation set (an older manifest: the run's own validation ids),
    its epoch 0 training ids and the grouping that says what a character is."""
    path = Path(run_dir) / "split_manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {run_dir} a training run folder?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ids = manifest.get("whole_validation") or manifest.get("validation")
        train = manifest["epochs"][0]["train"] if "whole_validation" in manifest else None
    except (ValueError, AttributeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        ids = None
    if not isinstance(ids, list) or not ids:
        raise UserError(f"{path}: no list of validation ids")
    return {"ids": ids, "train": train, "group_by": manifest.get("group_by", "user_hash")}


def subset_records(records, chosen) -> list:
    """The records holding chosen items, with only those items, in file order."""
    keep = {}
    for s in chosen:
        r, c, i = (int(p[1:]) for p in s.sample_id.split("."))
        keep.setdefault(r, {}).setdefault(c, set()).add(i)
    out = []
    for r in sorted(keep):
        record = json.loads(json.dumps(records[r]))
        collections = record["task"]["task_behavior_collections"]
        record["task"]["task_behavior_collections"] = [
            {**coll, "data": [it for i, it in enumerate(coll["data"]) if i in keep[r][c]]}
            for c, coll in enumerate(collections) if c in keep[r]]
        out.append(record)
    return out


def main(argv=None) -> int:
    parser = OneLineParser(prog="validation_subset.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data_file", required=True, help="the run's training file")
    parser.add_argument("--n", type=positive_int, default=200, help="items in the subset (default 200)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    manifest = manifest_validation(args.run_dir)
    records = read_records(args.data_file)
    samples = extract_samples(records, args.data_file).samples
    by_id, trained = {s.sample_id: s for s in samples}, None
    if manifest["train"] is not None:  # the characters the run trained on
        trained = {by_id[i].group_key(manifest["group_by"]) for i in manifest["train"] if i in by_id}
    chosen = validation_subset(samples, manifest["ids"], args.n, trained, manifest["group_by"])
    if Path(args.out).exists():
        raise UserError(f"--out {args.out}: exists")
    write_json(args.out, subset_records(records, chosen))
    print(f"wrote {args.out}: {len(chosen)} of {len(manifest['ids'])} validation items of {args.run_dir}"
          + (" (characters it trained on)" if trained is not None else ""))
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
