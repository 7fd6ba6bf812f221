#!/usr/bin/env bash
# The GPU check, one call (bench/gpu_check.py says what it runs and writes):
#   bash bench/gpu_check.sh            # build, smoke, headline, cuda, peers, tests (<= 420 s)
#   bash bench/gpu_check.sh --harness  # optional second call: the wider sweep (<= 200 s)
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
