#!/usr/bin/env bash
# The production topology without Docker, on loopback: `deploy/cluster.sh start|stop`, and
# `deploy/cluster.sh restart SERVICE` for one service (e.g. a worker that was killed).
# Fresh PostgreSQL databases for the instance and the warehouse on the local server, a Redis
# DB number as broker, the gRPC code server, webserver, daemon, celery workers on different
# queues (`imports`, scaled by ETL_CLUSTER_IMPORT_WORKERS; the rest), the tenant API
# (`etl-assets api`) and nginx with the compose proxy's config (basic auth; the API at /api/
# with its own tokens). Every process runs in its own process group (setsid), so `stop`
# signals whole groups and leaves nothing behind.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${ETL_CLUSTER_DIR:-$ROOT/.cluster}
BIN=$ROOT/.venv/bin
PG=${ETL_CLUSTER_PG:-postgres@127.0.0.1:5432}
REDIS_DB=${ETL_CLUSTER_REDIS_DB:-13}
GRPC_PORT=${ETL_CLUSTER_GRPC_PORT:-4266}
WEB_PORT=${ETL_CLUSTER_WEB_PORT:-3300}
PROXY_PORT=${ETL_CLUSTER_PROXY_PORT:-8480}
# Unset: 8490, or a free port when 8490 is taken (another cluster); set: that port or fail.
API_PORT=${ETL_CLUSTER_API_PORT:-}
DB_PREFIX=${ETL_CLUSTER_DB_PREFIX:-etl_cluster}
IMPORT_WORKERS=${ETL_CLUSTER_IMPORT_WORKERS:-1}
# Steps each worker runs at once: one per worker, so scaling is by workers, as in compose.
CONCURRENCY=${ETL_CLUSTER_WORKER_CONCURRENCY:-1}
# Tests shorten the broker's redelivery delay to see a lost step redelivered within a minute.
VISIBILITY_TIMEOUT=${ETL_CLUSTER_VISIBILITY_TIMEOUT:-}
QUEUE_WAIT=${ETL_CLUSTER_QUEUE_WAIT_SECONDS:-60}

signal_groups() {  # signal, names...: signal each running service's process group
  local sig=$1 name; shift
  for name in "$@"; do
    if [ -f "$DIR/run/$name.pid" ]; then
      kill "-$sig" -- "-$(cat "$DIR/run/$name.pid")" 2>/dev/null || true  # already gone
    fi
  done
}

any_alive() {  # names...: whether a process of any of these services' groups still runs
  local name
  for name in "$@"; do
    [ -f "$DIR/run/$name.pid" ] && kill -0 -- "-$(cat "$DIR/run/$name.pid")" 2>/dev/null && return 0
  done
  return 1
}

stop_services() {  # names...: TERM their groups together, KILL what still runs after 10 s
  signal_groups TERM "$@"
  for _ in $(seq 50); do any_alive "$@" || break; sleep 0.2; done
  signal_groups KILL "$@"
  local name
  for name in "$@"; do rm -f "$DIR/run/$name.pid"; done
}

stop() {
  local names=() pidfile
  for pidfile in "$DIR"/run/*.pid; do
    [ -e "$pidfile" ] && names+=("$(basename "$pidfile" .pid)")
  done
  [ ${#names[@]} -eq 0 ] || stop_services "${names[@]}"
  echo "cluster stopped"
}

launch() {  # name, command...: its own session and process group; log and pid under $DIR
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/run/$name.pid"
}

worker() {  # name, queues
  launch "worker-$1" dagster-celery worker start -A dagster_celery.app \
    -y "$DIR/celery_worker.yaml" -n "$1" -q "$2" -- --concurrency="$CONCURRENCY"
}

service() {  # name: start that one service
  case $1 in
    code) launch code dagster api grpc -m etl_assets.definitions -h 127.0.0.1 -p "$GRPC_PORT" ;;
    webserver) launch webserver dagster-webserver -h 127.0.0.1 -p "$WEB_PORT" -w workspace.yaml ;;
    daemon) launch daemon dagster-daemon run -w workspace.yaml ;;
    # Behind the proxy on loopback: nginx connects from 127.0.0.1, the only trusted forwarder.
    api) launch api etl-assets api --host 127.0.0.1 --port "$API_PORT" --forwarded-allow-ips 127.0.0.1 ;;
    worker-imports-*) worker "${1#worker-}" imports ;;
    worker-general) worker general aggregates,reports,dagster ;;
    proxy)
      launch proxy nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" \
        -g "daemon off; pid $DIR/nginx/nginx.pid;"
      ;;
    *) echo "unknown service: $1" >&2; return 2 ;;
  esac
}

port_free() {  # port: nothing listens on it on 127.0.0.1
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {  # a port the kernel has free on 127.0.0.1
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # description, command: poll until it succeeds, at most 60 s
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what (logs in $DIR/logs)" >&2
  stop
  exit 1
}

start() {
  stop >/dev/null
  rm -rf "$DIR"
  mkdir -p "$DIR"/{home,storage,logs,run,data,nginx}
  local user=${PG%@*} hostport=${PG#*@}
  local host=${hostport%:*} port=${hostport#*:}
  for db in "${DB_PREFIX}_instance" "${DB_PREFIX}_warehouse"; do
    psql -q -h "$host" -p "$port" -U "$user" -d postgres \
      -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
  done
  redis-cli -n "$REDIS_DB" flushdb >/dev/null
  cp "$ROOT/dagster.yaml" "$DIR/home/dagster.yaml"
  cp "$ROOT/celery_worker.yaml" "$DIR/celery_worker.yaml"
  if [ -n "$VISIBILITY_TIMEOUT" ]; then
    # Workers look for expired deliveries every 10 polls of 10 s; every poll, for the test.
    sed -i "s/^\( *\)visibility_timeout: .*/\1visibility_timeout: $VISIBILITY_TIMEOUT\n\1unacked_restore_throttle: 1/" \
      "$DIR/celery_worker.yaml"
  fi
  if [ -z "$API_PORT" ]; then
    API_PORT=8490
    port_free "$API_PORT" || API_PORT=$(free_port)
  fi
  local password metrics_token
  password=$(head -c 12 /dev/urandom | base64 | tr -dc 'a-zA-Z0-9')
  metrics_token=$(head -c 24 /dev/urandom | base64 | tr -dc 'a-zA-Z0-9')
  cat >"$DIR/env" <<EOF
export DAGSTER_HOME=$DIR/home
export DAGSTER_POSTGRES_HOST=$host DAGSTER_POSTGRES_PORT=$port DAGSTER_POSTGRES_USER=$user
export DAGSTER_POSTGRES_PASSWORD= DAGSTER_POSTGRES_DB=${DB_PREFIX}_instance
export DAGSTER_MAX_CONCURRENT_RUNS=8
export DAGSTER_STORAGE_DIR=$DIR/storage DAGSTER_COMPUTE_LOGS_DIR=$DIR/storage/logs
export DAGSTER_GRPC_HOST=127.0.0.1 DAGSTER_GRPC_PORT=$GRPC_PORT
export ETL_EXECUTOR=celery ETL_CELERY_QUEUE_WAIT_SECONDS=$QUEUE_WAIT
export CELERY_BROKER_URL=redis://127.0.0.1:6379/$REDIS_DB
export CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/$REDIS_DB
export ETL_REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB
export ETL_WAREHOUSE_URL=postgresql+psycopg://$user@$host:$port/${DB_PREFIX}_warehouse
export ETL_DATA_DIR=$DIR/data
export ETL_METRICS_TOKEN=$metrics_token
export ETL_CLUSTER_API_PORT=$API_PORT
export PATH=$BIN:\$PATH
EOF
  # shellcheck source=/dev/null
  source "$DIR/env"
  cd "$ROOT"
  # The API first: it creates the warehouse tables at startup, before any sensor tick can
  # (two processes creating the same tables at once may fail one of them). Its port is
  # checked before: whatever already held it would answer the health check.
  if ! port_free "$API_PORT"; then
    echo "port $API_PORT is taken: set ETL_CLUSTER_API_PORT to a free one" >&2
    stop
    exit 1
  fi
  service api
  wait_for "the API" curl -sf "http://127.0.0.1:$API_PORT/healthz"
  service code
  wait_for "the code server" dagster api grpc-health-check -p "$GRPC_PORT"
  service webserver
  service daemon
  for i in $(seq "$IMPORT_WORKERS"); do service "worker-imports-$i"; done
  service worker-general
  cp deploy/nginx/nginx.conf "$DIR/nginx/nginx.conf"
  sed -e "s/127.0.0.1:3000/127.0.0.1:$WEB_PORT/" -e "s/127.0.0.1:8090/127.0.0.1:$API_PORT/" \
    deploy/nginx/upstreams.local.conf >"$DIR/nginx/upstreams.conf"
  sed -i "s/listen 8080;/listen 127.0.0.1:$PROXY_PORT;/" "$DIR/nginx/nginx.conf"
  PROXY_USER=etl PROXY_PASSWORD=$password sh deploy/nginx/htpasswd.sh "$DIR/nginx/htpasswd"
  service proxy
  wait_for "the webserver" curl -sf "http://127.0.0.1:$WEB_PORT/server_info"
  wait_for "the proxy" curl -sf -u "etl:$password" "http://127.0.0.1:$PROXY_PORT/server_info"
  wait_for "the API behind the proxy" curl -sf "http://127.0.0.1:$PROXY_PORT/healthz"
  cat <<EOF
cluster running (logs: $DIR/logs, environment: source $DIR/env)
  UI        http://127.0.0.1:$PROXY_PORT/   user etl, password $password
  API       http://127.0.0.1:$PROXY_PORT/api/v1/uploads   bearer token: etl-assets token create SLUG
            (source the environment first)
  metrics   http://127.0.0.1:$API_PORT/metrics   Authorization: Bearer $metrics_token
  inbox     $DIR/data/inbox/<company>/   (etl-assets upload FILE --company SLUG --inbox ...)
  warehouse $ETL_WAREHOUSE_URL
  broker    $CELERY_BROKER_URL
stop with: make cluster-stop
EOF
}

restart() {  # name: stop one service and start it again in the running cluster's environment
  # shellcheck source=/dev/null
  source "$DIR/env"
  API_PORT=$ETL_CLUSTER_API_PORT
  cd "$ROOT"
  stop_services "$1"
  service "$1"
  echo "restarted $1"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart "${2:?usage: $0 restart SERVICE}" ;;
  *) echo "usage: $0 start|stop|restart SERVICE" >&2; exit 2 ;;
esac
