#!/usr/bin/env bash
# The production topology without Docker, on loopback: `deploy/cluster.sh start|stop`.
# Fresh PostgreSQL databases for the instance and the warehouse on the local server, a Redis
# DB number as broker, the gRPC code server, webserver, daemon, two celery workers on
# different queues and nginx with the compose proxy's auth config. Every process runs in its
# own process group (setsid), so `stop` signals whole groups and leaves nothing behind.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${ETL_CLUSTER_DIR:-$ROOT/.cluster}
BIN=$ROOT/.venv/bin
PG=${ETL_CLUSTER_PG:-postgres@127.0.0.1:5432}
REDIS_DB=${ETL_CLUSTER_REDIS_DB:-13}
GRPC_PORT=${ETL_CLUSTER_GRPC_PORT:-4266}
WEB_PORT=${ETL_CLUSTER_WEB_PORT:-3300}
PROXY_PORT=${ETL_CLUSTER_PROXY_PORT:-8480}
DB_PREFIX=${ETL_CLUSTER_DB_PREFIX:-etl_cluster}
SERVICES=(code webserver daemon worker-imports worker-general proxy)

stop() {
  for name in "${SERVICES[@]}"; do
    pidfile=$DIR/run/$name.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  echo "cluster stopped"
}

launch() {  # name, command...: its own session and process group; log and pid under $DIR
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/run/$name.pid"
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
  local password
  password=$(head -c 12 /dev/urandom | base64 | tr -dc 'a-zA-Z0-9')
  cat >"$DIR/env" <<EOF
export DAGSTER_HOME=$DIR/home
export DAGSTER_POSTGRES_HOST=$host DAGSTER_POSTGRES_PORT=$port DAGSTER_POSTGRES_USER=$user
export DAGSTER_POSTGRES_PASSWORD= DAGSTER_POSTGRES_DB=${DB_PREFIX}_instance
export DAGSTER_MAX_CONCURRENT_RUNS=8
export DAGSTER_STORAGE_DIR=$DIR/storage DAGSTER_COMPUTE_LOGS_DIR=$DIR/storage/logs
export DAGSTER_GRPC_HOST=127.0.0.1 DAGSTER_GRPC_PORT=$GRPC_PORT
export ETL_EXECUTOR=celery
export CELERY_BROKER_URL=redis://127.0.0.1:6379/$REDIS_DB
export CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/$REDIS_DB
export ETL_REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB
export ETL_WAREHOUSE_URL=postgresql+psycopg://$user@$host:$port/${DB_PREFIX}_warehouse
export ETL_DATA_DIR=$DIR/data
export PATH=$BIN:\$PATH
EOF
  # shellcheck source=/dev/null
  source "$DIR/env"
  cd "$ROOT"
  launch code dagster api grpc -m etl_assets.definitions -h 127.0.0.1 -p "$GRPC_PORT"
  wait_for "the code server" dagster api grpc-health-check -p "$GRPC_PORT"
  launch webserver dagster-webserver -h 127.0.0.1 -p "$WEB_PORT" -w workspace.yaml
  launch daemon dagster-daemon run -w workspace.yaml
  launch worker-imports dagster-celery worker start -A dagster_celery.app \
    -y celery_worker.yaml -n imports -q imports
  launch worker-general dagster-celery worker start -A dagster_celery.app \
    -y celery_worker.yaml -n general -q aggregates,reports,dagster
  cp deploy/nginx/nginx.conf "$DIR/nginx/nginx.conf"
  sed -e "s/127.0.0.1:3000/127.0.0.1:$WEB_PORT/" deploy/nginx/upstreams.local.conf \
    >"$DIR/nginx/upstreams.conf"
  sed -i "s/listen 8080;/listen 127.0.0.1:$PROXY_PORT;/" "$DIR/nginx/nginx.conf"
  PROXY_USER=etl PROXY_PASSWORD=$password sh deploy/nginx/htpasswd.sh "$DIR/nginx/htpasswd"
  launch proxy nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" \
    -g "daemon off; pid $DIR/nginx/nginx.pid;"
  wait_for "the webserver" curl -sf "http://127.0.0.1:$WEB_PORT/server_info"
  wait_for "the proxy" curl -sf -u "etl:$password" "http://127.0.0.1:$PROXY_PORT/server_info"
  cat <<EOF
cluster running (logs: $DIR/logs, environment: source $DIR/env)
  UI        http://127.0.0.1:$PROXY_PORT/   user etl, password $password
  inbox     $DIR/data/inbox/<company>/   (etl-assets upload FILE --company SLUG --inbox ...)
  warehouse $ETL_WAREHOUSE_URL
  broker    $CELERY_BROKER_URL
stop with: make cluster-stop
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
