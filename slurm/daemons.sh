# Sourced by cluster-up.sh and cluster-down.sh: how a daemon of the test cluster is told alive.
# shellcheck shell=bash

alive() { # alive PIDFILE NAME: the pid file names a live, non-zombie process called NAME
  local pid stat
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                      # drop "pid (comm) "; the state letter comes next
  [[ "${stat%% *}" != Z ]]               # a zombie counts as stopped
}
