#!/usr/bin/env bash
# MLflow tracking server for production: metadata in PostgreSQL, artifacts on S3 (or any
# fsspec/boto-reachable store), served through the server (--serve-artifacts), so clients
# only need MLFLOW_TRACKING_URI=http://<host>:5000.
set -euo pipefail
: "${MLFLOW_PG_URI:?postgresql+psycopg2://user:password@host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS:?s3://bucket/mlflow-artifacts or /shared/mlflow-artifacts}"
exec mlflow server \
  --backend-store-uri "$MLFLOW_PG_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS" \
  --serve-artifacts \
  --host 0.0.0.0 --port 5000
