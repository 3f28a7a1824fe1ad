#!/usr/bin/env bash
# Creates .venv and installs requirements.txt into it, then any other requirements files named as
# arguments (scripts/test.sh adds requirements-test.txt); a file already installed is skipped.
# uv installs them (resolving and downloading in parallel: a fresh .venv in about 40 s here, pip
# took about 90 s), with the bytecode compiled at install as pip does (this environment sets
# PYTHONDONTWRITEBYTECODE, so nothing compiled at import is kept). uv reads no pip configuration,
# so pip's find-links, indexes and constraints are handed to it (on these machines: the CPU
# build of torch on disk). pip installs instead when uv cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

pip_settings() {  # pip's configured sources as uv flags
  .venv/bin/python -m pip config list 2>/dev/null | while IFS='=' read -r key value; do
    value=${value#\'}; value=${value%\'}
    for v in $value; do
      case "$key" in
        *.find-links) echo "--find-links=$v" ;;
        *.extra-index-url) echo "--extra-index-url=$v" ;;
        *.index-url) echo "--index-url=$v" ;;
        *.constraint) [ -f "$v" ] && echo "--constraint=$v" ;;
      esac
    done
  done | sort -u
}

install() {
  if [ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet "uv==$UV_VERSION"; then
    # shellcheck disable=SC2046
    if .venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode \
        --index-strategy unsafe-best-match $(pip_settings) -r "$1"; then
      return 0
    fi
    echo "setup.sh: uv could not install $1; installing with pip" >&2
  fi
  .venv/bin/python -m pip install --quiet -r "$1"
}

for file in requirements.txt "$@"; do
  stamp=.venv/.${file%.txt}.sha256
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    install "$file"
    echo "$want" > "$stamp"
  fi
done
