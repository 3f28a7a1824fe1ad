"""Runs the trainer's (or the predictor's) main() on many argument lists in one process where torch, transformers and
deepspeed cannot be imported (each import raises ImportError): a case that reaches one of them
fails instead of printing its error line. Used by tests/test_bad_inputs.py.

Input (argv[1]): a JSON list of {"id", "args", "cwd", "env", "script"} (script: the entry
module, default train_distributed_Chameleons); output on stdout: one JSON list
of {"id", "rc", "stderr", "seconds"}."""

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

BLOCKED = ("torch", "transformers", "deepspeed")
HIDDEN = ("tensorboard", "tensorboardX")  # look not installed to find_spec (the suite installs tensorboard)


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported before the error (blocked by tests/run_without_torch.py)")
        return None


def hiding(find_spec, names=HIDDEN):
    """`importlib.util.find_spec` that says `names` are not installed."""
    return lambda name, package=None: None if name.split(".")[0] in names else find_spec(name, package)


def main():
    sys.meta_path.insert(0, _Block())
    import importlib.util

    importlib.util.find_spec = hiding(importlib.util.find_spec)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    cases = json.loads(Path(sys.argv[1]).read_text())
    started = time.perf_counter()
    import importlib

    from chameleons.core.errors import user_errors_exit

    scripts = {name: importlib.import_module(name) for name in
               sorted({c.get("script", "train_distributed_Chameleons") for c in cases})}

    import_seconds = time.perf_counter() - started
    results = []
    for case in cases:
        saved = dict(os.environ)
        os.environ.update(case["env"])
        os.chdir(case["cwd"])
        err = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                with user_errors_exit():
                    rc = scripts[case.get("script", "train_distributed_Chameleons")].main(case["args"])
            except SystemExit as exc:
                rc = exc.code
            except Exception as exc:  # noqa: BLE001 - reported to the test as a traceback
                rc = 1
                print(f"Traceback (most recent call last): {type(exc).__name__}: {exc}", file=sys.stderr)
        results.append({"id": case["id"], "rc": rc, "stderr": err.getvalue(),
                        "seconds": time.perf_counter() - t + (import_seconds if not results else 0.0)})
        os.environ.clear()
        os.environ.update(saved)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
