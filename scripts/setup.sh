#!/usr/bin/env bash
# Creates .venv and installs requirements.txt into it, then any other requirements files named as
# arguments (scripts/test.sh adds requirements-test.txt); a file already installed is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
for file in requirements.txt "$@"; do
  stamp=.venv/.${file%.txt}.sha256
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if [ "$file" = requirements.txt ]; then
      .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    .venv/bin/python -m pip install --quiet -r "$file"
    echo "$want" > "$stamp"
  fi
done
