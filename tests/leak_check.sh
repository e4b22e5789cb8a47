#!/bin/sh
# After the suite: no process started from this build tree survives (no orphans, no zombies),
# and no mpx socket directory or shared-memory name is left behind.
# Processes get up to 10 s to finish dying: a server that follows its owner (parent-death signal)
# may exit a moment after the last test, and is then reaped by init, not by us.
set -u
build=$(cd "$1" && pwd)
check() {
  status=0
  leftover=$(ps -eo pid=,stat=,args= | awk -v b="$build/" 'index($0, b) && !/leak_check/ && !/ctest/')
  if [ -n "$leftover" ]; then
    echo "processes from $build still running:"; echo "$leftover"; status=1
  fi
  zombies=$(ps -eo pid=,ppid=,stat=,comm= | awk '$3 ~ /^Z/ && ($4 ~ /^test_/ || $4 ~ /^mpx/)')
  if [ -n "$zombies" ]; then echo "zombies:"; echo "$zombies"; status=1; fi
  shm=$(ls /dev/shm 2>/dev/null | grep -i mpx || true)
  if [ -n "$shm" ]; then echo "shared memory left in /dev/shm: $shm"; status=1; fi
  tmp=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'mpx-*' -mmin -120 2>/dev/null)
  if [ -n "$tmp" ]; then echo "mpx temp dirs/sockets left: $tmp"; status=1; fi
  return $status
}
i=0
until check >/dev/null; do
  i=$((i + 1))
  if [ $i -ge 20 ]; then check; exit 1; fi
  sleep 0.5
done
echo "no leftover processes, zombies, shared memory or socket dirs"
