#!/bin/sh
# Installs, from Debian 12 packages, everything mpx needs to build, test and run
# its examples. Safe to run again: apt-get skips what is already there.
#   sh cmake/install-deps.sh          the build, tests and examples
#   sh cmake/install-deps.sh clang    also clang and its runtimes (libFuzzer targets, TSan)
#   sh cmake/install-deps.sh bench    also ZeroMQ, Redis and hiredis (the peers in mpx_bench peers)
set -eu
packages="g++ cmake make python3 libboost-dev libboost-serialization-dev libcereal-dev
  libssl-dev libfmt-dev libspdlog-dev doctest-dev libcli11-dev libeigen3-dev nlohmann-json3-dev
  libopenmpi-dev openmpi-bin libboost-mpi-dev"
for extra in "$@"; do
  case "$extra" in
    clang) packages="$packages clang libclang-rt-14-dev" ;;
    bench) packages="$packages libzmq3-dev redis-server libhiredis-dev" ;;
    *) echo "install-deps.sh: unknown extra '$extra' (known: clang, bench)" >&2; exit 2 ;;
  esac
done
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
