// Context that travels: header propagation, policy, deadlines, trace context,
// interceptors, metrics.
#include <catch2/catch.hpp>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

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
    // What E saw, by trace id: a late event of a probing call cannot pass for the last one's.
    std::map<std::string, seen_ctx> e_by_trace;
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
        auto got = capture(*plexus::context::current());
        e_by_trace[got.trace] = got;
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
    auto r = a.call_raw("b", "top", "", co);
    REQUIRE(r.ok());
    const auto trace = [&] {
        std::lock_guard lk(mu);
        return seen["b"].trace;
    }();
    REQUIRE(eventually([&] {
        std::lock_guard lk(mu);
        return e_by_trace.count(trace) == 1;
    }));

    std::lock_guard lk(mu);
    seen["e"] = e_by_trace[trace];
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
        // On a worker thread: a failure travels back in the reply, not as a Catch assertion.
        for (auto [svc, m] : {std::pair{"billing", "charge"}, std::pair{"audit", "log"}})
            if (auto rep = fp->call_raw(svc, m, ""); !rep.ok()) throw plexus::error(rep.status);
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
    int found = 0;
    for (auto& m : st.methods)
        if (m.method == "open") {
            ++found;
            CHECK(m.calls == 2);
            CHECK(m.errors == 1);
            REQUIRE(m.errors_by_code.size() == 1);
            CHECK(m.errors_by_code[0].first == plexus::code::unauthenticated);
        }
    CHECK(found == 1);
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
    int found = 0;
    for (auto& m : st.methods)
        if (m.method == "ok") {
            ++found;
            CHECK(m.calls == 10);
            CHECK(m.p50_us > 0);
            CHECK(m.p99_us >= m.p50_us);
        }
    CHECK(found == 1);
}

// ---------------------------------------------------------------- trace modes, reused contexts
//
// What a handler saw, copied out while it ran: the tests below compare what one message
// saw with what the one before it left behind.

namespace {

// A W3C traceparent with known ids (the example of the specification).
const std::string tp0 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

std::string trace_of(std::string_view tp) { return std::string(tp.substr(3, 32)); }
std::string span_of(std::string_view tp) { return std::string(tp.substr(36, 16)); }

bool valid_traceparent(std::string_view tp) {
    static const std::regex re("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$");
    return std::regex_match(tp.begin(), tp.end(), re) && trace_of(tp) != std::string(32, '0') &&
           span_of(tp) != std::string(16, '0');
}

const char* mode_name(plexus::trace_mode m) {
    switch (m) {
    case plexus::trace_mode::off: return "off";
    case plexus::trace_mode::propagate: return "propagate";
    case plexus::trace_mode::start: return "start";
    }
    return "?";
}

struct snapshot {
    std::vector<std::pair<std::string, std::string>> headers; // in order
    bool deadline = false;
    std::string trace, span, parent;
    bool current = false; // context::current() was this context

    [[nodiscard]] std::optional<std::string> get(std::string_view k) const {
        for (auto& [key, v] : headers)
            if (key == k) return v;
        return std::nullopt;
    }
    [[nodiscard]] std::set<std::string> keys() const {
        std::set<std::string> out;
        for (auto& kv : headers) out.insert(kv.first);
        return out;
    }
    [[nodiscard]] std::string text() const { // for failure messages
        std::string s;
        for (auto& [k, v] : headers) s += k + "=" + v + ";";
        return s + " deadline=" + (deadline ? "yes" : "no") + " parent=" + parent;
    }
};

std::vector<std::pair<std::string, std::string>> items_of(const plexus::headers& h) {
    return {h.begin(), h.end()};
}

snapshot snap(const plexus::context& c) {
    return {items_of(c.headers), c.deadline.has_value(), std::string(c.trace_id()), std::string(c.span_id()),
            std::string(c.parent_span_id()), plexus::context::current() == &c};
}

// What a handler may do to its own context; none of it may reach the next message.
void scribble(plexus::context& c) {
    c.headers.set("x-leak", "1");
    if (auto* u = c.headers.find("user-id")) *u = "mallory";
    c.deadline = plexus::clock::now() + 1h;
    if (c.parent_span_id().empty()) c.set_parent_span_id("feedfacefeedface");
}

// Keeps what handlers saw, by label, and wakes the test when one more arrived.
struct recorder {
    std::mutex mu;
    std::vector<std::pair<std::string, snapshot>> seen;
    signal count;
    void add(std::string label, snapshot s) {
        {
            std::lock_guard lk(mu);
            seen.emplace_back(std::move(label), std::move(s));
        }
        count.notify();
    }
    std::vector<snapshot> of(const std::string& label) {
        std::lock_guard lk(mu);
        std::vector<snapshot> out;
        for (auto& [l, s] : seen)
            if (l == label) out.push_back(s);
        return out;
    }
    // What `label` saw, which must be exactly one message.
    snapshot only(const std::string& label) {
        auto s = of(label);
        INFO(label << " saw " << s.size() << " messages");
        REQUIRE(s.size() == 1);
        return s.front();
    }
};

// A request sent from a plain DEALER, so that headers and deadline are exactly what the
// test says (a node's call always carries a deadline). Returns the reply envelope.
plexus::envelope raw_call(zmq::socket_t& d, std::uint64_t id, const std::string& service, const std::string& method,
                          plexus::headers h, std::optional<std::uint64_t> deadline_us) {
    plexus::envelope e;
    e.kind = plexus::kind::request;
    e.id = id;
    e.service = service;
    e.method = method;
    e.headers = std::move(h);
    e.deadline_us = deadline_us;
    d.send(zmq::message_t(), zmq::send_flags::sndmore);
    d.send(zmq::buffer(plexus::encode(e)), zmq::send_flags::none);
    auto frames = recv_frames(d);
    REQUIRE(frames.size() == 2);
    return plexus::decode(str(frames[1]));
}

// Nodes a -> b -> c in one trace mode: b's "top" calls c's "leaf" and both record
// their context; b subscribes to a's events.
struct three_hops {
    recorder rec;
    std::unique_ptr<plexus::node> c, a, b;
    std::string b_ep;

    explicit three_hops(plexus::trace_mode mode) {
        auto opts = [mode](std::string name) {
            auto o = opts_for(std::move(name));
            o.tracing = mode;
            return o;
        };
        c = std::make_unique<plexus::node>(opts("c"));
        c->serve("c").raw_method("leaf", [this](plexus::request& r) {
            rec.add("c", snap(r.context));
            return std::string();
        });
        c->start();
        a = std::make_unique<plexus::node>(opts("a"));
        a->start();
        auto bo = opts("b");
        bo.subscribe_to = {a->pub_endpoints().front()};
        b = std::make_unique<plexus::node>(bo);
        b->serve("b").raw_method("top", [this, c_ep = c->endpoints().front()](plexus::request& r) {
            rec.add("b", snap(r.context));
            auto rep = b->call_raw("c", "leaf", "", {.endpoint = c_ep});
            if (!rep.ok()) throw plexus::error(rep.status);
            return std::string();
        });
        b->start();
        b_ep = b->endpoints().front();
    }
    ~three_hops() {
        // b calls c and subscribes to a: stop it first.
        b->stop();
        a->stop();
        c->stop();
    }

    // Records b's events under "t." as "event", with as_arrived(event) in "as-arrived",
    // once a probe has shown the subscription is live.
    plexus::subscription record_events(std::function<std::string(const plexus::event&)> as_arrived) {
        auto probes = std::make_shared<signal>();
        auto h = b->subscribe("t.", [this, probes, as_arrived](const plexus::event& ev) {
            if (ev.body == "probe") return probes->notify();
            auto s = snap(*plexus::context::current());
            s.headers.emplace_back("as-arrived", as_arrived(ev));
            rec.add("event", std::move(s));
        });
        REQUIRE(await_subscription(*a, "t.probe", *probes));
        return h;
    }
};

} // namespace

TEST_CASE("context: parent span id is 16 characters or empty", "[context]") {
    plexus::context c;
    CHECK(c.parent_span_id().empty());
    c.set_parent_span_id("00f067aa0ba902b7");
    CHECK(c.parent_span_id() == "00f067aa0ba902b7");
    c.set_parent_span_id("short");
    CHECK(c.parent_span_id().empty());
    c.set_parent_span_id("00f067aa0ba902b7");
    c.set_parent_span_id({});
    CHECK(c.parent_span_id().empty());
    c.set_parent_span_id("00f067aa0ba902b7ff"); // too long: cleared, not truncated
    CHECK(c.parent_span_id().empty());
}

TEST_CASE("trace_mode::start: a call outside any trace starts one; the server opens a child span", "[context][trace]") {
    struct sent_recorder : plexus::interceptor {
        std::mutex mu;
        std::vector<std::string> traceparents; // as sent, after the built-in tracing
        plexus::status before_call(plexus::call_info& c) override {
            if (c.service != "svc") return {};
            std::lock_guard lk(mu);
            traceparents.emplace_back(c.headers.get_or("traceparent", ""));
            return {};
        }
    };
    recorder rec;
    auto so = opts_for("server");
    REQUIRE(so.tracing == plexus::trace_mode::start); // the default
    plexus::node s(so);
    s.serve("svc").raw_method("method", [&](plexus::request& r) {
        rec.add("svc", snap(r.context));
        return std::string();
    });
    s.start();
    auto sent = std::make_shared<sent_recorder>();
    auto co = opts_for("client");
    co.interceptors = {sent};
    plexus::node c(co);
    c.start();

    for (int i = 0; i < 2; ++i) {
        REQUIRE(c.call_raw("svc", "method", "", {.endpoint = s.endpoints().front()}).ok());
    }
    std::vector<std::string> tps;
    {
        std::lock_guard lk(sent->mu);
        tps = sent->traceparents;
    }
    auto at_server = rec.of("svc");
    REQUIRE(tps.size() == 2);
    REQUIRE(at_server.size() == 2);
    for (int i = 0; i < 2; ++i) {
        INFO("call " << i << ": sent " << tps[i] << ", server saw " << at_server[i].text());
        CHECK(valid_traceparent(tps[i]));
        auto& sv = at_server[i];
        REQUIRE(sv.get("traceparent"));
        CHECK(valid_traceparent(*sv.get("traceparent")));
        CHECK(sv.trace == trace_of(tps[i]));   // same trace
        CHECK(sv.span.size() == 16);
        CHECK(sv.span != span_of(tps[i]));     // its own span
        CHECK(sv.parent == span_of(tps[i]));   // the caller's as parent
        CHECK(sv.get("call-chain") == std::optional<std::string>("svc.method"));
        CHECK(sv.current);
    }
    CHECK(trace_of(tps[0]) != trace_of(tps[1])); // each call outside a trace starts its own

    // An event published outside any trace starts one too.
    plexus::node p(opts_for("pub"));
    p.start();
    auto subo = opts_for("sub");
    subo.subscribe_to = {p.pub_endpoints().front()};
    plexus::node sub(subo);
    sub.start();
    signal probes;
    auto h = sub.subscribe("t.", [&](const plexus::event& ev) {
        if (ev.body == "probe") return probes.notify();
        auto s2 = snap(*plexus::context::current());
        s2.headers.emplace_back("as-arrived", std::string(ev.headers.get_or("traceparent", "")));
        rec.add("event", std::move(s2));
    });
    REQUIRE(await_subscription(p, "t.probe", probes));
    REQUIRE(p.publish_raw("t.e", "e"));
    REQUIRE(rec.count.wait_for_count(3));
    const auto ev = rec.only("event");
    INFO(ev.text());
    const auto arrived = *ev.get("as-arrived");
    CHECK(valid_traceparent(arrived));
    CHECK(ev.trace == trace_of(arrived));
    CHECK(ev.parent == span_of(arrived));
    CHECK(ev.span != span_of(arrived));
    CHECK_FALSE(ev.get("call-chain")); // events add no hop
}

TEST_CASE("trace_mode::propagate: nothing starts a trace; a trace that arrives gets a span per hop",
          "[context][trace]") {
    three_hops h(plexus::trace_mode::propagate);
    auto& rec = h.rec;
    auto& a = *h.a;
    const std::string& b_ep = h.b_ep;

    SECTION("a call outside any trace carries none, nor a call chain, on every hop") {
        REQUIRE(a.call_raw("b", "top", "", {.endpoint = b_ep}).ok());
        for (auto hop : {"b", "c"}) {
            const auto s = rec.only(hop);
            INFO(hop << ": " << s.text());
            CHECK_FALSE(s.get("traceparent"));
            CHECK_FALSE(s.get("call-chain"));
            CHECK(s.trace.empty());
            CHECK(s.span.empty());
            CHECK(s.parent.empty());
        }
    }
    SECTION("a call that carries a traceparent: same trace, a new span per hop, the caller's as parent") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", tp0}}, .endpoint = b_ep}).ok());
        const auto sb = rec.only("b");
        const auto sc = rec.only("c");
        INFO("b: " << sb.text() << "\nc: " << sc.text());
        CHECK(sb.trace == trace_of(tp0));
        CHECK(sb.parent == span_of(tp0));
        CHECK(sb.span.size() == 16);
        CHECK(sb.span != span_of(tp0));
        CHECK(sc.trace == trace_of(tp0));
        CHECK(sc.parent == sb.span);
        CHECK(sc.span.size() == 16);
        CHECK(sc.span != sb.span);
        CHECK(sc.span != span_of(tp0));
        CHECK(valid_traceparent(*sc.get("traceparent")));
        // In a trace, a request starts the call chain as with trace_mode::start.
        CHECK(sb.get("call-chain") == std::optional<std::string>("b.top"));
        CHECK(sc.get("call-chain") == std::optional<std::string>("b.top,c.leaf"));
    }
    SECTION("a call chain that arrives grows by a hop per request") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", tp0}, {"call-chain", "edge.in"}}, .endpoint = b_ep})
                    .ok());
        const auto sb = rec.only("b");
        const auto sc = rec.only("c");
        CHECK(sb.get("call-chain") == std::optional<std::string>("edge.in,b.top"));
        CHECK(sc.get("call-chain") == std::optional<std::string>("edge.in,b.top,c.leaf"));
    }
    SECTION("an invalid traceparent is not carried on") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", "00-not-a-trace"}}, .endpoint = b_ep}).ok());
        for (auto hop : {"b", "c"}) {
            const auto s = rec.only(hop);
            INFO(hop << ": " << s.text());
            CHECK_FALSE(s.get("traceparent"));
            CHECK(s.parent.empty());
        }
    }
    SECTION("an event published outside any trace arrives without a traceparent") {
        auto sub = h.record_events([](const plexus::event& ev) { return ev.headers.contains("traceparent") ? "yes" : "no"; });
        REQUIRE(a.publish_raw("t.e", "e", {{"user-id", "u1"}}));
        REQUIRE(rec.count.wait_for_count(1));
        const auto ev = rec.only("event");
        INFO(ev.text());
        CHECK(ev.get("as-arrived") == std::optional<std::string>("no"));
        CHECK_FALSE(ev.get("traceparent"));
        CHECK(ev.get("user-id") == std::optional<std::string>("u1"));
        CHECK(ev.trace.empty());
        CHECK(ev.parent.empty());
    }
}

TEST_CASE("trace_mode::off: trace headers travel untouched", "[context][trace]") {
    three_hops h(plexus::trace_mode::off);
    auto& rec = h.rec;
    auto& a = *h.a;
    const std::string& b_ep = h.b_ep;

    SECTION("the caller's traceparent and call chain arrive byte for byte on every hop") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", tp0}, {"call-chain", "edge.in"}}, .endpoint = b_ep})
                    .ok());
        for (auto hop : {"b", "c"}) {
            const auto s = rec.only(hop);
            INFO(hop << ": " << s.text());
            CHECK(s.get("traceparent") == std::optional<std::string>(tp0));
            CHECK(s.span == span_of(tp0)); // no span of its own
            CHECK(s.parent.empty());
            CHECK(s.get("call-chain") == std::optional<std::string>("edge.in"));
        }
    }
    SECTION("nothing is added to a call without trace headers") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"user-id", "u1"}}, .endpoint = b_ep}).ok());
        for (auto hop : {"b", "c"}) {
            const auto s = rec.only(hop);
            INFO(hop << ": " << s.text());
            CHECK(s.keys() == std::set<std::string>{"user-id"});
            CHECK(s.parent.empty());
        }
    }
    SECTION("an invalid traceparent is carried as it is") {
        REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", "00-not-a-trace"}}, .endpoint = b_ep}).ok());
        const auto s = rec.only("c");
        CHECK(s.get("traceparent") == std::optional<std::string>("00-not-a-trace"));
    }
    SECTION("an event's traceparent arrives untouched") {
        auto sub = h.record_events([](const plexus::event& ev) { return std::string(ev.headers.get_or("traceparent", "")); });
        REQUIRE(a.publish_raw("t.e", "e", {{"traceparent", tp0}}));
        REQUIRE(rec.count.wait_for_count(1));
        const auto ev = rec.only("event");
        INFO(ev.text());
        CHECK(ev.get("as-arrived") == std::optional<std::string>(tp0));
        CHECK(ev.get("traceparent") == std::optional<std::string>(tp0));
        CHECK(ev.parent.empty());
        CHECK_FALSE(ev.get("call-chain"));
    }
}

TEST_CASE("reused request contexts: nothing of one request reaches the next", "[context][reuse]") {
    const auto exec = GENERATE(plexus::execution::inline_loop, plexus::execution::pool);
    const auto mode = GENERATE(plexus::trace_mode::propagate, plexus::trace_mode::off, plexus::trace_mode::start);
    const bool traced = mode != plexus::trace_mode::off;
    INFO("execution " << (exec == plexus::execution::pool ? "pool" : "inline_loop") << ", trace_mode "
                      << mode_name(mode));
    recorder rec;
    auto so = opts_for("server");
    so.workers = 1; // every pool request on one worker: its context is the reused one
    so.tracing = mode;
    plexus::node s(so);
    s.serve("svc").raw_method(
        "m",
        [&](plexus::request& r) {
            rec.add("m", snap(r.context));
            scribble(r.context);
            return std::string();
        },
        {.exec = exec});
    s.start();
    zmq::context_t zctx;
    zmq::socket_t d(zctx, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 0);
    d.connect(s.endpoints().front());

    constexpr int rounds = 3;
    for (int i = 0; i < rounds; ++i) {
        INFO("round " << i);
        auto r1 = raw_call(d, 10 + 2 * i, "svc", "m",
                           {{"user-id", "alice"}, {"x-a", "1"}, {"traceparent", tp0}, {"call-chain", "edge.in"}},
                           5'000'000);
        REQUIRE(r1.status == plexus::code::ok);
        auto r2 = raw_call(d, 11 + 2 * i, "svc", "m", {{"user-id", "bob"}}, std::nullopt);
        REQUIRE(r2.status == plexus::code::ok);
    }
    auto seen = rec.of("m");
    REQUIRE(seen.size() == 2 * rounds);
    for (int i = 0; i < rounds; ++i) {
        INFO("round " << i);
        const auto& first = seen[2 * i];
        const auto& second = seen[2 * i + 1];
        {
            // The first request saw what it was sent (so the second's checks mean something).
            INFO("request 1 saw " << first.text());
            CHECK(first.current);
            CHECK(first.get("user-id") == std::optional<std::string>("alice"));
            CHECK(first.get("x-a") == std::optional<std::string>("1"));
            CHECK(first.deadline);
            CHECK(first.trace == trace_of(tp0));
            CHECK(first.parent == (traced ? span_of(tp0) : std::string()));
            CHECK(first.get("call-chain") == std::optional<std::string>(traced ? "edge.in,svc.m" : "edge.in"));
        }
        INFO("request 2 saw " << second.text());
        CHECK(second.current);
        CHECK(second.get("user-id") == std::optional<std::string>("bob"));
        CHECK_FALSE(second.get("x-a"));
        CHECK_FALSE(second.get("x-leak"));
        CHECK_FALSE(second.deadline);
        CHECK(second.parent.empty());
        if (mode == plexus::trace_mode::start) {
            // A new trace of its own, and a chain of one hop.
            CHECK(second.keys() == std::set<std::string>{"user-id", "traceparent", "call-chain"});
            CHECK(second.trace.size() == 32);
            CHECK(second.trace != trace_of(tp0));
            CHECK(second.get("call-chain") == std::optional<std::string>("svc.m"));
        } else {
            CHECK(second.keys() == std::set<std::string>{"user-id"});
            CHECK(second.trace.empty());
        }
    }
}

TEST_CASE("reused delivery contexts and events: nothing of one event reaches the next", "[context][reuse][pubsub]") {
    // Which subscribers: inline only, pool only, or both on the same node (the pool one
    // then gets a copy of the event the I/O thread reuses).
    const int variant = GENERATE(0, 1, 2);
    const auto mode = GENERATE(plexus::trace_mode::propagate, plexus::trace_mode::off, plexus::trace_mode::start);
    const bool traced = mode != plexus::trace_mode::off;
    std::vector<std::pair<std::string, plexus::execution>> subs;
    if (variant != 1) subs.emplace_back("inline", plexus::execution::inline_loop);
    if (variant != 0) subs.emplace_back("pool", plexus::execution::pool);
    INFO("subscribers " << (variant == 0 ? "inline" : variant == 1 ? "pool" : "inline+pool") << ", trace_mode "
                        << mode_name(mode));

    recorder rec;
    auto po = opts_for("pub");
    po.tracing = mode;
    plexus::node p(po);
    p.start();
    auto so = opts_for("sub");
    so.tracing = mode;
    so.workers = 1; // every pool delivery on one worker: its context is the reused one
    so.subscribe_to = {p.pub_endpoints().front()};
    plexus::node s(so);
    s.start();
    std::array<signal, 2> probes; // per subscriber
    std::vector<plexus::subscription> handles;
    for (std::size_t k = 0; k < subs.size(); ++k) {
        handles.push_back(s.subscribe(
            "t.",
            [&, k, label = subs[k].first](const plexus::event& ev) {
                if (ev.body == "probe") return probes[k].notify();
                auto sn = snap(*plexus::context::current());
                // The event as the handler got it, under "ev:" keys.
                for (auto& [k, v] : ev.headers) sn.headers.emplace_back("ev:" + k, v);
                sn.headers.emplace_back("ev:body", ev.body);
                rec.add(label, std::move(sn));
                scribble(*plexus::context::current());
            },
            subs[k].second));
    }
    // Every subscriber must be connected before the events under test (they share one
    // SUB socket, so one connection; still, each must have seen a probe).
    for (std::size_t k = 0; k < subs.size(); ++k) REQUIRE(await_subscription(p, "t.probe", probes[k]));

    constexpr int rounds = 3;
    for (int i = 0; i < rounds; ++i) {
        REQUIRE(p.publish_raw("t.e", "e1", {{"user-id", "alice"}, {"x-a", "1"}, {"traceparent", tp0}}));
        REQUIRE(p.publish_raw("t.e", "e2", {{"user-id", "bob"}}));
    }
    REQUIRE(rec.count.wait_for_count(2 * rounds * static_cast<int>(subs.size())));

    for (auto& [label, exec] : subs) {
        INFO("subscriber " << label);
        auto seen = rec.of(label);
        REQUIRE(seen.size() == 2 * rounds);
        for (int i = 0; i < rounds; ++i) {
            INFO("round " << i);
            const auto& first = seen[2 * i];
            const auto& second = seen[2 * i + 1];
            REQUIRE(first.get("ev:body") == std::optional<std::string>("e1"));
            REQUIRE(second.get("ev:body") == std::optional<std::string>("e2"));
            {
                INFO("event 1 saw " << first.text());
                CHECK(first.current);
                CHECK(first.get("user-id") == std::optional<std::string>("alice"));
                CHECK(first.get("x-a") == std::optional<std::string>("1"));
                CHECK(first.get("ev:x-a") == std::optional<std::string>("1"));
                CHECK(first.get("ev:traceparent") == std::optional<std::string>(tp0));
                CHECK(first.trace == trace_of(tp0));
                CHECK(first.parent == (traced ? span_of(tp0) : std::string()));
            }
            INFO("event 2 saw " << second.text());
            CHECK(second.current);
            CHECK(second.get("user-id") == std::optional<std::string>("bob"));
            CHECK(second.get("ev:user-id") == std::optional<std::string>("bob"));
            CHECK_FALSE(second.get("x-a"));
            CHECK_FALSE(second.get("ev:x-a"));
            CHECK_FALSE(second.get("x-leak"));
            CHECK_FALSE(second.get("ev:x-leak"));
            CHECK_FALSE(second.deadline);
            if (mode == plexus::trace_mode::start) {
                // The publisher started a trace for it; the subscriber's span is a child.
                REQUIRE(second.get("ev:traceparent"));
                const auto arrived = *second.get("ev:traceparent");
                CHECK(valid_traceparent(arrived));
                CHECK(trace_of(arrived) != trace_of(tp0));
                CHECK(second.trace == trace_of(arrived));
                CHECK(second.parent == span_of(arrived));
                CHECK(second.keys() == std::set<std::string>{"user-id", "traceparent", "ev:user-id", "ev:traceparent",
                                                              "ev:body"});
            } else {
                CHECK(second.parent.empty());
                CHECK(second.trace.empty());
                CHECK(second.keys() == std::set<std::string>{"user-id", "ev:user-id", "ev:body"});
            }
        }
    }
}

TEST_CASE("a nested call to the same node leaves the calling handler's context as it was", "[context][reuse]") {
    auto so = opts_for("self");
    so.workers = 4; // three outer handlers blocked in nested calls, and one worker for the inner ones
    plexus::node n(so);
    plexus::node* np = &n;
    std::string ep; // set before the first call
    // What the inner handler saw, for the outer one to check.
    auto inner = [](plexus::request& r) {
        const auto s = snap(r.context);
        std::string out = std::string(r.context.headers.get_or("user-id", "")) + "|" + s.parent + "|" +
                          std::string(r.context.headers.get_or("x-call", "")) + "|" + (s.current ? "current" : "-");
        scribble(r.context);
        r.context.headers.set("x-inner", "1");
        return out;
    };
    n.serve("svc").raw_method("inner_pool", inner, {.exec = plexus::execution::pool});
    n.serve("svc").raw_method("inner_inline", inner, {.exec = plexus::execution::inline_loop});
    n.serve("svc").raw_method("outer", [&, np](plexus::request& r) -> std::string {
        plexus::context* const mine = plexus::context::current();
        if (mine != &r.context) return "not current on entry";
        const auto before = snap(r.context);
        const std::string user(r.context.headers.get_or("user-id", ""));
        for (std::string m : {"inner_pool", "inner_inline", "inner_pool"}) {
            auto rep = np->call_raw("svc", m, "", {.headers = {{"x-call", m}}, .endpoint = ep});
            if (!rep.ok()) return m + " failed: " + rep.status.message;
            const std::string expect = user + "|" + before.span + "|" + m + "|current";
            if (rep.body != expect) return m + " saw " + rep.body + ", expected " + expect;
            if (plexus::context::current() != mine) return "context::current() changed by the call to " + m;
            const auto after = snap(r.context);
            if (after.headers != before.headers || after.deadline != before.deadline || after.parent != before.parent)
                return "context changed by the call to " + m + ": " + before.text() + " -> " + after.text();
        }
        return "ok " + user;
    });
    n.start();
    ep = n.endpoints().front();
    plexus::node c(opts_for("client"));
    c.start();

    constexpr int threads = 3, calls = 10;
    std::mutex mu;
    std::vector<std::string> results;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
            const std::string user = "user-" + std::to_string(t);
            for (int i = 0; i < calls; ++i) {
                auto r = c.call_raw("svc", "outer", "",
                                    {.timeout = 5000ms, .headers = {{"user-id", user}, {"x-outer", "1"}}, .endpoint = ep});
                std::lock_guard lk(mu);
                results.push_back(r.ok() ? (r.body == "ok " + user ? "ok" : r.body) : "call failed: " + r.status.message);
            }
        });
    }
    for (auto& t : ts) t.join();
    REQUIRE(results.size() == threads * calls);
    for (auto& r : results) CHECK(r == "ok");
}

TEST_CASE("a traceparent keeps its trace id and flags; a later version continues as version 00", "[context][trace]") {
    const auto mode = GENERATE(plexus::trace_mode::propagate, plexus::trace_mode::start);
    INFO("trace_mode " << mode_name(mode));
    recorder rec;
    auto opts = [mode](std::string name) {
        auto o = opts_for(std::move(name));
        o.tracing = mode;
        return o;
    };
    plexus::node c(opts("c"));
    c.serve("c").raw_method("leaf", [&](plexus::request& r) {
        rec.add("c", snap(r.context));
        return std::string();
    });
    c.start();
    plexus::node b(opts("b"));
    plexus::node* bp = &b;
    const std::string c_ep = c.endpoints().front();
    b.serve("b").raw_method("top", [&, bp](plexus::request& r) {
        rec.add("b", snap(r.context));
        auto rep = bp->call_raw("c", "leaf", "", {.endpoint = c_ep});
        if (!rep.ok()) throw plexus::error(rep.status);
        return std::string();
    });
    b.start();
    plexus::node a(opts("a"));
    a.start();

    const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736", span = "00f067aa0ba902b7";
    // W3C Trace Context: a later version is read as version 00 where it can be (its
    // first 55 characters, then '-' and fields 00 lacks); a hop continues it as 00.
    const std::string incoming = GENERATE(as<std::string>{}, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                                          "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields");
    const std::string flags = incoming.substr(53, 2);
    INFO("incoming " << incoming);
    REQUIRE(a.call_raw("b", "top", "", {.headers = {{"traceparent", incoming}}, .endpoint = b.endpoints().front()}).ok());
    const auto sb = rec.only("b");
    const auto sc = rec.only("c");
    INFO("b: " << sb.text() << "\nc: " << sc.text());
    for (auto* s : {&sb, &sc}) {
        const auto tp = s->get("traceparent").value_or("");
        CHECK(tp.size() == 55);
        CHECK(valid_traceparent(tp));
        CHECK(tp.substr(0, 36) == "00-" + trace + "-");
        CHECK(tp.substr(52) == "-" + flags);
        CHECK(s->trace == trace);
    }
    CHECK(sb.parent == span);
    CHECK(sb.span.size() == 16);
    CHECK(sb.span != span);
    CHECK(sc.parent == sb.span);
    CHECK(sc.span.size() == 16);
    CHECK(sc.span != sb.span);
}
