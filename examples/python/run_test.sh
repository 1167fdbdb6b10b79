#!/usr/bin/env bash
# Test of client.py: starts a plexus-node on free loopback ports (heartbeat every
# 100 ms), runs client.py against it with Debian's /usr/bin/python3, stops the node
# with SIGTERM and checks that it exits 0. Leaves no process behind.
#
# usage: run_test.sh PATH/TO/plexus-node
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
node_bin=${1:?usage: run_test.sh PATH/TO/plexus-node}
python=/usr/bin/python3 # Debian's: it has python3-zmq and python3-msgpack

tmp=$(mktemp -d "${TMPDIR:-/tmp}/plexus-python.XXXXXX")
pids=()
source "$here/../lib/procs.sh"
cleanup() {
    local rc=$?
    stop_for_exit 5 # SIGKILL to a node still running after 5 s
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# No discovery: the test talks to the node by endpoint and must not beacon on the host's
# default discovery port.
"$node_bin" --name py-target --echo --heartbeat-interval 100 --discovery off --ready-file "$tmp/ready.json" &
node_pid=$!
pids=("$node_pid")

# The node writes the ready file once bound; wait for it, bounded (10 s).
for _ in $(seq 100); do
    [[ -s $tmp/ready.json ]] && break
    kill -0 "$node_pid" 2>/dev/null || { echo "run_test.sh: plexus-node exited before it was ready" >&2; exit 1; }
    sleep 0.1
done
[[ -s $tmp/ready.json ]] || { echo "run_test.sh: no ready file after 10 s" >&2; exit 1; }
rpc=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["rpc"][0])' "$tmp/ready.json")
echo "run_test.sh: plexus-node ready at $rpc"

"$python" "$here/client.py" "$rpc" --topic plexus.heartbeat --events 3 --timeout 10

# Bounded: a node that does not stop within 5 s gets SIGKILL (and fails, rc 137).
stop_all 5
rc=0
wait "$node_pid" || rc=$?
pids=()
if ((rc != 0)); then
    echo "run_test.sh: plexus-node exited $rc after SIGTERM" >&2
    exit 1
fi
echo "run_test.sh: python client test passed"
