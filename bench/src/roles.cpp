// What the child processes do. Each prints `ep <endpoint>` (or `ready`, `done ...`,
// `result ...`) on stdout and ends when its stdin closes, so a parent that dies takes
// its children with it.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include <plexus/node.hpp>

#include "figures.hpp"

namespace bench {

namespace {

// Raw servers block in recv on the main thread; this ends the process when stdin closes.
void exit_on_stdin_eof() {
    std::thread([] {
        wait_stdin_eof();
        std::_Exit(0);
    }).detach();
}

std::string echo(plexus::request& rq) { return std::string(rq.body); }

// ---------------------------------------------------------------- servers

// Default workers (4): the pool handler of figures 1 and 2 runs on them.
int server_plexus() {
    auto o = node_options_for("bench-server");
    o.pub_bind = {};
    plexus::node n(o);
    n.serve(std::string(service))
        .raw_method(std::string(method_inline), echo, {.exec = plexus::execution::inline_loop})
        .raw_method(std::string(method_pool), echo, {.exec = plexus::execution::pool});
    n.start();
    say("ep " + n.endpoints().at(0));
    wait_stdin_eof();
    n.stop();
    return 0;
}

// REP answering every request with the reply envelope a Plexus server sends.
int server_raw_rep(const std::string& rep) {
    zmq::context_t ctx(1);
    zmq::socket_t s(ctx, zmq::socket_type::rep);
    s.bind("tcp://127.0.0.1:*");
    say("ep " + s.get(zmq::sockopt::last_endpoint));
    exit_on_stdin_eof();
    for (;;) {
        zmq::message_t m;
        (void)s.recv(m);
        (void)s.send(zmq::buffer(rep), zmq::send_flags::none);
    }
}

// ROUTER echoing the routing frames and the delimiter, then the reply envelope.
int server_raw_router(const std::string& rep) {
    zmq::context_t ctx(1);
    zmq::socket_t s(ctx, zmq::socket_type::router);
    s.set(zmq::sockopt::sndhwm, 10000);
    s.set(zmq::sockopt::rcvhwm, 10000);
    s.bind("tcp://127.0.0.1:*");
    say("ep " + s.get(zmq::sockopt::last_endpoint));
    exit_on_stdin_eof();
    std::vector<zmq::message_t> frames;
    for (;;) {
        frames.clear();
        for (;;) {
            zmq::message_t m;
            (void)s.recv(m);
            const bool more = m.more();
            frames.push_back(std::move(m));
            if (!more) break;
        }
        for (std::size_t i = 0; i + 1 < frames.size(); ++i) (void)s.send(frames[i], zmq::send_flags::sndmore);
        (void)s.send(zmq::buffer(rep), zmq::send_flags::none);
    }
}

// ---------------------------------------------------------------- pub/sub

// Publishes warm-up events until the parent says `go` (the subscriber has seen one:
// the slow-joiner window is over), then `count` measured events as fast as it can.
int pub_plexus(std::size_t body_size, bool with_headers, long count) {
    auto o = node_options_for("bench-pub");
    o.bind = {};
    o.workers = 1;
    plexus::node n(o);
    n.start();
    say("ep " + n.pub_endpoints().at(0));
    const plexus::headers h = with_headers ? six_headers() : plexus::headers{};
    const std::string body = body_of(body_size);
    for (;;) {
        auto line = poll_stdin_line(2ms);
        if (line && *line == "go") break;
        if (line && *line == "eof") return 1;
        (void)n.publish_raw(warm_topic, body, h);
    }
    long dropped = 0;
    const auto t0 = now_ns();
    for (long i = 0; i < count; ++i)
        if (!n.publish_raw(topic, body, h)) ++dropped;
    const auto t1 = now_ns();
    say(fmt("done %lld %lld %ld", static_cast<long long>(t0), static_cast<long long>(t1), dropped));
    wait_stdin_eof();
    n.stop();
    return 0;
}

int pub_raw(const std::string& env, long count) {
    zmq::context_t ctx(1);
    zmq::socket_t s(ctx, zmq::socket_type::pub);
    s.set(zmq::sockopt::xpub_nodrop, 1);
    s.set(zmq::sockopt::sndhwm, 10000); // as a Plexus node's default send_hwm
    s.set(zmq::sockopt::linger, 1000);
    s.bind("tcp://127.0.0.1:*");
    say("ep " + s.get(zmq::sockopt::last_endpoint));
    for (;;) {
        auto line = poll_stdin_line(2ms);
        if (line && *line == "go") break;
        if (line && *line == "eof") return 1;
        if (s.send(zmq::buffer(warm_topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
            (void)s.send(zmq::buffer(env), zmq::send_flags::none);
    }
    const auto t0 = now_ns();
    for (long i = 0; i < count; ++i) {
        // Blocking sends: XPUB_NODROP turns a full queue into back-pressure.
        (void)s.send(zmq::buffer(topic), zmq::send_flags::sndmore);
        (void)s.send(zmq::buffer(env), zmq::send_flags::none);
    }
    const auto t1 = now_ns();
    say(fmt("done %lld %lld 0", static_cast<long long>(t0), static_cast<long long>(t1)));
    wait_stdin_eof();
    return 0;
}

// Says `ready` at the first warm-up event, then counts measured events until all
// `count` came or none came for `idle_ms`. Prints `result <received> <last_ns> <gaps>`.
int sub_plexus(const std::string& ep, long count, long idle_ms) {
    auto o = node_options_for("bench-sub");
    o.bind = {};
    o.pub_bind = {};
    o.subscribe_to = {ep};
    o.workers = 1;
    plexus::node n(o);
    n.start();
    std::atomic<long> received{0};
    std::atomic<bool> warm{false}, all{false};
    std::atomic<long long> last_ns{0};
    auto sub = n.subscribe(
        "",
        [&](const plexus::event& e) {
            if (e.topic == topic) {
                if (received.fetch_add(1, std::memory_order_relaxed) + 1 == count) {
                    last_ns = now_ns();
                    all = true;
                }
            } else {
                warm.store(true, std::memory_order_relaxed);
            }
        },
        plexus::execution::inline_loop);
    const auto start = clk::now();
    while (!warm) {
        if (clk::now() - start > 20s) {
            say("result 0 0 0");
            return 1;
        }
        std::this_thread::sleep_for(1ms);
    }
    say("ready");
    long seen = 0;
    auto progress = clk::now();
    long long progress_ns = now_ns();
    while (!all) {
        std::this_thread::sleep_for(1ms);
        const long r = received.load(std::memory_order_relaxed);
        if (r != seen) {
            seen = r;
            progress = clk::now();
            progress_ns = now_ns();
        } else if (clk::now() - progress > std::chrono::milliseconds(seen ? idle_ms : 20000)) {
            break;
        }
    }
    const long long last = all ? last_ns.load() : progress_ns;
    std::uint64_t gaps = 0;
    for (auto& t : n.stats().topics)
        if (t.topic == topic) gaps = t.gaps;
    say(fmt("result %ld %lld %llu", received.load(), last, static_cast<unsigned long long>(gaps)));
    sub.cancel();
    n.stop();
    return 0;
}

int sub_raw(const std::string& ep, long count, long idle_ms) {
    zmq::context_t ctx(1);
    zmq::socket_t s(ctx, zmq::socket_type::sub);
    s.set(zmq::sockopt::rcvhwm, 10000); // as a Plexus node's default recv_hwm
    s.set(zmq::sockopt::rcvtimeo, 5);
    s.set(zmq::sockopt::subscribe, "");
    s.connect(ep);
    long received = 0;
    bool ready = false;
    long long last = 0; // receipt of the last event, sampled every 1024 (a clock read per event would tax the baseline)
    auto progress = clk::now();
    const auto start = clk::now();
    for (;;) {
        zmq::message_t t, env;
        if (!s.recv(t)) {
            const auto now = clk::now();
            if (received && now - progress > std::chrono::milliseconds(idle_ms)) break;
            if (!received && now - start > 40s) break;
            continue;
        }
        if (t.more()) (void)s.recv(env);
        if (t.to_string_view() == topic) {
            if (++received == count) {
                last = now_ns();
                break;
            }
            if ((received & 1023) == 0) {
                progress = clk::now();
                last = now_ns();
            }
        } else if (!ready) {
            ready = true;
            say("ready");
        }
    }
    say(fmt("result %ld %lld 0", received, last));
    return 0;
}

// ---------------------------------------------------------------- discovery

// A node found by name (figure 6): serves `svc` with "who" (answers the instance
// name, inline) and "slow" (says `busy` on stdout, then sleeps the body's
// milliseconds, at most 60 s: a call the parent keeps in flight until it kills this
// process). Says `ep <rpc endpoint> <ns at entry> <ns when started>` once started.
int discovery_server(const std::string& cluster, std::uint16_t port, const std::string& svc,
                     const std::string& instance) {
    const long long entered = now_ns();
    auto o = node_options_for(instance);
    o.discovery = beacons(cluster, port);
    plexus::node n(o);
    static std::mutex out_mu; // lines from handler threads must not interleave
    n.serve(svc)
        .raw_method("who", [instance](plexus::request&) { return instance; }, {.exec = plexus::execution::inline_loop})
        .raw_method("slow", [instance](plexus::request& rq) {
            {
                std::lock_guard lk(out_mu);
                say("busy");
            }
            const long ms = std::clamp(std::atol(std::string(rq.body).c_str()), 0L, 60000L);
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            return instance;
        });
    n.start();
    {
        std::lock_guard lk(out_mu);
        say(fmt("ep %s %lld %lld", n.endpoints().at(0).c_str(), entered, static_cast<long long>(now_ns())));
    }
    wait_stdin_eof();
    n.stop();
    return 0;
}

// ---------------------------------------------------------------- resources

// RSS of this process before and after a default node starts, CPU of the idle node
// over `cpu_s`, RSS with 1,000 asynchronous calls pending to a server that never answers.
int resources_plexus(const std::string& silent_router, double cpu_s) {
    const long base = rss_kb();
    auto o = node_options_for("bench-idle");
    plexus::node n(o);
    n.serve(std::string(service))
        .raw_method(std::string(method_inline), echo, {.exec = plexus::execution::inline_loop})
        .raw_method(std::string(method_pool), echo, {.exec = plexus::execution::pool});
    n.start();
    std::this_thread::sleep_for(500ms);
    const long idle = rss_kb();
    const double c0 = cpu_seconds();
    const auto t0 = clk::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(cpu_s));
    const double c1 = cpu_seconds();
    const double wall = std::chrono::duration<double>(clk::now() - t0).count();
    const double cpu_pct = (c1 - c0) / wall * 100;

    plexus::call_options co;
    co.endpoint = silent_router;
    co.timeout = 60s;
    co.headers = six_headers();
    std::vector<plexus::call_future> pending;
    pending.reserve(1000);
    const std::string body = body_of(64);
    for (int i = 0; i < 1000; ++i) pending.push_back(n.call_async(service, method_inline, body, co));
    const auto until = clk::now() + 5s;
    while (n.stats().calls_sent < 1000 && clk::now() < until) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(500ms); // the I/O thread has sent them
    int ready = 0;
    for (auto& f : pending)
        if (f.wait_for(0s) == std::future_status::ready) ++ready;
    const long inflight = rss_kb();
    say(fmt("result %ld %ld %.4f %ld %d", base, idle, cpu_pct, inflight, ready));
    n.stop();
    return 0;
}

// The same sockets without Plexus: context, ROUTER and PUB bound.
int resources_raw() {
    const long base = rss_kb();
    zmq::context_t ctx(1);
    zmq::socket_t r(ctx, zmq::socket_type::router), p(ctx, zmq::socket_type::pub);
    r.bind("tcp://127.0.0.1:*");
    p.bind("tcp://127.0.0.1:*");
    std::this_thread::sleep_for(500ms);
    say(fmt("result %ld %ld", base, rss_kb()));
    return 0;
}

long to_long(const std::string& s) { return std::stol(s); }

} // namespace

bool is_role(const std::string& name) {
    return name == "server" || name == "pub" || name == "sub" || name == "resources" || name == "discovery-server";
}

int run_role(const std::vector<std::string>& a) {
    auto arg = [&](std::size_t i) -> const std::string& {
        if (i >= a.size()) throw std::invalid_argument("role " + a.at(0) + ": missing argument " + std::to_string(i));
        return a[i];
    };
    const std::string& role = arg(0);
    if (role == "server") {
        if (arg(1) == "plexus") return server_plexus();
        if (arg(1) == "raw-rep") return server_raw_rep(from_hex(arg(2)));
        if (arg(1) == "raw-router") return server_raw_router(from_hex(arg(2)));
    } else if (role == "pub") {
        const auto size = static_cast<std::size_t>(to_long(arg(2)));
        const bool h = arg(3) == "1";
        const long count = to_long(arg(4));
        if (arg(1) == "plexus") return pub_plexus(size, h, count);
        if (arg(1) == "raw") return pub_raw(from_hex(arg(5)), count);
    } else if (role == "sub") {
        if (arg(1) == "plexus") return sub_plexus(arg(2), to_long(arg(3)), to_long(arg(4)));
        if (arg(1) == "raw") return sub_raw(arg(2), to_long(arg(3)), to_long(arg(4)));
    } else if (role == "discovery-server") {
        return discovery_server(arg(1), static_cast<std::uint16_t>(to_long(arg(2))), arg(3), arg(4));
    } else if (role == "resources") {
        if (arg(1) == "plexus") return resources_plexus(arg(2), std::stod(arg(3)));
        if (arg(1) == "raw") return resources_raw();
    }
    std::fprintf(stderr, "plexus_bench: unknown role arguments\n");
    return 2;
}

} // namespace bench
