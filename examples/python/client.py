#!/usr/bin/python3
"""A Plexus client in plain Python: pyzmq and msgpack, nothing else.

Calls a running plexus-node's system methods plexus.ping and plexus.describe through a
plain REQ socket, then subscribes to its events with a plain SUB socket and prints the
first few that arrive. Written from docs/PROTOCOL.md alone.

usage: /usr/bin/python3 client.py RPC_ENDPOINT [--topic PREFIX] [--events N] [--timeout S]
Exits 0 on success, 1 on an error reply or a timeout, 2 on bad usage.
"""

import argparse
import random
import sys
import time

import msgpack
import zmq

# Envelope keys (PROTOCOL.md, "Envelope"): one MessagePack map with integer keys.
VERSION, KIND, ID, SERVICE, METHOD, TOPIC, HEADERS, DEADLINE = 0, 1, 2, 3, 4, 5, 6, 7
STATUS, ERROR, BODY, SEQ, SOURCE = 8, 9, 10, 11, 12
REQUEST, REPLY, EVENT = 0, 1, 2
PROTOCOL_VERSION = 1
STATUS_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED", "UNSUPPORTED_VERSION"]


class PlexusError(Exception):
    pass


def encode_request(msg_id, service, method, body=b"", headers=None, deadline_us=None):
    # The writer's rule: only the keys it sets, in ascending order.
    env = {VERSION: PROTOCOL_VERSION, KIND: REQUEST, ID: msg_id, SERVICE: service, METHOD: method}
    if headers:
        env[HEADERS] = headers
    if deadline_us is not None:
        env[DEADLINE] = deadline_us
    if body:
        env[BODY] = body
    return msgpack.packb(env, use_bin_type=True)


def decode_envelope(frame):
    env = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    if not isinstance(env, dict):
        raise PlexusError("envelope is not a map")
    if env.get(VERSION) != PROTOCOL_VERSION:
        raise PlexusError(f"unsupported protocol version {env.get(VERSION)!r}")
    return env


def body_of(env):
    body = env.get(BODY, b"")
    if isinstance(body, str):  # readers also accept str
        body = body.encode()
    return msgpack.unpackb(body, raw=False) if body else None


def call(sock, service, method, body=b"", timeout_s=5.0, headers=None):
    """One request over a REQ socket; returns the decoded reply body."""
    msg_id = random.getrandbits(63)
    sock.send(encode_request(msg_id, service, method, body, headers, int(timeout_s * 1e6)))
    if not sock.poll(int(timeout_s * 1000)):
        raise PlexusError(f"{service}.{method}: no reply within {timeout_s} s")
    env = decode_envelope(sock.recv())  # a REQ socket hands over [envelope] only
    if env.get(KIND) != REPLY or env.get(ID) != msg_id:
        raise PlexusError(f"{service}.{method}: not the reply to request {msg_id}: kind {env.get(KIND)}, id {env.get(ID)}")
    status = env.get(STATUS, 0)
    if status != 0:
        name = STATUS_NAMES[status] if status < len(STATUS_NAMES) else "UNKNOWN"
        raise PlexusError(f"{service}.{method}: {name}: {env.get(ERROR, '')}")
    return body_of(env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint", help="the node's RPC endpoint, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--topic", default="plexus.heartbeat", help="topic prefix to subscribe to")
    ap.add_argument("--events", type=int, default=2, help="events to wait for (0: do not subscribe)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each step")
    args = ap.parse_args()

    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(args.endpoint)

        pong = call(req, "plexus", "ping", timeout_s=args.timeout, headers={"user-id": "python-example"})
        print(f"ping: node {pong['node']} (id {pong['id']}), up {pong['uptime_ms']} ms")

        d = call(req, "plexus", "describe", timeout_s=args.timeout)
        print(f"describe: node {d['node']} version {d['version']} protocol {d['protocol']}")
        print(f"  endpoints: rpc {d['endpoints']['rpc']} pub {d['endpoints']['pub']}")
        for s in d["services"]:
            print(f"  service {s['name']}: {s['doc']}")
            for m in s["methods"]:
                print(f"    {s['name']}.{m['name']} [{m['exec']}]: {m['doc']}  request {m['request']!r} reply {m['reply']!r}")
        for t in d["topics"]:
            print(f"  topic {t['name']}: {t['doc']}  shape {t['shape']!r}")

        # A call with a body: the body is MessagePack bytes, carried as bin (key 10).
        if any(s["name"] == "echo" and any(m["name"] == "echo" for m in s["methods"]) for s in d["services"]):
            sent = {"greeting": "hello from python", "n": 42}
            back = call(req, "echo", "echo", msgpack.packb(sent), timeout_s=args.timeout)
            if back != sent:
                raise PlexusError(f"echo.echo returned {back!r}, sent {sent!r}")
            print(f"echo.echo: {back}")

        if args.events > 0:
            pubs = d["endpoints"]["pub"]
            if not pubs:
                raise PlexusError("the node publishes no events (no pub endpoint)")
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, args.topic.encode())
            sub.connect(pubs[0])
            # Events published before the subscription reaches the node are not delivered
            # (slow joiner); the ones after it are.
            deadline = time.monotonic() + args.timeout
            got = 0
            while got < args.events:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not sub.poll(left_ms):
                    raise PlexusError(f"{got} of {args.events} events on '{args.topic}' within {args.timeout} s")
                frames = sub.recv_multipart()
                if len(frames) != 2:
                    raise PlexusError(f"an event has 2 frames [topic, envelope], got {len(frames)}")
                topic = frames[0].decode()
                env = decode_envelope(frames[1])
                if env.get(KIND) != EVENT or env.get(TOPIC) != topic:
                    raise PlexusError(f"not an event envelope for topic '{topic}'")
                got += 1
                print(f"event {topic} seq {env.get(SEQ, 0)}: {body_of(env)}")
            sub.close()
        req.close()
    except PlexusError as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("python client passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
