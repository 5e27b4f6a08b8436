#!/usr/bin/env bash
# The production profile on real services, on this machine: PostgreSQL (Debian's package,
# installed if missing, bound to 127.0.0.1) holding the Dagster instance's storage
# (dagster-postgres) and the MLflow tracking server's backend store; MLflow's artifacts in a folder.
#
#   deploy/prod.sh up      # install if needed, start both, write $PROD_DIR/env and dagster.yaml
#   deploy/prod.sh down    # stop both (the data stays in $PROD_DIR)
#   deploy/prod.sh status
#
# Settings (environment): PROD_DIR (default $SDFT_OPS_HOME/prod, else ./.sdft_ops/prod),
# PG_PORT (55432), MLFLOW_PORT (55000), VENV (./.venv). After `up`: `source $PROD_DIR/env`
# exports DAGSTER_HOME and MLFLOW_TRACKING_URI (used when the update YAML's tracking_uri is null) for `make dev` / `sdft-ops` / `dagster`.
# PostgreSQL refuses to run as root: as root, the cluster runs as Debian's `postgres` user.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROD_DIR="${PROD_DIR:-${SDFT_OPS_HOME:-$ROOT/.sdft_ops}/prod}"
PG_PORT="${PG_PORT:-55432}"
MLFLOW_PORT="${MLFLOW_PORT:-55000}"
VENV="${VENV:-$ROOT/.venv}"
PG_USER=sdft
PGDATA="$PROD_DIR/pg"
SOCKETS="$PROD_DIR/pg_sockets"

die() { echo "prod.sh: $*" >&2; exit 1; }

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
}

as_pg() {  # run a PostgreSQL server command as a non-root user
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_postgres() {
    pg_bin >/dev/null && return 0
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    echo "installing PostgreSQL (Debian's postgresql package)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
        || die "apt-get install postgresql failed"
    pg_bin >/dev/null || die "PostgreSQL installed but no initdb under /usr/lib/postgresql/*/bin"
}

up() {
    install_postgres
    local bin; bin="$(pg_bin)"
    [[ -x "$VENV/bin/mlflow" ]] || die "$VENV/bin/mlflow not found: run make install first (or set VENV)"
    mkdir -p "$PROD_DIR" "$SOCKETS" "$PROD_DIR/mlartifacts" "$PROD_DIR/dagster_home"
    if [[ "$(id -u)" == 0 ]]; then  # the postgres user must reach and own its folders
        chown postgres "$SOCKETS"
        local d="$PROD_DIR"; while [[ "$d" != / ]]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
    fi
    if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
        mkdir -p "$PGDATA"
        [[ "$(id -u)" == 0 ]] && chown postgres "$PGDATA"
        as_pg "$bin/initdb" -D "$PGDATA" -U "$PG_USER" -A trust -E UTF8 >"$PROD_DIR/initdb.log" 2>&1 \
            || die "initdb failed: $PROD_DIR/initdb.log"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        touch "$PROD_DIR/postgres.log"; [[ "$(id -u)" == 0 ]] && chown postgres "$PROD_DIR/postgres.log"
        as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PROD_DIR/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $SOCKETS" start >/dev/null \
            || die "PostgreSQL did not start: $PROD_DIR/postgres.log"
    fi
    for db in dagster mlflow; do
        "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
            || "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
    done
    local pg_uri="postgresql://$PG_USER@127.0.0.1:$PG_PORT"
    if ! curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; then
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
            --backend-store-uri "postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/mlflow" --artifacts-destination "$PROD_DIR/mlartifacts" \
            --workers 1 >"$PROD_DIR/mlflow.log" 2>&1 &
        local pid=$!; echo "$pid" >"$PROD_DIR/mlflow.pid"
        local deadline=$((SECONDS + 180))
        until curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; do
            kill -0 "$pid" 2>/dev/null || die "the MLflow server exited: $(tail -n 1 "$PROD_DIR/mlflow.log")"
            (( SECONDS < deadline )) || die "the MLflow server did not answer in 180 s: $PROD_DIR/mlflow.log"
            sleep 0.5
        done
    fi
    cat >"$PROD_DIR/dagster_home/dagster.yaml" <<EOF
# written by deploy/prod.sh: the instance's runs, events and schedules in PostgreSQL
storage:
  postgres:
    postgres_db:
      username: $PG_USER
      password: ""
      hostname: 127.0.0.1
      db_name: dagster
      port: $PG_PORT
      scheme: postgresql+psycopg2   # SQLAlchemy 2.1 defaults to psycopg 3, not installed
telemetry:
  enabled: false
EOF
    cat >"$PROD_DIR/env" <<EOF
export DAGSTER_HOME="$PROD_DIR/dagster_home"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export SDFT_OPS_MLFLOW_UI="http://127.0.0.1:$MLFLOW_PORT"
export SDFT_OPS_PROD_POSTGRES="$pg_uri"
EOF
    echo "PostgreSQL on 127.0.0.1:$PG_PORT, MLflow on http://127.0.0.1:$MLFLOW_PORT; source $PROD_DIR/env"
}

down() {
    if [[ -f "$PROD_DIR/mlflow.pid" ]]; then
        local pid; pid="$(cat "$PROD_DIR/mlflow.pid")"
        pkill -TERM -P "$pid" 2>/dev/null || true  # gunicorn / uvicorn workers
        kill -TERM "$pid" 2>/dev/null || true
        rm -f "$PROD_DIR/mlflow.pid"
    fi
    local bin; bin="$(pg_bin)" || return 0
    if [[ -f "$PGDATA/PG_VERSION" ]]; then
        as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    echo "stopped (data kept in $PROD_DIR)"
}

status() {
    local bin; bin="$(pg_bin)" || die "PostgreSQL is not installed"
    as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1 && echo "postgres: up on 127.0.0.1:$PG_PORT" || echo "postgres: down"
    curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null && echo "mlflow: up on 127.0.0.1:$MLFLOW_PORT" || echo "mlflow: down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: deploy/prod.sh up | down | status" ;;
esac
