# Process control and checks shared by the example scripts; sourced, not run:
#   source "$here/../lib/procs.sh"
# The sourcing script keeps the PIDs of what it started in the array `pids` and its
# check verdict in `fail` (0 or 1).

# stop_all GRACE_S: SIGTERM to every process in pids, SIGKILL to what is left after
# GRACE_S seconds. They need not be children, so there is nothing to `wait` on with a
# bound: poll every 0.1 s until none is alive or the grace period is over.
stop_all() {
    local grace_s=$1 pid alive i
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < grace_s * 10; i++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# For an exit trap: no trap any more (a second Ctrl-C must not re-enter), every
# process in pids stopped (stop_all GRACE_S) and reaped, with the other children
# (tee) gone too.
stop_for_exit() {
    trap - EXIT INT TERM
    stop_all "$1"
    wait 2>/dev/null || true
}

# check DESCRIPTION COMMAND...: runs COMMAND, prints "ok: DESCRIPTION" or
# "FAILED: DESCRIPTION" and on failure sets fail=1.
check() {
    local what=$1
    shift
    if "$@"; then echo "   ok: $what"; else echo "   FAILED: $what"; fail=1; fi
}
