#!/usr/bin/env bash
# Installs fedvla and starts it on the embedded default: web app + local worker, SQLite, no servers.
set -euo pipefail
cd "$(dirname "$0")/.."
# --inexact: whatever else the environment holds (the test extra) stays.
bash scripts/bootstrap.sh --extra worker --inexact
venv="${UV_PROJECT_ENVIRONMENT:-.venv}"
"$venv/bin/fedvla" db upgrade
"$venv/bin/fedvla" token ensure-admin
exec "$venv/bin/fedvla" serve "$@"
