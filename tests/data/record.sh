#!/usr/bin/env bash
# Re-records the real coredump entries in this directory (run as root with scripts/rig up).
# Crashes run under `env -i` so no environment of the recording machine lands in the files.
set -euo pipefail
cd "$(dirname "$0")"
MID=fc2e22bc6ee647b6b90729ab34a250b1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

wait_exe() { for _ in $(seq 100); do [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$2" ]] && return; sleep 0.05; done; return 1; }
wait_entry() { for _ in $(seq 200); do journalctl -q MESSAGE_ID=$MID COREDUMP_PID="$1" -o cat | grep -q . && return; sleep 0.05; done; return 1; }

env -i HOME=/nonexistent PATH=/usr/bin:/bin sleep 30 & p=$!
wait_exe $p /usr/bin/sleep; kill -SEGV $p; wait $p || true; wait_entry $p
journalctl -o export MESSAGE_ID=$MID COREDUMP_PID=$p > sleep-sigsegv.export

mkdir -p "$tmp/home" "$tmp/libexec" "$tmp/run"; chmod 700 "$tmp/run"
printf '#!/bin/sh\nexit 0\n' > "$tmp/libexec/drkonqi-coredump-processor"; chmod +x "$tmp/libexec/drkonqi-coredump-processor"
env -i HOME="$tmp/home" XDG_CACHE_HOME="$tmp/home/.cache" XDG_RUNTIME_DIR="$tmp/run" PATH=/usr/bin:/bin \
  QT_QPA_PLATFORM=offscreen KCRASH_DUMP_ONLY=1 LIBEXEC_PATH="$tmp/libexec" kronometer >/dev/null 2>&1 & p=$!
for _ in $(seq 100); do [[ -d $tmp/home/.cache/kcrash-metadata ]] && break; sleep 0.05; done; sleep 0.3
kill -SEGV $p; wait $p || true; wait_entry $p
journalctl -o export MESSAGE_ID=$MID COREDUMP_PID=$p > kronometer-sigsegv.export
cp "$tmp/home/.cache/kcrash-metadata/$p.ini" kronometer.ini
echo "recorded sleep and kronometer (pid $p)"
