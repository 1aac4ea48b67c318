#!/usr/bin/env bash
# Makes the project's environment exactly as uv.lock says: `bash scripts/bootstrap.sh [OPTION...]`
# passes its options to `uv sync --frozen` (`--extra worker`, `--extra test`, `--inexact`).
# The environment is .venv, or $UV_PROJECT_ENVIRONMENT; Python 3.12 is found by uv (PATH, pyenv's
# .python-version, uv's own installs). uv is taken from $UV, else from PATH when it is 0.13 or
# newer, else installed from PyPI into .tools/uv at the version below.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
UV_MINIMUM=0.13.0

recent_enough() {  # the uv at $1 is UV_MINIMUM or newer
  local version
  version="$("$1" --version 2>/dev/null | cut -d' ' -f2)" || return 1
  [ "$(printf '%s\n%s\n' "$UV_MINIMUM" "$version" | sort -V | head -n1)" = "$UV_MINIMUM" ]
}

find_uv() {
  if [ -n "${UV:-}" ]; then
    echo "$UV"
  elif command -v uv >/dev/null 2>&1 && recent_enough "$(command -v uv)"; then
    command -v uv
  else
    if ! recent_enough .tools/uv/bin/uv; then
      echo "Installing uv $UV_VERSION from PyPI into .tools/uv" >&2
      python3 -m venv .tools/uv
      .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    fi
    echo .tools/uv/bin/uv
  fi
}

uv="$(find_uv)"
if ! "$uv" python find "${UV_PYTHON:-3.12}" >/dev/null 2>&1; then
  echo "fedvla needs Python 3.12 and uv finds none: install one (your system's python3.12," \
    "pyenv, or 'uv python install 3.12' where uv can download it), or set UV_PYTHON" >&2
  exit 1
fi
"$uv" sync --frozen "$@"
