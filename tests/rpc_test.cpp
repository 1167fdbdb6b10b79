// Request-response between nodes, and with plain ZeroMQ REQ/REP/ROUTER peers.
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <set>
#include <thread>

#include "testutil.hpp"

using namespace std::chrono_literals;
using namespace testutil;

namespace {

struct add_req {
    int a = 0;
    int b = 0;
    MSGPACK_DEFINE_MAP(a, b)
};
struct add_rep {
    int sum = 0;
    MSGPACK_DEFINE_MAP(sum)
};

// A server node with a typed service, started.
struct calc_server {
    plexus::node n{loopback("calc")};
    std::atomic<int> fast_calls{0};
    calc_server() {
        n.serve("calc")
            .doc("arithmetic")
            .method("add", [](const add_req& r) { return add_rep{r.a + r.b}; }, {.doc = "a + b"})
            .method(
                "add_inline",
                [this](const add_req& r) {
                    ++fast_calls;
                    return add_rep{r.a + r.b};
                },
                {.exec = plexus::execution::inline_loop})
            .raw_method("echo", [](plexus::request& r) { return std::string(r.body); })
            .raw_method("sleep",
                        [](plexus::request& r) {
                            auto ms = plexus::unpack<int>(r.body);
                            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
                            return plexus::pack(ms);
                        })
            .raw_method("throw", [](plexus::request&) -> std::string { throw std::runtime_error("boom"); })
            .raw_method("deny",
                        [](plexus::request&) -> std::string {
                            throw plexus::error(plexus::code::permission_denied, "not you");
                        })
            .raw_method("headers",
                        [](plexus::request& r) {
                            std::map<std::string, std::string> h;
                            for (auto& [k, v] : r.context.headers) h[k] = v;
                            return plexus::pack(h);
                        })
            .raw_method("budget_us", [](plexus::request& r) {
                auto left = r.context.remaining();
                return plexus::pack(left ? static_cast<std::int64_t>(left->count()) : -1);
            });
        n.start();
    }
    std::string ep() const { return n.endpoints().front(); }
};

} // namespace

TEST_CASE("typed call by service name through a connected peer", "[rpc]") {
    calc_server s;
    auto o = loopback("client");
    o.connect = {s.ep()};
    plexus::node c(o);
    c.start();
    auto rep = c.call<add_rep>("calc", "add", add_req{2, 40});
    CHECK(rep.sum == 42);
    auto rep2 = c.call<add_rep>("calc", "add_inline", add_req{1, 1});
    CHECK(rep2.sum == 2);
    CHECK(s.fast_calls == 1);
}

TEST_CASE("call to an explicit endpoint, and to the node's own service", "[rpc]") {
    calc_server s;
    plexus::node c(loopback("client"));
    c.start();
    auto r = c.call_raw("calc", "echo", "hello", {.endpoint = s.ep()});
    REQUIRE(r.ok());
    CHECK(r.body == "hello");
    // The server calls itself by name.
    CHECK(s.n.call<add_rep>("calc", "add", add_req{3, 4}).sum == 7);
}

TEST_CASE("async calls: future and callback, many in flight, replies out of order", "[rpc]") {
    calc_server s;
    auto o = loopback("client");
    o.connect = {s.ep()};
    plexus::node c(o);
    c.start();

    auto slow = c.call_async("calc", "sleep", plexus::pack(300));
    auto fast = c.call_async("calc", "sleep", plexus::pack(1));
    REQUIRE(fast.wait_for(2s) == std::future_status::ready);
    CHECK(slow.wait_for(0ms) != std::future_status::ready); // the later reply overtook the earlier one
    CHECK(fast.get().as<int>() == 1);
    REQUIRE(slow.wait_for(3s) == std::future_status::ready);
    CHECK(slow.get().as<int>() == 300);

    constexpr int n = 500;
    std::vector<plexus::call_future> fs;
    for (int i = 0; i < n; ++i) fs.push_back(c.call_async("calc", "add_inline", plexus::pack(add_req{i, i})));
    for (int i = 0; i < n; ++i) {
        REQUIRE(fs[i].wait_for(5s) == std::future_status::ready);
        CHECK(fs[i].get().as<add_rep>().sum == 2 * i);
    }

    signal done;
    std::atomic<int> sum{0};
    for (int i = 0; i < 10; ++i)
        c.call_async("calc", "add", plexus::pack(add_req{i, 0}), {}, [&](plexus::reply r) {
            sum += r.as<add_rep>().sum;
            done.notify();
        });
    REQUIRE(done.wait_for_count(10));
    CHECK(sum == 45);
}

TEST_CASE("call_future: waits, times out, wakes every waiter, hands the reply over once", "[rpc]") {
    calc_server s;
    plexus::node c(loopback("client"));
    c.start();

    plexus::call_future none;
    CHECK_FALSE(none.valid());
    CHECK_FALSE(none.ready());
    CHECK_THROWS_AS(none.get(), std::future_error);

    auto f = c.call_async("calc", "sleep", plexus::pack(300), {.endpoint = s.ep()});
    REQUIRE(f.valid());
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(f.wait_for(50ms) == std::future_status::timeout); // a bounded wait returns in time...
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    CHECK_FALSE(f.ready());
    // ...and two other threads waiting at once are all woken by the one reply.
    std::atomic<int> woken{0};
    std::thread w1([&] { f.wait(); ++woken; });
    std::thread w2([&] {
        if (f.wait_until(std::chrono::steady_clock::now() + 5s) == std::future_status::ready) ++woken;
    });
    const auto status = f.wait_for(5s);
    // Joined before any REQUIRE can throw; w1's wait ends by the call's deadline (3 s).
    w1.join();
    w2.join();
    REQUIRE(status == std::future_status::ready);
    CHECK(woken == 2);
    CHECK(f.ready());
    CHECK(f.get().as<int>() == 300);
    CHECK_FALSE(f.valid());
    CHECK_THROWS_AS(f.get(), std::future_error);

    // A call that fails before it is sent is ready at once; the future outlives the node.
    plexus::call_future late;
    {
        plexus::node gone(loopback("gone"));
        gone.start();
        auto g = gone.call_async("nobody", "m", "", {.timeout = 100ms});
        REQUIRE(g.wait_for(2s) == std::future_status::ready);
        CHECK(g.get().status.code == plexus::code::unavailable);
        late = gone.call_async("calc", "sleep", plexus::pack(2000), {.endpoint = s.ep()});
    } // stopped with the call in flight
    REQUIRE(late.wait_for(5s) == std::future_status::ready);
    CHECK(late.get().status.code == plexus::code::cancelled);
}

TEST_CASE("sync calls from many threads at once", "[rpc]") {
    calc_server s;
    auto o = loopback("client");
    o.connect = {s.ep()};
    plexus::node c(o);
    c.start();
    std::atomic<int> ok{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 8; ++t)
        ts.emplace_back([&, t] {
            for (int i = 0; i < 50; ++i)
                if (c.call<add_rep>("calc", "add", add_req{t, i}).sum == t + i) ++ok;
        });
    for (auto& t : ts) t.join();
    CHECK(ok == 400);
}

TEST_CASE("errors: unknown method and service, throwing handler, typed error", "[rpc][errors]") {
    calc_server s;
    plexus::node c(loopback("client"));
    c.start();
    plexus::call_options o{.endpoint = s.ep()};

    auto r = c.call_raw("calc", "nope", "", o);
    CHECK(r.status.code == plexus::code::not_found);
    CHECK_THAT(r.status.message, Catch::Contains("nope"));
    r = c.call_raw("nosuch", "x", "", o);
    CHECK(r.status.code == plexus::code::not_found);
    CHECK_THAT(r.status.message, Catch::Contains("nosuch"));

    r = c.call_raw("calc", "throw", "", o);
    CHECK(r.status.code == plexus::code::internal);
    CHECK_THAT(r.status.message, Catch::Contains("boom"));
    r = c.call_raw("calc", "deny", "", o);
    CHECK(r.status.code == plexus::code::permission_denied);
    CHECK(r.status.message == "not you");
    // The node keeps serving.
    CHECK(c.call<add_rep>("calc", "add", add_req{1, 2}, o).sum == 3);

    // A body that is not an add_req.
    r = c.call_raw("calc", "add", "\xc1", o);
    CHECK(r.status.code == plexus::code::invalid_argument);
    // Throwing form.
    try {
        (void)c.call<add_rep>("calc", "nope", add_req{}, o);
        FAIL("expected plexus::error");
    } catch (const plexus::error& e) {
        CHECK(e.code() == plexus::code::not_found);
    }
    // No instance of an unknown service and no peers to ask.
    r = c.call_raw("ghost", "x", "");
    CHECK(r.status.code == plexus::code::unavailable);
    CHECK_THAT(r.status.message, Catch::Contains("ghost"));
}

TEST_CASE("a plain REQ socket calls a Plexus node", "[rpc][wire]") {
    calc_server s;
    zmq::context_t ctx;
    for (bool correlate : {false, true}) {
        zmq::socket_t req(ctx, zmq::socket_type::req);
        req.set(zmq::sockopt::linger, 0);
        if (correlate) {
            req.set(zmq::sockopt::req_correlate, 1);
            req.set(zmq::sockopt::req_relaxed, 1);
        }
        req.connect(s.ep());
        req.send(zmq::buffer(request_bytes(7, "calc", "add", plexus::pack(add_req{20, 22}))), zmq::send_flags::none);
        zmq::message_t m;
        REQUIRE(recv_within(req, m));
        auto e = plexus::decode(str(m));
        CHECK(e.kind == plexus::kind::reply);
        CHECK(e.id == 7);
        CHECK(e.status == plexus::code::ok);
        CHECK(plexus::unpack<add_rep>(e.body).sum == 42);

        req.send(zmq::buffer(request_bytes(8, "plexus", "ping")), zmq::send_flags::none);
        REQUIRE(recv_within(req, m));
        e = plexus::decode(str(m));
        CHECK(e.id == 8);
        CHECK(e.status == plexus::code::ok);
        auto oh = msgpack::unpack(e.body.data(), e.body.size());
        auto ping = oh.get().as<std::map<std::string, msgpack::object>>();
        CHECK(ping.at("node").as<std::string>() == "calc");
    }
}

TEST_CASE("a Plexus client calls a plain REP server that speaks the envelope", "[rpc][wire]") {
    zmq::context_t ctx;
    zmq::socket_t rep(ctx, zmq::socket_type::rep);
    rep.set(zmq::sockopt::linger, 0);
    const auto ep = bind_any(rep);
    std::thread server([&] {
        for (int i = 0; i < 2; ++i) {
            zmq::message_t m;
            if (!recv_within(rep, m, 5000ms)) return;
            auto in = plexus::decode(str(m));
            plexus::envelope out;
            out.kind = plexus::kind::reply;
            out.id = in.id;
            out.body = in.service + "/" + in.method + "/" + in.body;
            rep.send(zmq::buffer(plexus::encode(out)), zmq::send_flags::none);
        }
    });
    plexus::node c(loopback("client"));
    c.start();
    auto r = c.call_raw("svc", "m", "x", {.endpoint = ep});
    REQUIRE(r.ok());
    CHECK(r.body == "svc/m/x");
    auto f = c.call_async("svc", "n", "y", {.endpoint = ep});
    REQUIRE(f.wait_for(3s) == std::future_status::ready);
    CHECK(f.get().body == "svc/n/y");
    server.join();
}

TEST_CASE("malformed MessagePack and a wrong version get clear errors; the node keeps serving", "[rpc][errors]") {
    calc_server s;
    zmq::context_t ctx;
    zmq::socket_t d(ctx, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 0);
    d.connect(s.ep());
    auto roundtrip = [&](const std::string& bytes) {
        d.send(zmq::message_t(), zmq::send_flags::sndmore);
        d.send(zmq::buffer(bytes), zmq::send_flags::none);
        zmq::message_t delim, m;
        REQUIRE(recv_within(d, delim));
        CHECK(delim.size() == 0);
        REQUIRE(delim.more());
        REQUIRE(recv_within(d, m));
        return plexus::decode(str(m));
    };
    auto e = roundtrip("\x93\x01\x02"); // truncated array
    CHECK(e.status == plexus::code::invalid_argument);
    CHECK_FALSE(e.error.empty());
    e = roundtrip("not msgpack at all");
    CHECK(e.status == plexus::code::invalid_argument);

    // Version 2: {0: 2, 1: 0, 2: 99}
    e = roundtrip(std::string("\x83\x00\x02\x01\x00\x02\x63", 7));
    CHECK(e.status == plexus::code::unsupported_version);
    CHECK(e.id == 99);
    CHECK_THAT(e.error, Catch::Contains("1"));

    // A reply envelope sent as a request.
    plexus::envelope wrong;
    wrong.kind = plexus::kind::reply;
    wrong.id = 5;
    e = roundtrip(plexus::encode(wrong));
    CHECK(e.status == plexus::code::invalid_argument);

    // A request that arrives with no time left does not run.
    e = roundtrip(request_bytes(11, "calc", "add_inline", plexus::pack(add_req{1, 1}), 0));
    CHECK(e.status == plexus::code::deadline_exceeded);
    CHECK(s.fast_calls == 0);

    e = roundtrip(request_bytes(12, "calc", "add", plexus::pack(add_req{1, 1})));
    CHECK(e.status == plexus::code::ok);
    auto st = s.n.stats();
    CHECK(st.malformed >= 3);
    CHECK(st.unsupported_version == 1);

    // Frames without the empty delimiter are dropped (counted), never answered.
    const auto before = s.n.stats().malformed;
    d.send(zmq::buffer(std::string("junk")), zmq::send_flags::none);
    CHECK(eventually([&] { return s.n.stats().malformed == before + 1; }));
}

TEST_CASE("oversized messages: refused before sending, dropped by the server", "[rpc][errors]") {
    auto so = loopback("small");
    so.max_message_size = 64 * 1024;
    plexus::node s(so);
    s.serve("svc").raw_method("len", [](plexus::request& r) { return plexus::pack(r.body.size()); });
    s.start();

    auto co = loopback("client");
    co.max_message_size = 64 * 1024;
    plexus::node c(co);
    c.start();
    const plexus::call_options o{.timeout = 1000ms, .endpoint = s.endpoints().front()};
    auto r = c.call_raw("svc", "len", std::string(100 * 1024, 'x'), o);
    CHECK(r.status.code == plexus::code::resource_exhausted);

    // A client with a larger limit gets past its own check; the server's
    // ZMQ_MAXMSGSIZE drops the message and the connection. The caller times out.
    plexus::node big(loopback("big"));
    big.start();
    r = big.call_raw("svc", "len", std::string(100 * 1024, 'x'), {.timeout = 500ms, .endpoint = s.endpoints().front()});
    CHECK((r.status.code == plexus::code::deadline_exceeded || r.status.code == plexus::code::unavailable));
    // Both still work for normal calls.
    r = big.call_raw("svc", "len", std::string(10, 'x'), {.timeout = 3000ms, .endpoint = s.endpoints().front()});
    REQUIRE(r.ok());
    CHECK(plexus::unpack<std::size_t>(r.body) == 10);
    CHECK(c.call_raw("svc", "len", "abc", o).ok());
}

TEST_CASE("a server that never answers: timeout by the deadline, the connection stays usable", "[rpc][errors]") {
    zmq::context_t ctx;
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    const auto ep = bind_any(router);
    plexus::node c(loopback("client"));
    c.start();

    const auto t0 = std::chrono::steady_clock::now();
    auto r = c.call_raw("svc", "m", "first", {.timeout = 200ms, .endpoint = ep});
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(r.status.code == plexus::code::deadline_exceeded);
    CHECK(took < 2s); // hang guard only

    // The timed-out request reached the server; its connection was closed after the
    // timeout, so a late answer to it has nowhere to go.
    REQUIRE_FALSE(recv_frames(router).empty());

    // On the next call's connection, a stray reply with another id (as a late reply to
    // an earlier call would be) arrives first: it is discarded, the call gets its own.
    std::thread server([&] {
        auto frames = recv_frames(router, 5000ms);
        if (frames.empty()) return;
        const auto in = plexus::decode(str(frames.back()));
        auto answer = [&](std::uint64_t id, const std::string& body) {
            plexus::envelope out;
            out.kind = plexus::kind::reply;
            out.id = id;
            out.body = body;
            router.send(zmq::buffer(str(frames[0])), zmq::send_flags::sndmore);
            router.send(zmq::message_t(), zmq::send_flags::sndmore);
            router.send(zmq::buffer(plexus::encode(out)), zmq::send_flags::none);
        };
        answer(in.id + 1000, "stray");
        answer(in.id, "second");
    });
    r = c.call_raw("svc", "m", "second", {.timeout = 3000ms, .endpoint = ep});
    server.join();
    REQUIRE(r.ok());
    CHECK(r.body == "second");
}

TEST_CASE("nested calls from pool handlers; a sync call from an inline handler fails fast", "[rpc][threading]") {
    auto o = loopback("chain");
    o.workers = 2;
    plexus::node n(o);
    plexus::node* self = &n;
    n.serve("a").raw_method("call_b", [self](plexus::request&) {
        return self->call_raw("b", "leaf", "x").body + "<-a";
    });
    n.serve("b").raw_method("leaf", [](plexus::request& r) { return "b(" + std::string(r.body) + ")"; });
    n.serve("c").raw_method(
        "bad", [self](plexus::request&) { return self->call_raw("b", "leaf", "x").status.message; },
        {.exec = plexus::execution::inline_loop});
    n.start();
    plexus::node c(loopback("client"));
    c.start();
    auto r = c.call_raw("a", "call_b", "", {.endpoint = n.endpoints().front()});
    REQUIRE(r.ok());
    CHECK(r.body == "b(x)<-a");
    r = c.call_raw("c", "bad", "", {.endpoint = n.endpoints().front()});
    REQUIRE(r.ok());
    CHECK_THAT(r.body, Catch::Contains("I/O thread"));
}

TEST_CASE("headers and deadline travel with nested calls", "[rpc][context]") {
    calc_server s;
    auto o = loopback("front");
    o.connect = {s.ep()};
    plexus::node front(o);
    plexus::node* fp = &front;
    front.serve("front").raw_method("relay", [fp](plexus::request&) {
        return fp->call_raw("calc", "headers", "").body;
    });
    front.serve("front").raw_method("budget", [fp](plexus::request&) {
        return fp->call_raw("calc", "budget_us", "", {.timeout = 10s}).body;
    });
    front.start();
    plexus::node c(loopback("client"));
    c.start();
    plexus::call_options co{.timeout = 2000ms, .headers = {{"user-id", "42"}, {"groups", "admin"}}, .endpoint = front.endpoints().front()};
    auto r = c.call_raw("front", "relay", "", co);
    REQUIRE(r.ok());
    auto h = plexus::unpack<std::map<std::string, std::string>>(r.body);
    CHECK(h["user-id"] == "42");
    CHECK(h["groups"] == "admin");

    r = c.call_raw("front", "budget", "", co);
    REQUIRE(r.ok());
    auto left = plexus::unpack<std::int64_t>(r.body);
    CHECK(left > 0);
    CHECK(left <= 2000 * 1000); // inherited the caller's 2 s, not the 10 s asked for
}

TEST_CASE("system methods: ping, describe, stats", "[rpc][system]") {
    calc_server s;
    plexus::node c(loopback("client"));
    c.start();
    plexus::call_options o{.endpoint = s.ep()};
    auto r = c.call_raw("plexus", "describe", "", o);
    REQUIRE(r.ok());
    auto oh = msgpack::unpack(r.body.data(), r.body.size());
    auto d = oh.get().as<std::map<std::string, msgpack::object>>();
    CHECK(d.at("node").as<std::string>() == "calc");
    auto services = d.at("services").as<std::vector<std::map<std::string, msgpack::object>>>();
    REQUIRE(services.size() == 1);
    CHECK(services[0].at("name").as<std::string>() == "calc");
    CHECK(services[0].at("doc").as<std::string>() == "arithmetic");
    auto methods = services[0].at("methods").as<std::vector<std::map<std::string, msgpack::object>>>();
    bool found = false;
    for (auto& m : methods)
        if (m.at("name").as<std::string>() == "add") {
            found = true;
            CHECK(m.at("doc").as<std::string>() == "a + b");
            CHECK(m.at("exec").as<std::string>() == "pool");
            auto shape = m.at("request").as<std::map<std::string, int>>();
            CHECK(shape.count("a") == 1);
            CHECK(shape.count("b") == 1);
        }
    CHECK(found);
    (void)c.call<add_rep>("calc", "add", add_req{1, 1}, o);
    r = c.call_raw("plexus", "stats", "", o);
    REQUIRE(r.ok());
    auto soh = msgpack::unpack(r.body.data(), r.body.size());
    auto st = soh.get().as<std::map<std::string, msgpack::object>>();
    bool counted = false;
    for (auto& m : st.at("methods").as<std::vector<std::map<std::string, msgpack::object>>>())
        if (m.at("method").as<std::string>() == "add") counted = m.at("calls").as<int>() == 1;
    CHECK(counted);
}

TEST_CASE("stopping a node with calls in flight fails them with a clear error, never hangs", "[rpc][lifecycle]") {
    zmq::context_t ctx;
    zmq::socket_t silent(ctx, zmq::socket_type::router);
    silent.set(zmq::sockopt::linger, 0);
    const auto ep = bind_any(silent);

    auto o = loopback("client");
    o.shutdown_timeout = 500ms;
    auto c = std::make_unique<plexus::node>(o);
    c->start();
    auto f = c->call_async("svc", "m", "", {.timeout = 30s, .endpoint = ep});
    std::promise<plexus::reply> sync_result;
    std::thread caller([&] { sync_result.set_value(c->call_raw("svc", "m", "", {.timeout = 30s, .endpoint = ep})); });
    // Both requests reach the silent server before the stop.
    REQUIRE_FALSE(recv_frames(silent).empty());
    REQUIRE_FALSE(recv_frames(silent).empty());
    const auto t0 = std::chrono::steady_clock::now();
    c->stop();
    caller.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s); // hang guard
    REQUIRE(f.wait_for(1s) == std::future_status::ready);
    CHECK(f.get().status.code == plexus::code::cancelled);
    auto sr = sync_result.get_future().get();
    CHECK(sr.status.code == plexus::code::cancelled);
    c.reset();
}

TEST_CASE("replies of running handlers are flushed at stop", "[rpc][lifecycle]") {
    auto so = loopback("server");
    so.shutdown_timeout = 3000ms;
    auto s = std::make_unique<plexus::node>(so);
    signal started;
    s->serve("svc").raw_method("slow", [&](plexus::request&) {
        started.notify();
        std::this_thread::sleep_for(300ms);
        return std::string("done");
    });
    s->start();
    const auto ep = s->endpoints().front();
    plexus::node c(loopback("client"));
    c.start();
    auto f = c.call_async("svc", "slow", "", {.timeout = 5s, .endpoint = ep});
    REQUIRE(started.wait_for_count(1));
    s->stop();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    auto r = f.get();
    CHECK(r.ok());
    CHECK(r.body == "done");
}
