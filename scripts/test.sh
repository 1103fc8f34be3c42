#!/usr/bin/env bash
# Run the test suite with pytest. Unlike bare pytest, "no tests collected"
# (pytest exit code 5) is a failure: an empty run must never pass CI.
#
#   scripts/test.sh [pytest args...]
set -uo pipefail

cd "$(dirname "$0")/.."
PYTEST="${PYTEST:-.venv/bin/pytest}"

"$PYTEST" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test: ERROR: pytest collected no tests; failing on purpose" >&2
    exit 1
fi
exit "$rc"
