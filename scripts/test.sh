#!/usr/bin/env bash
# Installs what the tests need and runs them (pytest arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --extra test
export FEDVLA_TEST_POSTGRES_URL="${FEDVLA_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
export FEDVLA_TEST_REDIS_URL="${FEDVLA_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
# Every tier (-m ""): SQLite and PostgreSQL, Redis, real federations, the browser; in parallel.
exec "${UV_PROJECT_ENVIRONMENT:-.venv}/bin/python" -m pytest -m "" --durations=25 \
  --cov --cov-report=term --cov-report=xml "$@"
