#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine (a head and a worker node, each its own
# `ray start`, token authentication on) plus an MLflow tracking server on 127.0.0.1.
#
#   eval "$(cluster/local.sh up)"     # prints the exports a client needs; progress goes to stderr
#   ray job submit --working-dir . -- python -m jobs.train --features ... --task sub --out ...
#   cluster/local.sh down             # stops exactly this cluster's processes, nobody else's
#   cluster/local.sh status
#
# State (token, logs, Ray temp dir, MLflow sqlite store and artifacts, pid files) lives in
# ASRN_CLUSTER_DIR (default: ./.cluster). Ports are not Ray's defaults, so this cluster can run
# beside other Ray clusters on the same host; every one can be overridden by an env var.
#
# `down` never calls `ray stop` (it kills every Ray process of the machine). Each node and the
# MLflow server run in their own process group, and every process this script starts carries
# ASRN_LOCAL_CLUSTER=<state dir> in its environment (Ray workers and job drivers inherit it),
# so `down` kills those process groups, then whatever still carries the marker. A pid file holds
# "PID STARTTIME" (field 22 of /proc/PID/stat): `down` signals a group only while its leader has that
# start time, leads its own group and carries the marker, so a reused pid or an edited file is left alone.
#
# Everything listens on 127.0.0.1 (see cluster/README.md for what Ray cannot be told to bind), and the
# state dir, its logs and every file the cluster writes are private to the user (umask 077, dirs 0700).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

number() {  # number ENV_VAR DEFAULT: the variable's value (or DEFAULT), refused unless digits only
    local value="${!1:-$2}"
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "local.sh: error: $1=$value is not a whole number" >&2; return 1; }
    echo "$value"
}

STATE="${ASRN_CLUSTER_DIR:-$PWD/.cluster}"
GCS_PORT="$(number ASRN_RAY_PORT 6380)"
DASHBOARD_PORT="$(number ASRN_DASHBOARD_PORT 8266)"
CLIENT_PORT="$(number ASRN_RAY_CLIENT_PORT 20002)"     # outside Ray's default worker ports 10002-19999;
                                                       # used only when ray[client] is installed
MLFLOW_PORT="$(number ASRN_MLFLOW_PORT 5055)"
AGENT_PORT_BASE="$(number ASRN_AGENT_PORT_BASE 52400)"  # per-node agent ports: head base+1..4, worker base+11..14
WORKER_PORT_BASE="$(number ASRN_WORKER_PORT_BASE 21000)"  # head: base..base+499, worker: base+500..base+999
HEAD_CPUS="$(number ASRN_HEAD_CPUS 1)"
WORKER_CPUS="$(number ASRN_WORKER_CPUS 2)"
OBJECT_STORE_BYTES="$(number ASRN_OBJECT_STORE_BYTES 300000000)"
UP_TIMEOUT="$(number ASRN_UP_TIMEOUT 120)"

# The nodes run from the project's venv, so a job's `python` (resolved on PATH) is the venv's.
if [[ -n "${ASRN_VENV:-}" ]]; then venv_bin="$ASRN_VENV/bin"
elif [[ -x "$repo/.venv/bin/ray" ]]; then venv_bin="$repo/.venv/bin"
else venv_bin="$(dirname "$(command -v ray)")"
fi

log() { echo "local.sh: $*" >&2; }
die() {
    log "error: $*"
    if [[ -n "${up_in_progress:-}" ]]; then up_in_progress=; log "stopping what was started"; cmd_down || true; fi
    exit 1
}

carries_marker() {  # carries_marker PID: its environment holds this cluster's marker (unreadable: no)
    local environ
    environ="$(tr '\0' '\n' 2>/dev/null < "/proc/$1/environ")" || return 1
    grep -qxF -- "ASRN_LOCAL_CLUSTER=$STATE" <<<"$environ"
}

# PIDs of every process whose environment carries this cluster's marker (this shell excluded).
marked_pids() {
    local p
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [[ "$p" == "$$" || "$p" == "${BASHPID:-}" ]] && continue
        if carries_marker "$p"; then echo "$p"; fi
    done
}

stat_fields() {  # stat_fields PID: /proc/PID/stat from field 3 (state) on; the name may hold spaces and ')'
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    echo "${stat##*) }"
}

# The pid in pid file $1 while it is still the process `up` started: the recorded start time, leader of
# its own process group, this cluster's marker. Fails for a gone process, a reused pid or a foreign one.
our_pid() {
    local pid="" started="" fields
    [[ -f "$1" ]] || return 1
    read -r pid started _ <"$1" || true
    [[ "$pid" =~ ^[1-9][0-9]*$ && "$started" =~ ^[0-9]+$ ]] || return 1
    read -r -a fields <<<"$(stat_fields "$pid")" || return 1
    [[ "${fields[0]:-}" != Z && "${fields[2]:-}" == "$pid" && "${fields[19]:-}" == "$started" ]] || return 1
    carries_marker "$pid" || return 1
    echo "$pid"
}

alive() { our_pid "$1" >/dev/null; }

print_exports() {  # quoted for eval, whatever the state dir is called
    # RAY_ADDRESS (the job server) is for `ray job submit`; `asrn` commands join the GCS at ASRN_RAY_ADDRESS
    printf 'export %s=%q\n' RAY_ADDRESS "http://127.0.0.1:$DASHBOARD_PORT" ASRN_RAY_ADDRESS "127.0.0.1:$GCS_PORT" \
        RAY_AUTH_MODE token \
        RAY_AUTH_TOKEN_PATH "$STATE/auth_token" MLFLOW_TRACKING_URI "http://127.0.0.1:$MLFLOW_PORT"
}

# Start "$@" detached in its own session (so its own process group), marked, logging to $1; record
# "PID STARTTIME" in $2.
start_detached() {
    local logfile="$1" pidfile="$2" pid fields; shift 2
    ASRN_LOCAL_CLUSTER="$STATE" setsid "$@" >"$logfile" 2>&1 </dev/null &
    pid=$!
    read -r -a fields <<<"$(stat_fields "$pid")" || true
    echo "$pid ${fields[19]:-}" >"$pidfile"
}

wait_for() {  # wait_for WHAT CMD...: retry CMD until it succeeds or UP_TIMEOUT passes
    local what="$1" deadline=$((SECONDS + UP_TIMEOUT)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${UP_TIMEOUT}s waiting for $what (logs: $STATE/logs)"
        alive "$STATE/head.pid" || die "the head node exited (see $STATE/logs/head.log)"
        sleep 1
    done
}

nodes_alive() {  # the job server answers and at least 2 nodes are ALIVE
    "$venv_bin/python" - "$DASHBOARD_PORT" <<'EOF'
import sys
from ray.util.state import list_nodes
nodes = list_nodes(address=f"http://127.0.0.1:{sys.argv[1]}", filters=[("state", "=", "ALIVE")])
sys.exit(0 if len(nodes) >= 2 else 1)
EOF
}

# Fixed agent ports: two nodes on one host must not both take Ray's default 52365, and with fixed
# ports the raylet does not wait on port files (which times out on a busy 2-core machine).
agent_port_args() {  # one argument a line, for mapfile
    printf '%s\n' --dashboard-agent-listen-port $(($1 + 1)) --dashboard-agent-grpc-port $(($1 + 2)) \
        --runtime-env-agent-port $(($1 + 3)) --metrics-export-port $(($1 + 4))
}

mlflow_ready() { curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health"; }

cmd_up() {
    if alive "$STATE/head.pid"; then
        log "already up (state: $STATE)"
        print_exports
        return
    fi
    umask 077  # the token, logs, MLflow store and Ray's session files are the user's alone
    mkdir -p "$STATE/logs" "$STATE/mlartifacts"
    chmod 700 "$STATE" "$STATE/logs"
    STATE="$(cd "$STATE" && pwd)"
    # The job server is part of Ray's dashboard, which only starts with ray[default]'s packages.
    "$venv_bin/python" -c "import ray.dashboard.optional_deps" 2>/dev/null \
        || die "Ray's job server needs ray[default] (aiohttp_cors, opencensus, grpcio, ...) in $venv_bin/python"
    if [[ ! -s "$STATE/auth_token" ]]; then
        "$venv_bin/python" -c "import secrets; print(secrets.token_hex(32), end='')" >"$STATE/auth_token"
    fi
    chmod 600 "$STATE/auth_token"
    up_in_progress=1
    trap 'die "a command of up failed (line $LINENO)"' ERR

    export PATH="$venv_bin:$PATH"
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
    export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"   # jobs on this cluster log here
    export RAY_USAGE_STATS_ENABLED=0
    # every worker of this cluster asks its own State API (Train V2's placement-group cleaner does), not the one
    # "auto" finds: with another Ray instance on this machine, "auto" fails and a sweep waits forever
    export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
    # Ray Train's controller polls every 0.25 s, not 2 s; no preemption watcher (asrn.ray_session)
    export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.25}"
    export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="${RAY_TRAIN_ENABLE_PREEMPTION_WATCHER:-0}"
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${ASRN_DRAIN_TIMEOUT_S:-0}"  # `down` means now
    # Patience on a busy small machine: the raylet gives its agents 15 s to start by default.
    export RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-120000}"
    export RAY_raylet_start_wait_time_s="${RAY_raylet_start_wait_time_s:-120}"
    export RAY_enable_worker_prestart="${RAY_enable_worker_prestart:-0}"
    # Ray's Prometheus endpoint (--metrics-export-port) answers anyone without the token, on every
    # interface: off unless asked for (ASRN_RAY_METRICS=1); nothing in asrn reads Ray's metrics.
    export RAY_enable_metrics_collection="${ASRN_RAY_METRICS:-0}"

    log "starting MLflow on 127.0.0.1:$MLFLOW_PORT (store: $STATE/mlflow.db)"
    start_detached "$STATE/logs/mlflow.log" "$STATE/mlflow.pid" \
        "$venv_bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/mlartifacts"

    local client_args=() head_agent worker_agent
    mapfile -t head_agent < <(agent_port_args "$AGENT_PORT_BASE")
    mapfile -t worker_agent < <(agent_port_args $((AGENT_PORT_BASE + 10)))
    if "$venv_bin/python" -c "from ray._private.utils import get_ray_client_dependency_error as e; \
raise SystemExit(e() is not None)" 2>/dev/null; then
        client_args=(--ray-client-server-port "$CLIENT_PORT")
    fi
    log "starting the Ray head (GCS 127.0.0.1:$GCS_PORT, dashboard/job server 127.0.0.1:$DASHBOARD_PORT)"
    start_detached "$STATE/logs/head.log" "$STATE/head.pid" \
        "$venv_bin/ray" start --head --block --disable-usage-stats \
        --node-ip-address 127.0.0.1 --port "$GCS_PORT" --temp-dir "$STATE/ray" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        "${head_agent[@]}" "${client_args[@]}" \
        --min-worker-port "$WORKER_PORT_BASE" --max-worker-port "$((WORKER_PORT_BASE + 499))" \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES"

    log "starting a Ray worker node ($WORKER_CPUS CPUs)"
    wait_for "the GCS on port $GCS_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$GCS_PORT"
    start_detached "$STATE/logs/worker.log" "$STATE/worker.pid" \
        "$venv_bin/ray" start --block --disable-usage-stats \
        --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 --temp-dir "$STATE/ray" \
        "${worker_agent[@]}" \
        --min-worker-port "$((WORKER_PORT_BASE + 500))" --max-worker-port "$((WORKER_PORT_BASE + 999))" \
        --num-cpus "$WORKER_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES"

    wait_for "2 alive Ray nodes" nodes_alive
    wait_for "MLflow on port $MLFLOW_PORT" mlflow_ready
    trap - ERR
    up_in_progress=
    log "up: 2 Ray nodes, job server http://127.0.0.1:$DASHBOARD_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT"
    print_exports
}

cmd_down() {
    local f pid pids grace=20
    [[ -d "$STATE" ]] || { log "nothing to stop ($STATE does not exist)"; return; }
    STATE="$(cd "$STATE" && pwd)"
    for f in worker head mlflow; do
        if pid="$(our_pid "$STATE/$f.pid")"; then
            log "stopping $f (process group $pid)"
            kill -TERM -- "-$pid" 2>/dev/null || true
        elif [[ -f "$STATE/$f.pid" ]]; then
            log "not signalling $f: the process in $f.pid is gone or not this cluster's"
        fi
        rm -f "$STATE/$f.pid"
    done
    # Ray workers and job drivers live in process groups of their own: sweep by the marker.
    pids="$(marked_pids)"
    while [[ -n "$pids" ]] && ((grace-- > 0)); do
        # shellcheck disable=SC2086
        ((grace == 10)) && kill -TERM $pids 2>/dev/null
        sleep 1
        pids="$(marked_pids)"
    done
    if [[ -n "$pids" ]]; then
        log "killing what did not stop: ${pids//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    log "down (state kept in $STATE)"
}

cmd_status() {
    local f pid
    for f in head worker mlflow; do
        if pid="$(our_pid "$STATE/$f.pid")"; then echo "$f: running (pid $pid)"; else echo "$f: stopped"; fi
    done
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_exports ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
