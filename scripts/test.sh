#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (what CI runs); the 10 slowest tests are listed
# at the end so a test that grows slow is seen in every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n auto --durations=10 tests "$@"
