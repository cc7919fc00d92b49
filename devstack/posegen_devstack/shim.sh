#!/usr/bin/env bash
# Container shim of the node runner (the containerd-shim idea, in a few lines): runs one container
# process, records its PID, waits for it and records the exit code, so containers keep running
# and their exit codes are not lost while the node runner itself restarts.
# usage: shim.sh <record-prefix> <log-file> -- <command> [args...]
prefix=$1
log=$2
shift 3
"$@" </dev/null >>"$log" 2>&1 &
child=$!
echo "$child" >"$prefix.pid.tmp" && mv "$prefix.pid.tmp" "$prefix.pid"
trap '' TERM INT HUP
wait "$child"
code=$?
echo "$code $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$prefix.exit.tmp" && mv "$prefix.exit.tmp" "$prefix.exit"
