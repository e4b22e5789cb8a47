#!/bin/sh
# Installs, from Debian 12 packages, everything mpx needs to build, test and run
# its examples. Safe to run again: apt-get skips what is already there.
set -eu
packages="g++ cmake make python3 libboost-dev libboost-serialization-dev libcereal-dev
  libssl-dev libfmt-dev libspdlog-dev doctest-dev libcli11-dev libeigen3-dev
  libopenmpi-dev openmpi-bin libboost-mpi-dev"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
