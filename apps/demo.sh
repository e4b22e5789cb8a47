#!/bin/sh
# The main job: runs the example programs and the three workloads from a build tree (default: build).
# Usage: sh apps/demo.sh [BUILD_DIR]
set -eu
build=${1:-build}
bin="$build/apps"
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin/echo_server" ] || { echo "no programs in $bin: build first (cmake -S . -B $build && cmake --build $build)" >&2; exit 2; }
tmp=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

start_echo_server() {  # waits until the socket file exists
  "$bin/echo_server" --address "unix:$tmp/echo.sock" --authkey demo-key --clients 1 &
  server=$!
  i=0; while [ ! -S "$tmp/echo.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
}

echo "== mp1: a Process prints its pid and its parent's"
"$bin/mp1"

echo; echo "== mp2: the tutorial's Pool calls"
"$bin/mp2"

echo; echo "== threads and processes: children started while a busy thread holds a mutex, under each start method"
"$bin/threads_and_processes"

echo; echo "== Asio coroutines awaiting pool results (async_get, use_awaitable), then as_completed"
"$bin/pool_coroutines"

echo; echo "== echo server and client over a Unix socket, with an authkey"
start_echo_server
"$bin/echo_client" --address "unix:$tmp/echo.sock" --authkey demo-key "hello from mpx"
wait "$server"; server=""

if command -v python3 >/dev/null 2>&1; then
  echo; echo "== Python's multiprocessing.connection.Client talking to the C++ echo server"
  start_echo_server
  python3 "$here/python/echo_client.py" --address "unix:$tmp/echo.sock" --authkey demo-key "hello from Python"
  wait "$server"; server=""
fi

if command -v python3 >/dev/null 2>&1; then
  echo; echo "== a named shared memory block: C++ fills it, a stock Python script reads it by name"
  "$bin/shm_numpy_demo" --count 1000000 --script "$here/python/shm_reader.py"
fi

echo; echo "== the tutorial's simple thread and process pools, per-item overhead side by side"
"$bin/simple_pools"

echo; echo "== the manager daemon mpxd, its socket clients and named task queue"
sh "$here/mpxd_demo.sh" "$build"

echo; echo "== workload: primes (the tutorial's driver; known answers checked)"
"$bin/primes" --count-below 1e8 --no-progress

echo; echo "== workload: random matrices (GOE spacings against the Wigner surmise)"
"$bin/matrices" --no-progress --svg matrices.svg
echo "(histogram picture written to $(pwd)/matrices.svg)"

echo; echo "== workload: options pricing (Monte Carlo against Black-Scholes)"
"$bin/options"

if [ -x "$bin/mpi_primes" ] && command -v mpirun >/dev/null 2>&1; then
  echo; echo "== the same pool on MPI ranks: primes with mpx::mpi::Pool under mpirun (1 root + 2 workers)"
  # One host: the isolated launcher needs no ssh; Open MPI runs as root only when told to.
  OMPI_MCA_plm=isolated OMPI_MCA_btl=self,vader OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun -n 3 --oversubscribe "$bin/mpi_primes" --count-below 1e8
fi
