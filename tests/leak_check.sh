#!/bin/sh
# The suite's leak check, in two steps run by ctest:
#   leak_check.sh setup <build dir> <tmp dir> <state file>   before every other test
#   leak_check.sh check <build dir> <tmp dir> <state file>   after every other test
# ctest runs each test with TMPDIR=<tmp dir>, a directory of this build's own, so socket
# directories and files left there are the suite's and nobody else's (other builds and
# programs on the machine use /tmp as they like). /dev/shm is shared by everyone: setup notes
# which mpx-named entries already exist, and check only counts the ones that appeared since.
# After the suite: no process started from this build tree survives (no orphans, no zombies),
# and nothing named mpx-* is left in the suite's TMPDIR or new in /dev/shm.
# Processes get up to 10 s to finish dying: a server that follows its owner (parent-death signal)
# may exit a moment after the last test, and is then reaped by init, not by us.
set -u
if [ $# -ne 4 ] || { [ "$1" != setup ] && [ "$1" != check ]; }; then
  echo "usage: $0 setup|check <build dir> <tmp dir> <state file>" >&2
  exit 2
fi
mode=$1
build=$(cd "$2" && pwd)
tmp=$3
state=$4

shm_names() { ls /dev/shm 2>/dev/null | grep -i mpx | sort; }

if [ "$mode" = setup ]; then
  # A fresh directory each run: what an earlier, interrupted run left is not this run's leak.
  rm -rf "$tmp" && mkdir -p "$tmp" && chmod 700 "$tmp" || exit 1
  shm_names >"$state" || exit 1
  echo "suite TMPDIR $tmp; $(wc -l <"$state") mpx-named entries already in /dev/shm"
  exit 0
fi

check() {
  status=0
  leftover=$(ps -eo pid=,stat=,args= | awk -v b="$build/" 'index($0, b) && !/leak_check/ && !/ctest/')
  if [ -n "$leftover" ]; then
    echo "processes from $build still running:"; echo "$leftover"; status=1
  fi
  # Zombies whose parent runs from this build tree (one reparented to init is reaped by it).
  zombies=$(ps -eo pid=,ppid=,stat=,args= | awk -v b="$build/" '
    { pid[NR] = $1; ppid[NR] = $2; st[NR] = $3; if (index($0, b)) ours[$1] = 1; line[NR] = $0 }
    END { for (i = 1; i <= NR; i++) if (st[i] ~ /^Z/ && (ppid[i] in ours)) print line[i] }')
  if [ -n "$zombies" ]; then echo "zombies:"; echo "$zombies"; status=1; fi
  if [ -f "$state" ]; then
    shm=$(shm_names | comm -13 "$state" -)
  else
    echo "no /dev/shm snapshot at $state (run the setup step first)"; status=1; shm=
  fi
  if [ -n "$shm" ]; then echo "shared memory left in /dev/shm: $shm"; status=1; fi
  left=$(find "$tmp" -mindepth 1 -maxdepth 1 -name 'mpx-*' 2>/dev/null)
  if [ -n "$left" ]; then echo "mpx temp dirs/sockets left in $tmp: $left"; status=1; fi
  return $status
}
i=0
until check >/dev/null; do
  i=$((i + 1))
  if [ $i -ge 20 ]; then check; exit 1; fi
  sleep 0.5
done
echo "no leftover processes, zombies, shared memory or socket dirs"
