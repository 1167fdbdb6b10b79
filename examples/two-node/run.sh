#!/usr/bin/env bash
# Runs the two-node demo: starts a "ping" and a "pong" process on free loopback ports,
# lets them call each other and exchange events until both reached their goal, stops
# them with SIGTERM and checks that each exited 0 with an OK summary.
#
# usage: run.sh [PATH/TO/two-node-demo]   (default: build/examples/two-node/two-node-demo)
# env:   ROUNDS (3), TIMEOUT_S (20): overall bound, after which the demo fails.
# Leaves no process behind, also on Ctrl-C or on failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$here/../../build/examples/two-node/two-node-demo}
rounds=${ROUNDS:-3}
timeout_s=${TIMEOUT_S:-20}

if [[ ! -x $bin ]]; then
    echo "run.sh: $bin is not an executable; build first (bash .ci/setup)" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/plexus-two-node.XXXXXX")
pids=()

source "$here/../lib/procs.sh"
cleanup() {
    local rc=$?
    stop_for_exit 10 # SIGKILL to what still runs after 10 s
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

tees=()
start() { # role peer
    # Each line goes to the terminal and to a log that the checks below read. The tee
    # ends when the process does (its only writer); the checks wait for it so that
    # the log is complete.
    local fd
    exec {fd}> >(tee "$tmp/$1.log")
    tees+=($!)
    "$bin" --role "$1" --ready-file "$tmp/$1.json" --peer-file "$tmp/$2.json" \
        --rounds "$rounds" --timeout "$((timeout_s * 1000))" >&"$fd" 2>&1 &
    pids+=($!)
    exec {fd}>&-
}

echo "== two-node demo: ping and pong, $rounds rounds each (bound ${timeout_s}s)"
start ping pong
start pong ping
ping_pid=${pids[0]}
pong_pid=${pids[1]}

# Wait until both reached their goal, one of them exited, or the bound passed.
deadline=$((SECONDS + timeout_s))
reached=0
while ((SECONDS < deadline)); do
    if grep -qs "goal reached" "$tmp/ping.log" && grep -qs "goal reached" "$tmp/pong.log"; then
        reached=1
        break
    fi
    kill -0 "$ping_pid" 2>/dev/null && kill -0 "$pong_pid" 2>/dev/null || break
    sleep 0.1
done

echo "== stopping both with SIGTERM"
stop_all 10
rc_ping=0
rc_pong=0
wait "$ping_pid" || rc_ping=$?
wait "$pong_pid" || rc_pong=$?
pids=()
wait "${tees[@]}" 2>/dev/null || true

fail=0
echo "== checks"
check "both reached their goal before the bound" test "$reached" = 1
check "ping exited 0 (rc=$rc_ping)" test "$rc_ping" = 0
check "pong exited 0 (rc=$rc_pong)" test "$rc_pong" = 0
for r in ping pong; do
    check "$r served calls" grep -q "served $r.hit" "$tmp/$r.log"
    check "$r received events" grep -q "event $([[ $r == ping ]] && echo pong || echo ping).scored" "$tmp/$r.log"
    check "$r summary OK" grep -q "summary: .* OK$" "$tmp/$r.log"
done
if ((fail)); then
    echo "== two-node demo FAILED"
    exit 1
fi
echo "== two-node demo passed"
