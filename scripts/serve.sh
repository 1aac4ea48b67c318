#!/usr/bin/env bash
# Installs fedvla and starts it on the embedded default: web app + local worker, SQLite, no servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/fedvla db upgrade
.venv/bin/fedvla token ensure-admin
exec .venv/bin/fedvla serve "$@"
