// Links against an installed Plexus, serves a typed method and calls it and the
// system service over loopback. Exits 0 when both answer.
#include <plexus/node.hpp>

#include <chrono>
#include <cstdio>
#include <string>

struct sum_req {
    int a = 0, b = 0;
    MSGPACK_DEFINE_MAP(a, b)
};

int main() try {
    plexus::node n({.name = "consumer"});
    n.serve("math").method("add", [](const sum_req& r) { return r.a + r.b; }, {.doc = "a + b"});
    n.start();
    const int sum = n.call<int>("math", "add", sum_req{2, 3}, {.timeout = std::chrono::seconds(5)});
    const plexus::reply pong =
        n.call_raw("plexus", "ping", "", {.timeout = std::chrono::seconds(5), .endpoint = n.endpoints().front()});
    pong.check();
    std::printf("consumer: math.add(2, 3) = %d, plexus.ping answered %zu bytes\n", sum, pong.body.size());
    return sum == 5 && !pong.body.empty() ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
}
