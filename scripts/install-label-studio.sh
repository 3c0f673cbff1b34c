#!/usr/bin/env sh
# Install Label Studio 1.23.2 into its own virtualenv for the e2e tests (takes minutes, ~1 GB).
# Target: $LSAL_LS_VENV, default ~/.cache/lsal/ls-1.23.2 (cache this directory in CI).
# Safe to run concurrently with the tests: both take the same file lock (tests/lsharness.py).
set -eu
cd "$(dirname "$0")/.."
exec python -c "from tests.lsharness import ensure_label_studio; print(ensure_label_studio())"
