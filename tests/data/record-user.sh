#!/usr/bin/env bash
# Re-records real coredump entries of an ordinary user (run as root): crashes of `sleep` run as
# the user of a session brought up by `scripts/rig session up NAME`, until one entry carries
# systemd-coredump's _EXE and one does not (journald misses it when the helper exits first).
set -euo pipefail
cd "$(dirname "$0")"
NAME=${1:-cbuser}
MID=fc2e22bc6ee647b6b90729ab34a250b1
rig=../../scripts/rig
wait_entry() { for _ in $(seq 200); do journalctl -q MESSAGE_ID=$MID COREDUMP_PID="$1" -o cat | grep -q . && return; sleep 0.05; done; return 1; }
with=; without=
for _ in $(seq 20); do
  p=$("$rig" session run "$NAME" -- sh -c 'sleep 30 & p=$!; sleep 0.2; kill -SEGV $p; echo $p')
  wait_entry "$p"
  if journalctl -o export MESSAGE_ID=$MID COREDUMP_PID="$p" | grep -qa '^_EXE='; then
    [[ -n $with ]] || { with=$p; journalctl -o export MESSAGE_ID=$MID COREDUMP_PID="$p" > user-sleep-sigsegv.export; }
  else
    [[ -n $without ]] || { without=$p; journalctl -o export MESSAGE_ID=$MID COREDUMP_PID="$p" > user-sleep-sigsegv-no-exe.export; }
  fi
  [[ -n $with && -n $without ]] && break
done
echo "recorded user crashes: with _EXE pid ${with:-none}, without pid ${without:-none}"
