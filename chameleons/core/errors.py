"""One clear line for bad input, exit code 2, no traceback."""

import sys
from contextlib import contextmanager

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Something the user can fix: a bad file, flag or config key."""


def where(path, record=None, field=None) -> str:
    """`file`, `file: record 3`, `file: record 3, field task.x`: the prefix every data error uses.
    `record` is the 0-based list index; people count records from 1, as JSON Lines count lines."""
    parts = [str(path)]
    loc = []
    if record is not None:
        loc.append(f"record {record + 1}")
    if field is not None:
        loc.append(f"field {field}")
    if loc:
        parts.append(", ".join(loc))
    return ": ".join(parts)


@contextmanager
def user_errors_exit(speaks=lambda: True):
    """Turn a UserError into `error: ...` on stderr and exit code 2. Under torchrun every rank
    runs the same checks on the same input: the entry scripts pass `launch.maybe_rank_zero` as
    `speaks`, so the line is printed once (rank 0), not once per rank; every rank exits 2."""
    try:
        yield
    except UserError as exc:
        if speaks():
            print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT) from None
