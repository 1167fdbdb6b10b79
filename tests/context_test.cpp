// Context that travels: header propagation, policy, deadlines, trace context,
// interceptors, metrics.
#include <catch2/catch.hpp>

#include <mutex>
#include <regex>
#include <set>

#include "testutil.hpp"

using namespace std::chrono_literals;
using namespace testutil;

namespace {

struct seen_ctx {
    std::string user, groups, auth, trace, span, parent, chain, hop;
};

seen_ctx capture(const plexus::context& c) {
    return {std::string(c.headers.get_or("user-id", "")),
            std::string(c.headers.get_or("groups", "")),
            std::string(c.headers.get_or("authorization", "")),
            std::string(c.trace_id()),
            std::string(c.span_id()),
            std::string(c.parent_span_id()),
            std::string(c.headers.get_or("call-chain", "")),
            std::string(c.headers.get_or("hop-token", ""))};
}

plexus::node_options opts_for(std::string name, std::vector<std::string> connect = {}) {
    auto o = loopback(std::move(name));
    o.connect = std::move(connect);
    return o;
}

} // namespace

TEST_CASE("headers and trace context travel A -> B -> C -> D and to an event consumer E", "[context]") {
    std::mutex mu;
    std::map<std::string, seen_ctx> seen;
    signal e_seen;

    plexus::node d(opts_for("d"));
    d.serve("d").raw_method("leaf", [&](plexus::request& r) {
        std::lock_guard lk(mu);
        seen["d"] = capture(r.context);
        return std::string("leaf");
    });
    d.start();

    plexus::node c(opts_for("c", {d.endpoints().front()}));
    plexus::node* cp = &c;
    c.serve("c").raw_method("mid", [&, cp](plexus::request& r) {
        {
            std::lock_guard lk(mu);
            seen["c"] = capture(r.context);
        }
        cp->publish_raw("orders.created", "o-1"); // no propagation code
        return cp->call_raw("d", "leaf", "").body;
    });
    c.start();

    auto bo = opts_for("b", {c.endpoints().front()});
    plexus::node b(bo);
    plexus::node* bp = &b;
    b.serve("b").raw_method("top", [&, bp](plexus::request& r) {
        {
            std::lock_guard lk(mu);
            seen["b"] = capture(r.context);
        }
        return bp->call_raw("c", "mid", "").body; // no propagation code
    });
    b.start();

    plexus::node e(opts_for("e", {c.endpoints().front()}));
    e.start();
    auto sub = e.subscribe("orders.", [&](const plexus::event& ev) {
        if (ev.body != "o-1") return;
        std::lock_guard lk(mu);
        seen["e"] = capture(*plexus::context::current());
        e_seen.notify();
    });

    plexus::node a(opts_for("a", {b.endpoints().front()}));
    a.start();
    // E's subscription must reach C before C publishes: call until E has seen one.
    plexus::call_options co{.timeout = 2000ms,
                            .headers = {{"user-id", "u-42"}, {"groups", "ops,admin"}, {"hop-token", "only-b"}}};
    for (int i = 0; i < 200 && e_seen.count() == 0; ++i) {
        auto r = a.call_raw("b", "top", "", co);
        REQUIRE(r.ok());
        CHECK(r.body == "leaf");
        e_seen.wait_for_count(1, 20ms);
    }
    REQUIRE(e_seen.count() > 0);
    // One more call, whose whole path we check.
    e_seen.notify(-e_seen.count());
    auto r = a.call_raw("b", "top", "", co);
    REQUIRE(r.ok());
    REQUIRE(e_seen.wait_for_count(1));

    std::lock_guard lk(mu);
    for (auto n : {"b", "c", "d", "e"}) {
        INFO("node " << n);
        CHECK(seen[n].user == "u-42");
        CHECK(seen[n].groups == "ops,admin");
        CHECK(seen[n].trace.size() == 32);
        CHECK(seen[n].trace == seen["b"].trace);
        CHECK(seen[n].span.size() == 16);
    }
    std::set<std::string> spans{seen["b"].span, seen["c"].span, seen["d"].span, seen["e"].span};
    CHECK(spans.size() == 4); // a span per hop
    CHECK(seen["c"].parent == seen["b"].span);
    CHECK(seen["d"].parent == seen["c"].span);
    CHECK(seen["e"].parent == seen["c"].span);
    CHECK(seen["b"].chain == "b.top");
    CHECK(seen["c"].chain == "b.top,c.mid");
    CHECK(seen["d"].chain == "b.top,c.mid,d.leaf");
    // hop-by-hop: reaches B only
    CHECK(seen["b"].hop == "only-b");
    CHECK(seen["c"].hop.empty());
}

TEST_CASE("header policy: strip for a service, reject inbound, size cap, chain cap", "[context]") {
    std::mutex mu;
    std::map<std::string, seen_ctx> seen;
    plexus::node inner(opts_for("inner"));
    inner.serve("billing").raw_method("charge", [&](plexus::request& r) {
        std::lock_guard lk(mu);
        seen["billing"] = capture(r.context);
        return std::string();
    });
    inner.serve("audit").raw_method("log", [&](plexus::request& r) {
        std::lock_guard lk(mu);
        seen["audit"] = capture(r.context);
        return std::string();
    });
    inner.start();

    auto fo = opts_for("front", {inner.endpoints().front()});
    fo.propagation.strip_for = {{"billing", {"authorization"}}};
    fo.propagation.reject_inbound = {"x-role"};
    fo.propagation.max_header_bytes = 1024;
    fo.propagation.max_call_chain = 2;
    plexus::node front(fo);
    plexus::node* fp = &front;
    std::string role_seen = "unset";
    front.serve("front").raw_method("go", [&, fp](plexus::request& r) {
        role_seen = std::string(r.context.headers.get_or("x-role", ""));
        REQUIRE(fp->call_raw("billing", "charge", "").ok());
        REQUIRE(fp->call_raw("audit", "log", "").ok());
        return std::string(r.context.headers.get_or("call-chain", ""));
    });
    front.start();

    plexus::node client(opts_for("client"));
    client.start();
    plexus::call_options co{.headers = {{"authorization", "Bearer t"}, {"user-id", "7"}, {"x-role", "root"},
                                        {"call-chain", "x.one,y.two"}},
                            .endpoint = front.endpoints().front()};
    auto r = client.call_raw("front", "go", "", co);
    REQUIRE(r.ok());
    CHECK(r.body == "y.two,front.go"); // capped to the last 2 hops
    CHECK(role_seen.empty());           // rejected inbound
    std::lock_guard lk(mu);
    CHECK(seen["billing"].auth.empty()); // stripped for billing
    CHECK(seen["billing"].user == "7");
    CHECK(seen["audit"].auth == "Bearer t");

    // Over the cap: the caller's node refuses to send; the server refuses to handle.
    plexus::call_options big{.headers = {{"blob", std::string(2000, 'x')}}, .endpoint = front.endpoints().front()};
    auto o2 = opts_for("small-client");
    o2.propagation.max_header_bytes = 1024;
    plexus::node small(o2);
    small.start();
    r = small.call_raw("front", "go", "", big);
    CHECK(r.status.code == plexus::code::resource_exhausted);
    CHECK_THAT(r.status.message, Catch::Contains("cap"));
    r = client.call_raw("front", "go", "", big);
    CHECK(r.status.code == plexus::code::resource_exhausted);
}

TEST_CASE("deadlines: budgets shrink along the chain; an expired budget never runs the handler", "[context][deadline]") {
    std::atomic<int> c_runs{0};
    std::atomic<std::int64_t> c_left_us{-1};
    plexus::node c(opts_for("c"));
    c.serve("c").raw_method("work", [&](plexus::request& r) {
        ++c_runs;
        c_left_us = r.context.remaining()->count();
        return std::string();
    });
    c.start();
    plexus::node b(opts_for("b", {c.endpoints().front()}));
    plexus::node* bp = &b;
    std::atomic<int> b_status{-1};
    b.serve("b").raw_method("relay", [&, bp](plexus::request& r) {
        std::this_thread::sleep_for(std::chrono::milliseconds(plexus::unpack<int>(r.body)));
        auto rep = bp->call_raw("c", "work", "", {.timeout = 10s});
        b_status = static_cast<int>(rep.status.code);
        return std::string();
    });
    b.start();
    plexus::node a(opts_for("a", {b.endpoints().front()}));
    a.start();

    auto r = a.call_raw("b", "relay", plexus::pack(80), {.timeout = 100ms});
    CHECK(r.ok());
    CHECK(c_runs == 1);
    CHECK(c_left_us > 0);
    CHECK(c_left_us <= 20000); // at most the 20 ms A's budget had left

    b_status = -1;
    const auto t0 = std::chrono::steady_clock::now();
    r = a.call_raw("b", "relay", plexus::pack(120), {.timeout = 100ms});
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(r.status.code == plexus::code::deadline_exceeded);
    CHECK(took < 1s); // hang guard: "by about 100 ms"
    CHECK(eventually([&] { return b_status.load() >= 0; }));
    CHECK(b_status == static_cast<int>(plexus::code::deadline_exceeded));
    CHECK(c_runs == 1); // C's handler never ran for the late call
}

TEST_CASE("an interceptor rejects unauthenticated calls before the handler", "[context][interceptor]") {
    struct require_auth : plexus::interceptor {
        std::atomic<int> after{0};
        plexus::status before_handle(plexus::call_info& c) override {
            if (c.service == "plexus") return {};
            if (!c.headers.contains("authorization")) return {plexus::code::unauthenticated, "authorization required"};
            return {};
        }
        void after_handle(const plexus::call_info&, const plexus::status&, std::chrono::nanoseconds) override { ++after; }
    };
    struct stamp : plexus::interceptor {
        plexus::status before_call(plexus::call_info& c) override {
            c.headers.set("x-client", "stamped");
            return {};
        }
    };
    auto auth = std::make_shared<require_auth>();
    auto so = opts_for("secure");
    so.interceptors = {auth};
    std::atomic<int> runs{0};
    std::string stamped;
    plexus::node s(so);
    s.serve("vault").raw_method("open", [&](plexus::request& r) {
        ++runs;
        stamped = std::string(r.context.headers.get_or("x-client", ""));
        return std::string("opened");
    });
    s.start();
    auto co = opts_for("client");
    co.interceptors = {std::make_shared<stamp>()};
    plexus::node c(co);
    c.start();
    plexus::call_options o{.endpoint = s.endpoints().front()};
    auto r = c.call_raw("vault", "open", "", o);
    CHECK(r.status.code == plexus::code::unauthenticated);
    CHECK(r.status.message == "authorization required");
    CHECK(runs == 0);
    o.headers.set("authorization", "Bearer x");
    r = c.call_raw("vault", "open", "", o);
    CHECK(r.ok());
    CHECK(runs == 1);
    CHECK(stamped == "stamped");
    CHECK(auth->after >= 2);
    auto st = s.stats();
    for (auto& m : st.methods)
        if (m.method == "open") {
            CHECK(m.calls == 2);
            CHECK(m.errors == 1);
            REQUIRE(m.errors_by_code.size() == 1);
            CHECK(m.errors_by_code[0].first == plexus::code::unauthenticated);
        }
}

TEST_CASE("async continuations carry the handler's context", "[context]") {
    std::string seen_user;
    signal done;
    plexus::node leaf(opts_for("leaf"));
    leaf.serve("leaf").raw_method("get", [&](plexus::request& r) {
        return std::string(r.context.headers.get_or("user-id", ""));
    });
    leaf.serve("leaf").raw_method("note", [&](plexus::request& r) {
        seen_user = std::string(r.context.headers.get_or("user-id", ""));
        done.notify();
        return std::string();
    });
    leaf.start();
    plexus::node mid(opts_for("mid", {leaf.endpoints().front()}));
    plexus::node* mp = &mid;
    mid.serve("mid").raw_method("start", [mp](plexus::request&) {
        mp->call_async("leaf", "get", "", {}, [mp](plexus::reply) {
            // A continuation on a worker: the context of the request that started it is current.
            (void)mp->call_raw("leaf", "note", "");
        });
        return std::string("started");
    });
    mid.start();
    plexus::node a(opts_for("a"));
    a.start();
    auto r = a.call_raw("mid", "start", "", {.headers = {{"user-id", "async-user"}}, .endpoint = mid.endpoints().front()});
    REQUIRE(r.ok());
    REQUIRE(done.wait_for_count(1));
    CHECK(seen_user == "async-user");
}

TEST_CASE("log lines written while handling carry the trace id", "[context][log]") {
    std::mutex mu;
    std::vector<std::string> lines;
    auto o = opts_for("logger");
    o.log = plexus::log_level::info;
    o.log_sink = [&](plexus::log_level, std::string_view line) {
        std::lock_guard lk(mu);
        lines.emplace_back(line);
    };
    plexus::node n(o);
    plexus::node* np = &n;
    std::string trace;
    n.serve("svc").raw_method("work", [&, np](plexus::request& r) {
        trace = std::string(r.context.trace_id());
        np->log(plexus::log_level::info, "working", {{"user", "u1"}});
        return std::string();
    });
    n.start();
    plexus::node c(opts_for("c"));
    c.start();
    REQUIRE(c.call_raw("svc", "work", "", {.endpoint = n.endpoints().front()}).ok());
    REQUIRE(trace.size() == 32);
    std::lock_guard lk(mu);
    bool found = false;
    for (auto& l : lines)
        if (l.find("msg=working") != std::string::npos) {
            found = true;
            CHECK_THAT(l, Catch::Contains("trace_id=" + trace));
            CHECK_THAT(l, Catch::Contains("user=u1"));
            CHECK_THAT(l, Catch::Contains("node=logger"));
        }
    CHECK(found);
}

TEST_CASE("metrics: per-method counters, errors by code, latency histogram, Prometheus text", "[context][metrics]") {
    plexus::node s(opts_for("m"));
    s.serve("svc").raw_method("ok", [](plexus::request&) { return std::string(); });
    s.serve("svc").raw_method("bad", [](plexus::request&) -> std::string {
        throw plexus::error(plexus::code::not_found, "x");
    });
    s.start();
    plexus::node c(opts_for("c"));
    c.start();
    plexus::call_options o{.endpoint = s.endpoints().front()};
    for (int i = 0; i < 10; ++i) REQUIRE(c.call_raw("svc", "ok", "", o).ok());
    for (int i = 0; i < 3; ++i) REQUIRE_FALSE(c.call_raw("svc", "bad", "", o).ok());
    const auto text = s.metrics_text();
    // Every sample line is `name{labels} value`.
    const std::regex sample(R"(^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$|^[a-z_]+\{[^}]*le="\+Inf"[^}]*\} [0-9]+$)");
    std::istringstream in(text);
    std::string line;
    int samples = 0;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        INFO(line);
        CHECK(std::regex_match(line, sample));
        ++samples;
    }
    CHECK(samples > 10);
    CHECK_THAT(text, Catch::Contains("plexus_server_calls_total{node=\"m\",service=\"svc\",method=\"ok\"} 10"));
    CHECK_THAT(text, Catch::Contains(
                         "plexus_server_errors_total{node=\"m\",service=\"svc\",method=\"bad\",code=\"NOT_FOUND\"} 3"));
    CHECK_THAT(text, Catch::Contains("plexus_server_latency_seconds_count{node=\"m\",service=\"svc\",method=\"ok\"} 10"));
    CHECK_THAT(c.metrics_text(), Catch::Contains("plexus_client_calls_total{node=\"c\",service=\"svc\",method=\"ok\"} 10"));
    auto st = s.stats();
    for (auto& m : st.methods)
        if (m.method == "ok") {
            CHECK(m.calls == 10);
            CHECK(m.p50_us > 0);
            CHECK(m.p99_us >= m.p50_us);
        }
}
