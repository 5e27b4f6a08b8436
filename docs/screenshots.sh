#!/usr/bin/env bash
# Screenshots of the two UIs after `make demo`, taken the way a person looks at them: the Dagster
# UI's latest evaluation (its retention plot is markdown metadata, a data-URI image) and MLflow's
# model registry (each version's description names its update and parent version).
#
#   SDFT_OPS_HOME=... DAGSTER_HOME=... bash docs/screenshots.sh   # the demo's data homes
#
# Needs Debian's chromium (`apt-get install chromium`) and playwright-core (`npm install --no-save
# playwright-core` in docs/), which clicks past Dagster's first-visit modal and opens the plot's
# markdown (docs/screenshots.mjs). Writes docs/img/dagster_eval.png and docs/img/mlflow_lineage.png;
# both servers listen on 127.0.0.1 only and are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SDFT_OPS_HOME:=$PWD/.sdft_ops}" "${DAGSTER_HOME:=$PWD/.dagster_home}"
export SDFT_OPS_HOME DAGSTER_HOME DAGSTER_DISABLE_TELEMETRY=1
.venv/bin/dagster dev -h 127.0.0.1 -p 3000 -f definitions.py >/tmp/screenshots-dagster.log 2>&1 &
DAGSTER=$!
.venv/bin/mlflow ui --host 127.0.0.1 --port 5000 \
    --backend-store-uri "sqlite:///$SDFT_OPS_HOME/mlflow.db" >/tmp/screenshots-mlflow.log 2>&1 &
MLFLOW=$!
trap 'kill $DAGSTER $MLFLOW 2>/dev/null || true' EXIT
for url in http://127.0.0.1:3000/server_info http://127.0.0.1:5000/health; do
  for _ in $(seq 120); do curl -sf "$url" >/dev/null && break; sleep 1; done
done
mkdir -p docs/img
(cd docs && node screenshots.mjs img)
ls -l docs/img/
