// Calls by service name through discovery: resolution, load balancing, failover,
// subscriptions that follow publishers, peer events.
#include <catch2/catch.hpp>

#include <map>
#include <mutex>

#include "testutil.hpp"

using namespace std::chrono_literals;
using namespace testutil;

namespace {

// An "accounts" instance that answers with its own name.
std::unique_ptr<plexus::node> accounts(const std::string& name, const std::string& cluster, std::uint16_t port) {
    auto n = std::make_unique<plexus::node>(discovering(name, cluster, port));
    n->serve("accounts").version("1.0").raw_method("who", [name](plexus::request&) { return name; });
    n->serve("accounts").raw_method("slow", [name](plexus::request& r) {
        std::this_thread::sleep_for(std::chrono::milliseconds(plexus::unpack<int>(r.body)));
        return name;
    });
    n->start();
    return n;
}

} // namespace

TEST_CASE("calls by name spread over every live instance; a stopped one leaves at once", "[discovery][naming]") {
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("rr");
    auto a1 = accounts("acc-1", cluster, port);
    auto a2 = accounts("acc-2", cluster, port);

    std::mutex mu;
    std::vector<std::string> joined, left;
    std::vector<plexus::discovery::leave_reason> left_why;
    signal joins, leaves;
    plexus::node c(discovering("client", cluster, port));
    c.on_peer_event([&](const plexus::discovery::event& e) {
        std::lock_guard lk(mu);
        if (e.kind == plexus::discovery::event_kind::join) {
            joined.push_back(e.node.name);
            joins.notify();
        } else if (e.kind == plexus::discovery::event_kind::leave) {
            left.push_back(e.node.name);
            left_why.push_back(e.reason);
            leaves.notify();
        }
    });
    c.start();
    REQUIRE(joins.wait_for_count(2));

    std::map<std::string, int> hits;
    for (int i = 0; i < 20; ++i) {
        auto r = c.call_raw("accounts", "who", "");
        REQUIRE(r.ok());
        ++hits[r.body];
    }
    CHECK(hits["acc-1"] == 10);
    CHECK(hits["acc-2"] == 10);

    hits.clear();
    for (int i = 0; i < 20; ++i) {
        auto r = c.call_raw("accounts", "who", "", {.balance = plexus::balance_policy::least_in_flight});
        REQUIRE(r.ok());
        ++hits[r.body];
    }
    CHECK(hits["acc-1"] + hits["acc-2"] == 20);

    // Peers and what they offer.
    auto ps = c.peers();
    REQUIRE(ps.size() == 2);
    for (auto& p : ps) {
        REQUIRE(p.find_service("accounts") != nullptr);
        CHECK(p.find_service("accounts")->version == "1.0");
        CHECK(p.endpoints.count("rpc") == 1);
    }

    // Graceful stop: a leave beacon, the table drops it at once, calls go to the other.
    INFO("acc-1 at " << a1->endpoints().front() << ", acc-2 at " << a2->endpoints().front());
    a1->stop();
    REQUIRE(leaves.wait_for_count(1));
    {
        std::lock_guard lk(mu);
        CHECK(left == std::vector<std::string>{"acc-1"});
        // At once: by its leave beacon (or the connection it closed), not by expiry
        // after missed intervals.
        REQUIRE(left_why.size() == 1);
        CHECK(left_why[0] != plexus::discovery::leave_reason::expired);
    }
    for (int i = 0; i < 5; ++i) {
        auto r = c.call_raw("accounts", "who", "");
        INFO("call " << i << ": " << plexus::to_string(r.status.code) << ": " << r.status.message);
        REQUIRE(r.ok());
        CHECK(r.body == "acc-2");
    }
}

TEST_CASE("a service with no live instance is UNAVAILABLE by the deadline", "[discovery][naming]") {
    const auto port = free_udp_port();
    plexus::node c(discovering("client", unique_cluster("none"), port));
    c.start();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c.call_raw("ghost", "m", "", {.timeout = 300ms});
    CHECK(r.status.code == plexus::code::unavailable);
    CHECK_THAT(r.status.message, Catch::Contains("ghost"));
    CHECK(std::chrono::steady_clock::now() - t0 < 2s); // hang guard
}

TEST_CASE("call_async by name never blocks: a call made before its service is known waits for it on the I/O thread",
          "[discovery][naming]") {
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("park");
    plexus::node c(discovering("client", cluster, port));
    c.start();
    // Nothing offers "accounts" yet: the calls return at once, parked.
    auto f = c.call_async("accounts", "who", "", {.timeout = 10s});
    std::atomic<int> callbacks{0};
    signal cb_done;
    std::string cb_body;
    c.call_async("accounts", "who", "", {.timeout = 10s}, [&](plexus::reply r) {
        if (r.ok()) {
            cb_body = r.body;
            ++callbacks;
        }
        cb_done.notify();
    });
    auto expires = c.call_async("accounts", "who", "", {.timeout = 150ms});
    CHECK_FALSE(f.ready());
    // The instance comes only after the calls were made; they reach it.
    auto a1 = accounts("acc-late", cluster, port);
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    auto r = f.get();
    INFO(r.status.message);
    CHECK(r.ok());
    CHECK(r.body == "acc-late");
    REQUIRE(cb_done.wait_for_count(1));
    CHECK(callbacks == 1);
    CHECK(cb_body == "acc-late");
    // A parked call with a short deadline ends by it (or reached the instance in time).
    REQUIRE(expires.wait_for(5s) == std::future_status::ready);
    auto e = expires.get();
    CHECK((e.ok() || e.status.code == plexus::code::unavailable));

    // Once discovery's first interval is over, an unknown name fails at once.
    CHECK(eventually([&] {
        auto g = c.call_async("ghost", "m", "", {.timeout = 10s});
        return g.wait_for(0ms) == std::future_status::ready && g.get().status.code == plexus::code::unavailable;
    }));
}

TEST_CASE("a call parked for its name ends UNAVAILABLE by its deadline, and CANCELLED when the node stops",
          "[discovery][naming]") {
    const auto port = free_udp_port();
    // A peer that never answers its describe keeps the node learning its services.
    zmq::context_t zctx;
    zmq::socket_t mute(zctx, zmq::socket_type::router);
    mute.set(zmq::sockopt::linger, 0);
    auto o = discovering("client", unique_cluster("park-end"), port);
    o.connect = {bind_any(mute)};
    plexus::node c(o);
    c.start();
    auto short_one = c.call_async("ghost", "m", "", {.timeout = 200ms});
    auto long_one = c.call_async("ghost", "m", "", {.timeout = 30s});
    REQUIRE(short_one.wait_for(5s) == std::future_status::ready);
    auto r = short_one.get();
    CHECK(r.status.code == plexus::code::unavailable);
    CHECK_THAT(r.status.message, Catch::Contains("ghost"));
    CHECK_FALSE(long_one.ready());
    c.stop();
    REQUIRE(long_one.wait_for(5s) == std::future_status::ready);
    CHECK(long_one.get().status.code == plexus::code::cancelled);
}

TEST_CASE("clusters on the same port do not see each other", "[discovery][naming]") {
    const auto port = free_udp_port();
    auto mine = accounts("mine", unique_cluster("iso-a"), port);
    plexus::node other(discovering("other", unique_cluster("iso-b"), port));
    other.start();
    auto r = other.call_raw("accounts", "who", "", {.timeout = 600ms});
    CHECK(r.status.code == plexus::code::unavailable);
    CHECK(other.peers().empty());
}

TEST_CASE("a call in flight to an instance whose connection breaks fails fast", "[discovery][failover]") {
    // In one process a crash is simulated by a raw ROUTER standing in for an instance
    // and closed mid-call (the TCP connection breaks, as when a process is killed).
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("ff");
    zmq::context_t zctx;
    auto router = std::make_unique<zmq::socket_t>(zctx, zmq::socket_type::router);
    router->set(zmq::sockopt::linger, 0);
    const auto ep = bind_any(*router);

    plexus::node c(discovering("client", cluster, port));
    c.start();
    std::promise<plexus::reply> sync_r;
    std::thread caller([&] { sync_r.set_value(c.call_raw("svc", "m", "", {.timeout = 10s, .endpoint = ep})); });
    auto async_f = c.call_async("svc", "m", "", {.timeout = 10s, .endpoint = ep});
    REQUIRE_FALSE(recv_frames(*router).empty());
    REQUIRE_FALSE(recv_frames(*router).empty());
    CHECK(c.stats().peer_connections == 1); // one DEALER for the async call, watching for the sync one too
    const auto t0 = std::chrono::steady_clock::now();
    router.reset(); // the "instance" dies
    auto fut = sync_r.get_future();
    REQUIRE(fut.wait_for(3s) == std::future_status::ready);
    REQUIRE(async_f.wait_for(3s) == std::future_status::ready);
    const auto took = std::chrono::steady_clock::now() - t0;
    caller.join();
    CHECK(fut.get().status.code == plexus::code::unavailable);
    CHECK(async_f.get().status.code == plexus::code::unavailable);
    CHECK(took < 2s); // far sooner than the 10 s deadline
    // The connection to the dead instance is closed, not kept reconnecting for ever.
    CHECK(eventually([&] { return c.stats().peer_connections == 0; }));
}

TEST_CASE("subscribe by prefix reaches publishers present now and later; one that leaves does not disturb the others",
          "[discovery][pubsub]") {
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("sub");
    auto p1 = std::make_unique<plexus::node>(discovering("pub-1", cluster, port));
    p1->declare_topic("drone.position", "where a drone is");
    p1->start();

    plexus::node s(discovering("watcher", cluster, port));
    s.start();
    std::mutex mu;
    std::map<std::string, int> by_source;
    signal seen;
    auto sub = s.subscribe("drone.", [&](const plexus::event& e) {
        std::lock_guard lk(mu);
        ++by_source[e.body];
        seen.notify();
    });
    // Publishes until one of `who`'s events arrived (subscribing is asynchronous), at
    // most 300 times, waiting up to 10 ms for an event after each.
    auto pump = [&](plexus::node& p, const std::string& who) {
        auto count = [&] {
            std::lock_guard lk(mu);
            return by_source[who];
        };
        const int before = count();
        for (int i = 0; i < 300; ++i) {
            const int events = seen.count();
            p.publish_raw("drone.position", who);
            seen.wait_for_count(events + 1, 10ms);
            if (count() > before) return true;
        }
        return false;
    };
    CHECK(pump(*p1, "pub-1"));

    // A publisher that appears later, announcing its topic only when it first publishes.
    plexus::node p2(discovering("pub-2", cluster, port));
    p2.start();
    CHECK(pump(p2, "pub-2"));

    // The first one leaves; the subscription still gets the other's events.
    p1->stop();
    CHECK(pump(p2, "pub-2"));
}
