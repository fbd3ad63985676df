#!/usr/bin/env bash
# Install everything, then run the whole test suite: unit, BPF test-run, netns integration.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/bootstrap.sh"
cd "$here"
exec .venv/bin/pytest -q -p no:cacheprovider "$@" tests
