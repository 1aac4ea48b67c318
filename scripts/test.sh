#!/usr/bin/env bash
# Installs what the tests need and runs them (pytest arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --extra test
export FEDVLA_TEST_POSTGRES_URL="${FEDVLA_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
export FEDVLA_TEST_REDIS_URL="${FEDVLA_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
exec "${UV_PROJECT_ENVIRONMENT:-.venv}/bin/python" -m pytest --cov --cov-report=term --cov-report=xml "$@"
