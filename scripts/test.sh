#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest-xdist workers, one core each (tests/conftest.py gives each worker one torch thread):
# the suite takes about 6 minutes on 2 cores instead of 10. GENRL_TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest -q -n "${GENRL_TEST_WORKERS:-2}" tests "$@"
