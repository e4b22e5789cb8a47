#!/bin/sh
# The manager daemon with its socket clients: starts mpxd on a Unix socket with a fresh
# private authkey, serves a task queue with task_worker, runs two manager_client instances
# that share a queue and a dict, submits named tasks, reads the dict from Python, runs a stock
# Python SyncManager and a C++/Python pipeline over named queues against it, then
# stops mpxd with SIGTERM (the workers follow it) and removes everything it made.
# Usage: sh apps/mpxd_demo.sh [BUILD_DIR]
set -eu
build=${1:-build}
bin="$build/apps"
here=$(cd "$(dirname "$0")" && pwd)
for p in mpxd task_worker manager_client mixed_pipeline; do
  [ -x "$bin/$p" ] || { echo "no $p in $bin: build first (cmake -S . -B $build && cmake --build $build)" >&2; exit 2; }
done
tmp=$(mktemp -d)
daemon="" worker="" consumer=""
cleanup() {
  for pid in $consumer $worker $daemon; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

sock="$tmp/mpxd.sock"
key="$tmp/authkey"
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key")
set -- --address "unix:$sock" --authkey-file "$key"

echo "== mpxd on unix:$sock (authkey file mode $(stat -c %a "$key"))"
"$bin/mpxd" "$@" --log-level warn &
daemon=$!
i=0; while [ ! -S "$sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$sock" ] || { echo "mpxd did not start" >&2; exit 1; }

echo; echo "== task_worker: two processes serve the task queue 'work'"
"$bin/task_worker" "$@" --queue work --processes 2 &
worker=$!

echo; echo "== two clients share the queue 'jobs' and the dict 'demo'"
"$bin/manager_client" "$@" consumer &
consumer=$!
"$bin/manager_client" "$@" producer --count 1000
wait "$consumer"; consumer=""

echo; echo "== a client submits named tasks; the workers run them"
"$bin/manager_client" "$@" submit --count 10

if command -v python3 >/dev/null 2>&1; then
  echo; echo "== Python (standard library only, speaking proto/manager.md) reads and writes the dict"
  python3 "$here/python/manager_dict.py" "$@" --name demo set python.says hello
  python3 "$here/python/manager_dict.py" "$@" --name demo items

  echo; echo "== a stock Python SyncManager against mpxd: dict, queue, lock"
  python3 "$here/python/sync_manager_client.py" "$@"

  echo; echo "== one pipeline, two languages: C++ feeds the named queue 'pipeline-jobs', Python answers on 'pipeline-results'"
  python3 "$here/python/mixed_pipeline.py" "$@" &
  consumer=$!
  "$bin/mixed_pipeline" "$@" --count 1000
  wait "$consumer"; consumer=""
fi

echo; echo "== mpxd stops on SIGTERM; the workers stop with it"
kill -TERM "$daemon"
wait "$daemon"; daemon=""
wait "$worker"; worker=""
if [ -e "$sock" ]; then echo "mpxd left its socket file behind" >&2; exit 1; fi
echo "socket file removed"
