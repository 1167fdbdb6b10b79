#!/usr/bin/env bash
# The drone-delivery demo in one command: starts the six services (two delivery
# instances) on this host with discovery on a free UDP port and a cluster name of
# their own, runs the scripted scenario (plexus-demo-client), shows each delivery's
# trace id in the logs of every service it crossed, stops everything and checks the
# outcome. Exits 0 only if every check held.
#
# usage: run.sh [BIN_DIR]   (default: build/examples/drone-delivery)
# env:   TIMEOUT_S (60): overall bound; KEEP=1 keeps the logs (kept anyway on failure)
# Leaves no process behind: on Ctrl-C, on failure or on a hang the exit trap sends
# SIGTERM to every process it started and SIGKILL to what is left after 5 s; and the
# services run with --exit-with-parent, so they stop even if this script is killed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$here/../../build/examples/drone-delivery}
timeout_s=${TIMEOUT_S:-60}
roles=(scheduler accounts package delivery drone-management delivery-history client)
for r in "${roles[@]}"; do
    if [[ ! -x $bin/plexus-demo-$r ]]; then
        echo "run.sh: $bin/plexus-demo-$r is missing; build first:" >&2
        echo "  cmake -S . -B build && cmake --build build -j2 --target drone-delivery" >&2
        exit 2
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/plexus-drone-delivery.XXXXXX")
mkdir -p "$tmp/ready" "$tmp/logs"
cluster="drone-demo-$$-$RANDOM"
started=$SECONDS
t0=$EPOCHREALTIME
pids=()
names=()

source "$here/../lib/procs.sh"
cleanup() {
    local rc=$?
    stop_for_exit 5 # SIGKILL to what still runs after 5 s
    if ((rc == 0)) && [[ ${KEEP:-0} != 1 ]]; then
        rm -rf "$tmp"
    else
        if ((rc != 0)); then
            # What went wrong, for a CI log: warnings and errors of every process.
            grep -H -E 'level=(warn|error)' "$tmp"/logs/*.log 2>/dev/null | sed "s|^$tmp/logs/|   |" | tail -n 40 || true
            tail -n 20 "$tmp/logs/client.log" 2>/dev/null | sed 's/^/   client: /' || true
        fi
        echo "logs kept in $tmp/logs"
    fi
    exit "$rc"
}
exec 3>&2 # stderr, also where it is silenced below
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&3; exit 130' INT TERM

start() { # NAME ROLE [ARGS...]
    local name=$1 role=$2
    shift 2
    "$bin/plexus-demo-$role" --name "$name" --cluster "$cluster" --discovery-port "$port" \
        --ready-file "$tmp/ready/$name.ready" --exit-with-parent "$@" >"$tmp/logs/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

wait_ready() { # NAME... : until their ready files exist (bounded), or one of them died
    local deadline=$((SECONDS + 15)) name i
    while ((SECONDS < deadline)); do
        local missing=0
        for name in "$@"; do [[ -f $tmp/ready/$name.ready ]] || missing=1; done
        ((missing)) || return 0
        for i in "${!pids[@]}"; do
            if ! kill -0 "${pids[$i]}" 2>/dev/null; then
                echo "run.sh: ${names[$i]} exited early:" >&2
                tail -n 20 "$tmp/logs/${names[$i]}.log" >&2
                return 1
            fi
        done
        sleep 0.05
    done
    echo "run.sh: not ready within 15 s: $*" >&2
    return 1
}

field() { sed -n "s/^$2=//p" "$tmp/ready/$1.ready"; }

echo "== drone-delivery demo: cluster $cluster, logs in $tmp/logs"
# The scheduler goes first with --discovery-port 0: discovery picks a free UDP port,
# written to its ready file, and the others join it there.
port=0
start scheduler scheduler
wait_ready scheduler
port=$(field scheduler discovery_port)
start accounts accounts
start package package
start drone-management drone-management --drones 6
start delivery-1 delivery
start delivery-2 delivery
start delivery-history delivery-history
services=("${names[@]}")
logs=()
for name in "${services[@]}"; do logs+=("$tmp/logs/$name.log"); done
wait_ready "${services[@]}"
echo "   started ${#services[@]} processes, discovery on UDP port $port; each bound tcp://127.0.0.1:* (free ports)"

"$bin/plexus-demo-client" --cluster "$cluster" --discovery-port "$port" --ready-dir "$tmp/ready" \
    --result-file "$tmp/result" --log-level warn --exit-with-parent 2>"$tmp/logs/client.log" &
client_pid=$!
pids+=("$client_pid")
names+=(client)
deadline=$((started + timeout_s))
# (stderr off while waiting: bash would report the instance the client kills as "Killed")
{ while kill -0 "$client_pid" && ((SECONDS < deadline)); do sleep 0.1; done; } 2>/dev/null
client_rc=0
if kill -0 "$client_pid" 2>/dev/null; then
    echo "run.sh: the scenario did not end within ${timeout_s}s" >&2
    kill -KILL "$client_pid" 2>/dev/null || true
    client_rc=124
fi
wait "$client_pid" 2>/dev/null || client_rc=$?

[[ -f $tmp/result ]] || : >"$tmp/result"
killed=$(sed -n 's/^killed \([^ ]*\) .*/\1/p' "$tmp/result" 2>/dev/null || true)

echo "== 8. each delivery's trace id in the service logs (grep trace_id=ID logs/*.log)"
fail=0
shown=
while read -r kind id trace final owners; do
    [[ $kind == delivery ]] || continue
    # Where the trace must be: every service of the scheduling, and every owner.
    IFS=, read -ra own <<<"$owners"
    want=(scheduler accounts package drone-management delivery-history "${own[@]}")
    missing=()
    for name in "${want[@]}"; do
        grep -q "trace_id=$trace" "$tmp/logs/$name.log" || missing+=("$name")
    done
    lines=$(cat "${logs[@]}" | grep -c "trace_id=$trace .*msg=request" || true)
    others=$(cat "${logs[@]}" | grep "trace_id=$trace .*msg=request" | grep -vc "user-id=alice" || true)
    check "$id $final, trace $trace in ${#want[@]} services (${want[*]}), user-id=alice on all $lines lines" \
        test "${#missing[@]}" = 0 -a "$others" = 0
    ((${#missing[@]} == 0)) || echo "      not in: ${missing[*]}"
    # Show the path of the first delivery that changed hands (else the first one).
    if [[ -z $shown || ( $shown != *,* && $owners == *,* ) ]]; then shown="$owners $id $trace"; fi
done <"$tmp/result"
if [[ -n $shown ]]; then
    read -r _ id trace <<<"$shown"
    echo "   $id as the logs tell it: one trace, a span per hop, the user-id everywhere (status polls left out)"
    cat "${logs[@]}" | grep "trace_id=$trace .*msg=request" | grep -Ev 'method=(status|get) ' | sort |
        sed -E 's/ (delivery|reschedule|account|package|topic|by)=[^ ]*//g' |
        awk '{ t = substr($1, 15); n = $3; sub("node=", "", n); sp = $5; sub("span_id=", "", sp)
               m = $7 "." $8; gsub("service=|method=", "", m); rest = ""
               for (i = 9; i <= NF; i++) rest = rest " " $i
               printf "      %s  %-17s span %s  %-36s%s\n", t, n, sp, m, rest }'
fi

echo "== stopping every process with SIGTERM"
stop_all 5
for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" 2>/dev/null || rc=$?
    name=${names[$i]}
    [[ $name == client ]] && continue
    if [[ $name == "$killed" ]]; then
        check "$name was killed by the scenario (SIGKILL, exit $rc)" test "$rc" = 137
    else
        check "$name stopped cleanly (exit $rc)" test "$rc" = 0
    fi
done
pids=()
check "the scenario client passed its own checks (exit $client_rc)" test "$client_rc" = 0
check "an instance was killed mid-flight" test -n "$killed"

took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
if ((fail)); then
    echo "== drone-delivery demo FAILED (${took}s)"
    exit 1
fi
echo "== drone-delivery demo passed (${took}s)"
