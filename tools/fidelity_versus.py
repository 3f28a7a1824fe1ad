#!/usr/bin/env python3
"""A model's fidelity against another model's on the same items: the untrained baseline line.

    python predict_Chameleons.py --model RUN --input_file val200.json --output_file RUN/val200.json
    python predict_Chameleons.py --model RUN --untrained --input_file val200.json \\
        --output_file RUN/val200.untrained.json
    python tools/fidelity_versus.py RUN/val200.json RUN/val200.untrained.json

Reads both outputs' `<output>.fidelity.json` (or those files, or a run's `final_fidelity.json`,
given directly), which must come
from the same speaker classifier (the same run's training pool and the same input file), and
prints the second's figures as a baseline line with the paired margin of the first continuations
(`fidelity_summary.versus`), matched by sample id.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chameleons.core.errors import UserError, user_errors_exit
from chameleons.run.cli import OneLineParser
from chameleons.evaluate.fidelity_summary import format_versus, versus


def read_fidelity(path) -> dict:
    """An output's fidelity file (per-item rows and summary)."""
    path = Path(path)
    if not path.name.endswith((".fidelity.json", "final_fidelity.json")):
        path = path.with_name(path.name + ".fidelity.json")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable fidelity file ({exc.__class__.__name__}); predict with "
                        f"--fidelity on first") from None
    if not isinstance(value, dict) or not isinstance(value.get("items"), list) or "summary" not in value:
        raise UserError(f"{path}: no `summary` and `items`: not a fidelity file")
    return value


def main(argv=None) -> int:
    parser = OneLineParser(prog="fidelity_versus.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the model's prediction output (or its .fidelity.json)")
    parser.add_argument("baseline", help="the baseline model's output on the same input (e.g. --untrained)")
    parser.add_argument("--name", default="untrained", help="what the baseline is called in the line")
    args = parser.parse_args(argv)
    mine, theirs = read_fidelity(args.output), read_fidelity(args.baseline)
    keys = [f["summary"].get("classifier", {}).get("key") for f in (mine, theirs)]
    if keys[0] != keys[1]:
        raise UserError(f"{args.baseline}: scored by another speaker classifier ({keys[1]} vs {keys[0]}): predict "
                        f"the same input with a model folder of the same run")
    result = versus(mine["items"], theirs["items"], mine["summary"]["classifier"]["characters"])
    print(format_versus(result, args.name))
    return 0


if __name__ == "__main__":
    with user_errors_exit():
        sys.exit(main())
