#!/bin/sh
# The main job: runs the example programs from a build tree (default: build).
# Usage: sh apps/demo.sh [BUILD_DIR]
set -eu
build=${1:-build}
bin="$build/apps"
[ -d "$bin" ] || { echo "no $bin: build first (cmake -S . -B $build && cmake --build $build)" >&2; exit 2; }
tmp=$(mktemp -d)
cleanup() { [ -n "${server:-}" ] && kill "$server" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

echo "== echo server and client over a Unix socket, with an authkey"
"$bin/echo_server" --address "unix:$tmp/echo.sock" --authkey demo-key --count 1 &
server=$!
"$bin/echo_client" --address "unix:$tmp/echo.sock" --authkey demo-key hello from mpx
wait "$server"; server=""
