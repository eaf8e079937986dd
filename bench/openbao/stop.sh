#!/usr/bin/env bash
# Stops the OpenBao server that setup.sh started in DIR (by the PID in DIR/bao.pid):
# SIGTERM, then up to 30 s for it to exit, then SIGKILL. The data directory is kept.
# Usage: stop.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: stop.sh DIR" >&2; exit 2; }
pidfile=$1/bao.pid
[ -f "$pidfile" ] || { echo "no $pidfile: nothing to stop" >&2; exit 0; }
pid=$(cat "$pidfile")
# Only signal the PID if it still is a bao server (PIDs get reused).
if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' server '; then
  rm -f "$pidfile"; exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 300); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }
  sleep 0.1
done
echo "bao pid $pid did not exit within 30 s; sending SIGKILL" >&2
kill -KILL "$pid" 2>/dev/null || true
for _ in $(seq 1 50); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }
  sleep 0.1
done
echo "bao pid $pid still running" >&2
exit 1
