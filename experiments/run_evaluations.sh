#!/usr/bin/env bash
# The committed evaluation tables: CML with its default config vs popularity, implicit ALS and BPR
# (implicit's defaults) and ALS given the same recency (als-recency), leave-last-out, full
# ranking, on MovieLens read from ../shared.
#   bash experiments/run_evaluations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
for ds in ml-100k/u.data ml-latest-small/ratings.csv; do
  path=../shared/datasets/$ds
  name=$(dirname "$ds")
  if [ ! -f "$path" ]; then echo "skip $name: $path not found"; continue; fi
  cmd=".venv/bin/recsys-metric evaluate $path -k 10 20 --models cml,popularity,als,bpr,als-recency --quiet --json experiments/results/evaluate_$name.json"
  { echo "# $name: CML (defaults) vs peers, leave-last-out, full ranking"; echo
    echo "Command: \`$cmd\`"; echo
    $cmd; } > "experiments/results/evaluate_$name.md"
  cat "experiments/results/evaluate_$name.md"
done
