#!/usr/bin/env bash
# The committed comparison reports (issue 4): every model tuned with the same Optuna budget on a
# validation split carved from train, then fit on all of train and scored once on test.
#   bash experiments/run_compare.sh [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
trials=${1:-20}
for ds in ml-100k/u.data ml-latest-small/ratings.csv; do
  path=../shared/datasets/$ds
  name=$(dirname "$ds")
  if [ ! -f "$path" ]; then echo "skip $name: $path not found"; continue; fi
  .venv/bin/recsys-metric compare "$path" --models cml,popularity,als,bpr --tune --trials "$trials" \
    --out "experiments/results/compare_$name" --quiet
done
