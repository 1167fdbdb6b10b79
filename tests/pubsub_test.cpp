// Publish-subscribe between nodes and with plain PUB/SUB sockets.
#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <set>

#include "testutil.hpp"

using namespace std::chrono_literals;
using namespace testutil;

namespace {

struct position {
    double x = 0, y = 0;
    MSGPACK_DEFINE_MAP(x, y)
};

} // namespace

TEST_CASE("events reach subscribers by topic prefix, with headers and sequence numbers", "[pubsub]") {
    plexus::node p(loopback("drones"));
    p.start();
    auto so = loopback("watcher");
    so.connect = {p.endpoints().front()}; // learns p's event endpoint through describe
    plexus::node s(so);
    s.start();

    std::mutex mu;
    std::vector<plexus::event> positions, other_events;
    signal probe_seen, position_seen;
    auto sub1 = s.subscribe("drone.", [&](const plexus::event& e) {
        if (e.topic != "drone.position") {
            probe_seen.notify();
            return;
        }
        std::lock_guard lk(mu);
        positions.push_back(e);
        position_seen.notify();
    });
    auto sub2 = s.subscribe("other", [&](const plexus::event& e) {
        std::lock_guard lk(mu);
        other_events.push_back(e);
    });
    REQUIRE(await_subscription(p, "drone.probe", probe_seen));

    REQUIRE(p.publish("drone.position", position{1.5, 2.5}, {{"user-id", "7"}}));
    REQUIRE(p.publish("drone.position", position{3, 4}));
    REQUIRE(p.publish("dronex", position{}));
    REQUIRE(position_seen.wait_for_count(2));
    std::lock_guard lk(mu);
    REQUIRE(positions.size() == 2);
    auto& e1 = positions[0];
    auto& e2 = positions[1];
    CHECK(e1.topic == "drone.position");
    CHECK(e1.as<position>().x == 1.5);
    CHECK(e1.headers.get_or("user-id", "") == "7");
    CHECK(e2.as<position>().y == 4);
    CHECK(e2.seq == e1.seq + 1);
    CHECK(e1.seq == 1); // first event on this topic
    CHECK(e1.source.size() == 16);
    CHECK(other_events.empty());
}

TEST_CASE("a plain SUB socket receives [topic, envelope] frames", "[pubsub][wire]") {
    plexus::node p(loopback("pub"));
    p.start();
    zmq::context_t ctx;
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::subscribe, "t.");
    sub.connect(p.pub_endpoints().front());
    zmq::message_t topic, env;
    bool got = false;
    for (int i = 0; i < 500 && !got; ++i) {
        p.publish_raw("t.x", "payload");
        got = recv_within(sub, topic, 10ms);
    }
    REQUIRE(got);
    CHECK(str(topic) == "t.x");
    REQUIRE(topic.more());
    REQUIRE(recv_within(sub, env));
    auto e = plexus::decode(str(env));
    CHECK(e.kind == plexus::kind::event);
    CHECK(e.topic == "t.x");
    CHECK(e.body == "payload");
    CHECK(e.seq >= 1);
}

TEST_CASE("gaps in a publisher's sequence are counted; malformed events are dropped", "[pubsub][errors]") {
    zmq::context_t ctx;
    zmq::socket_t pub(ctx, zmq::socket_type::pub);
    pub.set(zmq::sockopt::linger, 0);
    const auto ep = bind_any(pub);
    auto so = loopback("sub");
    so.subscribe_to = {ep};
    plexus::node s(so);
    s.start();
    signal seen;
    std::vector<std::uint64_t> seqs;
    std::mutex mu;
    auto sub = s.subscribe("g", [&](const plexus::event& e) {
        std::lock_guard lk(mu);
        seqs.push_back(e.seq);
        seen.notify();
    }, plexus::execution::inline_loop);
    auto send = [&](std::uint64_t seq, const std::string& source) {
        plexus::envelope e;
        e.kind = plexus::kind::event;
        e.id = seq;
        e.topic = "g";
        e.seq = seq;
        e.source = source;
        pub.send(zmq::buffer(std::string("g")), zmq::send_flags::sndmore);
        pub.send(zmq::buffer(plexus::encode(e)), zmq::send_flags::none);
    };
    // Probe from another source until the subscription is through.
    for (int i = 0; i < 500 && seen.count() == 0; ++i) {
        send(1, "probe-source-000");
        seen.wait_for_count(1, 10ms);
    }
    REQUIRE(seen.count() > 0);
    const int base = seen.count();
    const std::string src(16, 'A');
    send(1, src);
    send(2, src);
    send(5, src); // 3 and 4 lost
    // malformed: not an envelope, and a topic frame that disagrees with the envelope
    pub.send(zmq::buffer(std::string("g")), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(std::string("garbage")), zmq::send_flags::none);
    send(6, src);
    REQUIRE(seen.wait_for_count(base + 4));
    auto st = s.stats();
    std::uint64_t gaps = 0;
    for (auto& t : st.topics)
        if (t.topic == "g") gaps = t.gaps;
    CHECK(gaps == 2);
    CHECK(st.malformed >= 1);
}

TEST_CASE("back-pressure: a fast publisher loses nothing with overflow::block", "[pubsub]") {
    auto po = loopback("fast");
    po.send_hwm = 1000;
    plexus::node p(po);
    p.start();
    auto so = loopback("slow");
    so.subscribe_to = {p.pub_endpoints().front()};
    so.recv_hwm = 1000;
    plexus::node s(so);
    s.start();
    signal seen;
    std::atomic<int> data{0};
    auto sub = s.subscribe("bp", [&](const plexus::event& e) {
        if (e.body != "probe") ++data;
        seen.notify();
    }, plexus::execution::inline_loop);
    REQUIRE(await_subscription(p, "bp", seen));
    constexpr int n = 50000;
    int accepted = 0;
    for (int i = 0; i < n; ++i) accepted += p.publish_raw("bp", std::string(64, 'x')) ? 1 : 0;
    CHECK(accepted == n);
    CHECK(eventually([&] { return data.load() == n; }, 20s));
    CHECK(data.load() == n);
}

TEST_CASE("overflow::drop counts what it drops", "[pubsub]") {
    auto po = loopback("dropper");
    po.send_hwm = 100;
    po.publish_overflow = plexus::overflow::drop;
    plexus::node p(po);
    p.start();
    // A subscriber that never reads: its queues fill up.
    zmq::context_t ctx;
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::rcvhwm, 10);
    sub.set(zmq::sockopt::subscribe, "");
    sub.connect(p.pub_endpoints().front());
    zmq::message_t m;
    bool joined = false;
    for (int i = 0; i < 500 && !joined; ++i) {
        p.publish_raw("d", "probe");
        joined = recv_within(sub, m, 10ms);
    }
    REQUIRE(joined);
    int ok = 0, refused = 0;
    for (int i = 0; i < 200000; ++i) (p.publish_raw("d", std::string(1000, 'x')) ? ok : refused)++;
    // Everything the publisher took is either sent or counted as dropped.
    std::uint64_t published = 0, dropped = 0;
    CHECK(eventually([&] {
        for (auto& t : p.stats().topics)
            if (t.topic == "d") {
                published = t.published;
                dropped = t.dropped;
            }
        return dropped > 0 && published + refused >= static_cast<std::uint64_t>(ok);
    }));
    CHECK(dropped > 0);
}

TEST_CASE("remote publish through the system method, only where allowed", "[pubsub][system]") {
    auto po = loopback("relay");
    po.remote_publish = true;
    plexus::node p(po);
    p.start();
    plexus::node closed(loopback("closed"));
    closed.start();

    auto so = loopback("sub");
    so.subscribe_to = {p.pub_endpoints().front()};
    plexus::node s(so);
    s.start();
    signal seen;
    std::mutex mu;
    std::vector<plexus::event> got;
    auto sub = s.subscribe("remote", [&](const plexus::event& e) {
        std::lock_guard lk(mu);
        got.push_back(e);
        seen.notify();
    });
    plexus::node c(loopback("cli"));
    c.start();
    const std::map<std::string, std::string> body{{"topic", "remote.t"}, {"body", "hi"}};
    bool through = false;
    for (int i = 0; i < 500 && !through; ++i) {
        auto r = c.call_raw("plexus", "publish", plexus::pack(body),
                            {.headers = {{"user-id", "9"}}, .endpoint = p.endpoints().front()});
        REQUIRE(r.ok());
        through = seen.wait_for_count(1, 10ms);
    }
    REQUIRE(through);
    {
        std::lock_guard lk(mu);
        CHECK(got[0].as<std::string>() == "hi");
        CHECK(got[0].headers.get_or("user-id", "") == "9");
    }
    auto r = c.call_raw("plexus", "publish", plexus::pack(body), {.endpoint = closed.endpoints().front()});
    CHECK(r.status.code == plexus::code::permission_denied);
}
