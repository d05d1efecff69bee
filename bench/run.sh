#!/usr/bin/env bash
# Runs the fastdl benchmark (bench/bench.py): builds the release binaries,
# installs missing anchors (aria2, nginx-light, lftp, curl, time) with apt-get,
# and prints one markdown table (also written to bench/out/results.md).
#   bench/run.sh              full run (3 runs per tool, ~10-15 min)
#   QUICK=1 bench/run.sh      1 run, small sizes
#   RUNS=5 CASES=1,3 bench/run.sh
set -euo pipefail
exec python3 "$(dirname "$0")/bench.py" "$@"
