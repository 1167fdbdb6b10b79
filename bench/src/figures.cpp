// The orchestrator side of each figure: Plexus and its raw libzmq baseline in the
// same run, servers and publishers in child processes.
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include <plexus/codec.hpp>
#include <plexus/node.hpp>

#include "figures.hpp"

namespace bench {

namespace {

constexpr auto spawn_timeout = 15s;
// Bounds a raw baseline's wait for a reply: a server that died fails the figure.
constexpr int raw_reply_timeout_ms = 10000;

plexus::node_options client_options(const std::string& server_ep) {
    auto o = node_options_for("bench-client");
    o.bind = {};
    o.pub_bind = {};
    o.connect = {server_ep};
    return o;
}

// First calls wait for the server's `describe` (name resolution); bounded.
void warm_plexus(plexus::node& cli, std::string_view method) {
    const auto until = clk::now() + 10s;
    for (;;) {
        auto r = cli.call_raw(service, method, "x");
        if (r.ok()) return;
        if (clk::now() > until) throw std::runtime_error("Plexus server does not answer: " + r.status.message);
    }
}

void stop_child(child& c) {
    c.close_stdin();
    c.wait(5s);
}

// A Plexus server process (role `server plexus`) and a client node of this process
// connected to it, past name resolution. stop() ends the client, then the server.
struct plexus_server_client {
    child srv = child::spawn({"server", "plexus"});
    const std::string ep = srv.expect("ep", spawn_timeout);
    plexus::node cli{client_options(ep)};

    plexus_server_client() {
        cli.start();
        warm_plexus(cli, method_inline);
    }
    void stop() {
        cli.stop();
        stop_child(srv);
    }
};

// A raw REQ client (figure 1) and a raw DEALER with a Plexus node's queue limits
// (figure 2), connected to `ep`; a reply that does not come in time is an error.
zmq::socket_t raw_client(zmq::context_t& ctx, zmq::socket_type type, const std::string& ep) {
    zmq::socket_t s(ctx, type);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, raw_reply_timeout_ms);
    if (type == zmq::socket_type::dealer) {
        s.set(zmq::sockopt::sndhwm, 10000); // as a Plexus node's defaults
        s.set(zmq::sockopt::rcvhwm, 10000);
    }
    s.connect(ep);
    return s;
}

void recv_reply(zmq::socket_t& s, zmq::message_t& m) {
    if (!s.recv(m)) throw std::runtime_error("raw baseline: no reply in time");
}

// A row's message shape: the body size, with the six headers or none.
struct envelope_case {
    std::size_t body;
    bool headers;
};

std::string envelope_label(std::size_t body, bool headers, std::size_t bytes) {
    return fmt("%s%s (%zu B envelope)", body >= 1024 ? "1 KiB" : fmt("%zu B", body).c_str(),
               headers ? " + 6 hdr" : ", no hdr", bytes);
}

// Says so when Plexus put headers on an envelope the application gave none.
void note_added_headers(const std::string& envelope, const char* what, report& r) {
    plexus::envelope_view v;
    if (!plexus::decode(envelope, v).ok() || v.headers.empty()) return;
    std::string keys;
    for (auto& [k, val] : v.headers) keys += (keys.empty() ? "" : ", ") + std::string(k);
    r.notes.push_back(fmt("%s: the application sets no header, yet Plexus sends %zu (%s), added by its built-in "
                          "interceptors: the envelope is %zu B; the raw baseline moves the same bytes",
                          what, v.headers.size(), keys.c_str(), envelope.size()));
}

std::vector<zmq::message_t> recv_all(zmq::socket_t& s) {
    std::vector<zmq::message_t> frames;
    for (;;) {
        zmq::message_t m;
        if (!s.recv(m)) throw std::runtime_error("capture: nothing received in time");
        const bool more = m.more();
        frames.push_back(std::move(m));
        if (!more) return frames;
    }
}

wire_bytes capture(std::size_t body_size, bool with_headers) {
    const std::string body = body_of(body_size);
    const plexus::headers h = with_headers ? six_headers() : plexus::headers{};
    zmq::context_t ctx(1);
    wire_bytes w;

    // The request: a Plexus client calling a raw ROUTER.
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::rcvtimeo, 5000);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    auto co_opts = node_options_for("bench-capture");
    co_opts.bind = {};
    plexus::node cli(co_opts);
    cli.start();
    plexus::call_options co;
    co.endpoint = router.get(zmq::sockopt::last_endpoint);
    co.timeout = 5s; // the width of the deadline as in the runs
    co.headers = h;
    auto pending = cli.call_async(service, method_inline, body, co);
    w.request = recv_all(router).back().to_string();

    // The reply: that request sent to a Plexus server by a raw DEALER.
    auto so = node_options_for("bench-capture-server");
    so.pub_bind = {};
    plexus::node srv(so);
    srv.serve(std::string(service)).raw_method(std::string(method_inline), [](plexus::request& rq) {
        return std::string(rq.body);
    }, {.exec = plexus::execution::inline_loop});
    srv.start();
    zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::rcvtimeo, 5000);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.connect(srv.endpoints().at(0));
    (void)dealer.send(zmq::message_t(), zmq::send_flags::sndmore);
    (void)dealer.send(zmq::buffer(w.request), zmq::send_flags::none);
    w.reply = recv_all(dealer).back().to_string();

    // The event: the client node publishing, a raw SUB listening (past the slow joiner).
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::rcvtimeo, 5);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::subscribe, topic);
    sub.connect(cli.pub_endpoints().at(0));
    const auto until = clk::now() + 5s;
    while (w.event.empty()) {
        if (clk::now() > until) throw std::runtime_error("capture: no event came");
        (void)cli.publish_raw(topic, body, h);
        zmq::message_t t;
        if (sub.recv(t)) w.event = recv_all(sub).back().to_string();
    }
    srv.stop();
    cli.stop();
    return w;
}

} // namespace

const wire_bytes& plexus_wire(std::size_t body, bool with_headers) {
    static std::map<std::pair<std::size_t, bool>, wire_bytes> cache;
    auto key = std::make_pair(body, with_headers);
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, capture(body, with_headers)).first;
    return it->second;
}

// ---------------------------------------------------------------- 1. latency

void fig1_latency(const sizes& s, report& r) {
    plexus_server_client plx;
    auto& cli = plx.cli;
    plexus::call_options co;
    co.headers = six_headers();
    co.timeout = 5s;
    zmq::context_t ctx(1);

    for (std::size_t body_size : {std::size_t{64}, std::size_t{1024}}) {
        const auto& wire = plexus_wire(body_size, true);
        auto rsrv = child::spawn({"server", "raw-rep", to_hex(wire.reply)});
        zmq::socket_t req = raw_client(ctx, zmq::socket_type::req, rsrv.expect("ep", spawn_timeout));
        const std::string& req_env = wire.request;
        const std::string body = body_of(body_size);
        long errors = 0;
        // The same raw client against the Plexus server: splits the overhead between
        // the client and the server side.
        zmq::socket_t req_plexus = raw_client(ctx, zmq::socket_type::req, plx.ep);
        auto raw_to = [&](zmq::socket_t& sock) {
            (void)sock.send(zmq::buffer(req_env), zmq::send_flags::none);
            zmq::message_t m;
            recv_reply(sock, m);
            keep(m);
        };
        auto raw_once = [&] { raw_to(req); };
        auto plexus_once = [&](std::string_view method) {
            auto rep = cli.call_raw(service, method, body, co);
            if (!rep.ok() || rep.body.size() != body_size) ++errors;
        };
        const int warm = std::max(50, s.latency_calls / 20);
        for (int i = 0; i < warm; ++i) {
            raw_once();
            raw_to(req_plexus);
            plexus_once(method_inline);
            plexus_once(method_pool);
        }
        std::vector<double> raw_s, mixed_s, inl_s, pool_s;
        const int chunk = std::max(1, s.latency_calls / s.latency_rounds);
        auto timed = [&](std::vector<double>& out, auto&& once) {
            for (int i = 0; i < chunk; ++i) {
                const auto t0 = now_ns();
                once();
                out.push_back(static_cast<double>(now_ns() - t0) / 1e3);
            }
        };
        // Rounds alternate the three so that a burst of load from elsewhere hits all.
        for (int round = 0; round < s.latency_rounds; ++round) {
            timed(raw_s, raw_once);
            timed(inl_s, [&] { plexus_once(method_inline); });
            timed(pool_s, [&] { plexus_once(method_pool); });
            timed(mixed_s, [&] { raw_to(req_plexus); });
        }
        const auto pr = percentiles_of(raw_s), pi = percentiles_of(inl_s), pp = percentiles_of(pool_s);
        const auto pm = percentiles_of(mixed_s);
        const std::string label = envelope_label(body_size, true, req_env.size());
        r.rows.push_back({"1", "latency p50 / p99, " + label + ": call_raw -> inline handler",
                          us(pi.p50) + " / " + us(pi.p99), us(pr.p50) + " / " + us(pr.p99),
                          ratio_x(pi.p50 / pr.p50) + " / " + ratio_x(pi.p99 / pr.p99), "p50 <= 1.2x",
                          verdict_at_most(pi.p50 / pr.p50, 1.2)});
        r.rows.push_back({"1", "latency p50 / p99, " + label + ": call_raw -> pool handler",
                          us(pp.p50) + " / " + us(pp.p99), us(pr.p50) + " / " + us(pr.p99),
                          ratio_x(pp.p50 / pr.p50) + " / " + ratio_x(pp.p99 / pr.p99), "(info) p50 <= 1.2x",
                          verdict_at_most(pp.p50 / pr.p50, 1.2)});
        r.rows.push_back({"1", "  the server's share: raw REQ client -> Plexus server, inline handler",
                          us(pm.p50) + " / " + us(pm.p99), us(pr.p50) + " / " + us(pr.p99),
                          ratio_x(pm.p50 / pr.p50) + " / " + ratio_x(pm.p99 / pr.p99), "(info)", ""});
        if (errors) r.notes.push_back(fmt("figure 1, %zu B: %ld Plexus calls failed", body_size, errors));
        stop_child(rsrv);
    }
    plx.stop();
}

// ---------------------------------------------------------------- 2. pipelined

namespace {

// Raw DEALER keeping `window` requests in flight on one thread.
double raw_pipelined(zmq::socket_t& d, const std::string& req_env, int window, double seconds, long& done) {
    long inflight = 0;
    done = 0;
    bool issuing = true;
    const auto t0 = clk::now();
    const auto end = t0 + std::chrono::duration<double>(seconds);
    while (issuing || inflight > 0) {
        while (issuing && inflight < window) {
            (void)d.send(zmq::message_t(), zmq::send_flags::sndmore);
            (void)d.send(zmq::buffer(req_env), zmq::send_flags::none);
            ++inflight;
        }
        zmq::message_t delim, env;
        recv_reply(d, delim);
        recv_reply(d, env);
        --inflight;
        ++done;
        if ((done & 255) == 0 && clk::now() >= end) issuing = false;
    }
    return static_cast<double>(done) / std::chrono::duration<double>(clk::now() - t0).count();
}

// call_async futures, a sliding window of `window` calls in flight.
double plexus_futures(plexus::node& cli, std::string_view method, const std::string& body,
                      const plexus::call_options& co, int window, double seconds, long& errors, long& done) {
    std::deque<plexus::call_future> win;
    done = 0;
    bool issuing = true;
    const auto t0 = clk::now();
    const auto end = t0 + std::chrono::duration<double>(seconds);
    while (issuing || !win.empty()) {
        while (issuing && static_cast<int>(win.size()) < window) win.push_back(cli.call_async(service, method, body, co));
        auto rep = win.front().get();
        win.pop_front();
        if (!rep.ok()) ++errors;
        ++done;
        if ((done & 255) == 0 && clk::now() >= end) issuing = false;
    }
    return static_cast<double>(done) / std::chrono::duration<double>(clk::now() - t0).count();
}

// call_async with callbacks (run on the client's workers), `window` in flight.
double plexus_callbacks(plexus::node& cli, std::string_view method, const std::string& body,
                        const plexus::call_options& co, int window, double seconds, long& errors, long& done) {
    struct state {
        std::counting_semaphore<1 << 20> slots{0};
        std::atomic<long> done{0}, errors{0};
    };
    auto st = std::make_shared<state>();
    st->slots.release(window);
    const auto t0 = clk::now();
    const auto end = t0 + std::chrono::duration<double>(seconds);
    long issued = 0;
    while (clk::now() < end || (issued & 255) != 0) {
        if (!st->slots.try_acquire_for(10s)) throw std::runtime_error("callbacks stopped coming");
        cli.call_async(service, method, body, co, [st](plexus::reply rep) {
            if (!rep.ok()) st->errors++;
            st->done++;
            st->slots.release();
        });
        ++issued;
    }
    for (int i = 0; i < window; ++i)
        if (!st->slots.try_acquire_for(10s)) throw std::runtime_error("callbacks stopped coming");
    const double secs = std::chrono::duration<double>(clk::now() - t0).count();
    errors += st->errors;
    done = st->done;
    return static_cast<double>(st->done) / secs;
}

// Completion-driven: `window` calls whose callbacks, on the I/O thread, make the next
// call, until the time is up; the application thread only waits for the end.
struct chain_state {
    plexus::node* cli;
    std::string_view method;
    const std::string* body;
    const plexus::call_options* co;
    clk::time_point end;
    std::atomic<long> done{0}, errors{0}, live{0};
    std::binary_semaphore finished{0};
};

void chain_next(const std::shared_ptr<chain_state>& st) {
    st->cli->call_async(service, st->method, *st->body, *st->co, [st](plexus::reply rep) {
        if (!rep.ok()) st->errors++;
        st->done++;
        if (clk::now() < st->end)
            chain_next(st);
        else if (st->live.fetch_sub(1) == 1)
            st->finished.release();
    });
}

double plexus_chained(plexus::node& cli, std::string_view method, const std::string& body,
                      const plexus::call_options& co, int window, double seconds, long& errors, long& done) {
    auto st = std::make_shared<chain_state>();
    st->cli = &cli;
    st->method = method;
    st->body = &body;
    st->co = &co;
    const auto t0 = clk::now();
    st->end = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(seconds));
    st->live = window;
    for (int i = 0; i < window; ++i) chain_next(st);
    if (!st->finished.try_acquire_for(std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(seconds)) + 10s))
        throw std::runtime_error("chained calls stopped coming");
    const double secs = std::chrono::duration<double>(clk::now() - t0).count();
    errors += st->errors;
    done = st->done;
    return static_cast<double>(st->done) / secs;
}

// CPU spent per call by the client (this process) and the server process.
struct cpu_per_call {
    double client = 0, server = 0;
    long calls = 0;
    template <class F>
    double measure(pid_t server_pid, F&& run) {
        const double c0 = cpu_seconds(), s0 = cpu_seconds(server_pid);
        long done = 0;
        const double rate = run(done);
        client += cpu_seconds() - c0;
        server += cpu_seconds(server_pid) - s0;
        calls += done;
        return rate;
    }
    [[nodiscard]] std::string cell() const {
        if (!calls) return "-";
        return fmt("%.2f / %.2f us", client / static_cast<double>(calls) * 1e6, server / static_cast<double>(calls) * 1e6);
    }
    [[nodiscard]] double total() const { return calls ? (client + server) / static_cast<double>(calls) : 0; }
};

} // namespace

void fig2_pipelined(const sizes& s, report& r) {
    plexus_server_client plx;
    auto& cli = plx.cli;
    zmq::context_t ctx(1);
    const plexus::headers h = six_headers();
    const double warm_s = std::min(0.2, s.pipelined_seconds);

    for (const envelope_case c : {envelope_case{64, true}, envelope_case{1024, true}, envelope_case{64, false}}) {
        const auto& wire = plexus_wire(c.body, c.headers);
        auto rsrv = child::spawn({"server", "raw-router", to_hex(wire.reply)});
        zmq::socket_t d = raw_client(ctx, zmq::socket_type::dealer, rsrv.expect("ep", spawn_timeout));
        const std::string& req_env = wire.request;
        if (!c.headers) note_added_headers(req_env, "figure 2, minimal envelope", r);
        const std::string body = body_of(c.body);
        plexus::call_options co;
        co.timeout = 10s;
        if (c.headers) co.headers = h;
        long errors = 0;
        const bool extras = c.body == 64 && c.headers;

        long ignored = 0;
        (void)raw_pipelined(d, req_env, s.pipelined_window, warm_s, ignored);
        (void)plexus_futures(cli, method_inline, body, co, s.pipelined_window, warm_s, errors, ignored);
        zmq::socket_t d_plexus = raw_client(ctx, zmq::socket_type::dealer, plx.ep); // raw client, Plexus server
        (void)raw_pipelined(d_plexus, req_env, s.pipelined_window, warm_s, ignored);
        plexus::call_options co_io = co; // callbacks on the I/O thread
        co_io.callback_exec = plexus::execution::inline_loop;
        std::vector<double> raw_r, fut_r, pool_r, cb_r, cbio_r, chain_r, mixed_r;
        cpu_per_call raw_cpu, fut_cpu;
        const pid_t raw_pid = rsrv.pid(), plexus_pid = plx.srv.pid();
        const int w = s.pipelined_window;
        const double secs = s.pipelined_seconds;
        for (int round = 0; round < s.pipelined_rounds; ++round) {
            raw_r.push_back(raw_cpu.measure(raw_pid, [&](long& n) { return raw_pipelined(d, req_env, w, secs, n); }));
            fut_r.push_back(fut_cpu.measure(plexus_pid, [&](long& n) {
                return plexus_futures(cli, method_inline, body, co, w, secs, errors, n);
            }));
            mixed_r.push_back(raw_pipelined(d_plexus, req_env, w, secs, ignored));
            cbio_r.push_back(plexus_callbacks(cli, method_inline, body, co_io, w, secs, errors, ignored));
            chain_r.push_back(plexus_chained(cli, method_inline, body, co_io, w, secs, errors, ignored));
            if (extras) {
                pool_r.push_back(plexus_futures(cli, method_pool, body, co, w, secs, errors, ignored));
                cb_r.push_back(plexus_callbacks(cli, method_inline, body, co, w, secs, errors, ignored));
            }
        }
        const double raw = best_of(raw_r), fut = best_of(fut_r);
        const std::string label = fmt("pipelined req/s, %d in flight, %s", s.pipelined_window,
                                      envelope_label(c.body, c.headers, req_env.size()).c_str());
        if (c.headers) {
            r.rows.push_back({"2", label + ": futures -> inline", rate(fut), rate(raw), percent(fut / raw),
                              ">= 80% of raw", verdict_at_least(fut / raw, 0.8)});
        } else {
            const std::string v = "80%: " + verdict_at_least(fut / raw, 0.8) + "; 1 M/s: " + verdict_at_least(fut, 1e6);
            r.rows.push_back({"2", label + ": futures -> inline (minimal envelope)", rate(fut), rate(raw),
                              percent(fut / raw), ">= 80% of raw and >= 1 M/s", v});
        }
        const double cbio = best_of(cbio_r);
        r.rows.push_back({"2", label + ": callbacks on the I/O thread -> inline", rate(cbio), rate(raw), percent(cbio / raw),
                          c.headers ? ">= 80% of raw" : ">= 80% of raw and >= 1 M/s",
                          c.headers ? verdict_at_least(cbio / raw, 0.8)
                                    : "80%: " + verdict_at_least(cbio / raw, 0.8) + "; 1 M/s: " + verdict_at_least(cbio, 1e6)});
        const double chain = best_of(chain_r);
        r.rows.push_back({"2", label + ": callbacks on the I/O thread making the next call -> inline", rate(chain), rate(raw),
                          percent(chain / raw), "(info)", ""});
        const double mixed = best_of(mixed_r);
        r.rows.push_back({"2", "  the server's share: raw DEALER client -> Plexus server, inline handler", rate(mixed),
                          rate(raw), percent(mixed / raw), "(info)", ""});
        r.rows.push_back({"2", "  CPU per call, client process / server process (same run)", fut_cpu.cell(), raw_cpu.cell(),
                          raw_cpu.total() > 0 ? ratio_x(fut_cpu.total() / raw_cpu.total()) : "-", "(info)", ""});
        if (extras) {
            const double pool = best_of(pool_r), cb = best_of(cb_r);
            r.rows.push_back({"2", label + ": futures -> pool handler", rate(pool), rate(raw), percent(pool / raw),
                              "(info) >= 80% of raw", verdict_at_least(pool / raw, 0.8)});
            r.rows.push_back({"2", label + ": callbacks (on workers) -> inline", rate(cb), rate(raw), percent(cb / raw),
                              "(info) >= 80% of raw", verdict_at_least(cb / raw, 0.8)});
        }
        if (errors) r.notes.push_back(fmt("figure 2, %zu B: %ld Plexus calls failed", c.body, errors));
        stop_child(rsrv);
    }
    plx.stop();
}

// ---------------------------------------------------------------- 3. pub/sub

namespace {

struct pubsub_result {
    double pub_cpu_us = 0, sub_cpu_us = 0; // per event
    long received = 0;
    long dropped = 0;
    unsigned long long gaps = 0;
    double rate = 0;
};

pubsub_result run_pubsub(const char* impl, std::size_t body, bool headers, long count, long idle_ms) {
    auto pub = child::spawn({"pub", impl, std::to_string(body), headers ? "1" : "0", std::to_string(count),
                             to_hex(plexus_wire(body, headers).event)});
    const auto ep = pub.expect("ep", spawn_timeout);
    auto sub = child::spawn({"sub", impl, ep, std::to_string(count), std::to_string(idle_ms)});
    (void)sub.expect("ready", 30s);
    const double p0 = cpu_seconds(pub.pid()), s0 = cpu_seconds(sub.pid());
    pub.write_line("go");
    const auto res = sub.expect("result", 180s);
    const double p1 = cpu_seconds(pub.pid()), s1 = cpu_seconds(sub.pid());
    const auto done = pub.expect("done", 30s);
    pubsub_result out;
    long long last = 0, t0 = 0, t1 = 0;
    if (std::sscanf(res.c_str(), "%ld %lld %llu", &out.received, &last, &out.gaps) != 3 ||
        std::sscanf(done.c_str(), "%lld %lld %ld", &t0, &t1, &out.dropped) != 3)
        throw std::runtime_error("pub/sub children answered '" + res + "' / '" + done + "'");
    if (out.received > 0 && last > t0) out.rate = static_cast<double>(out.received) / (static_cast<double>(last - t0) / 1e9);
    if (out.received > 0) {
        out.pub_cpu_us = (p1 - p0) / static_cast<double>(out.received) * 1e6;
        out.sub_cpu_us = (s1 - s0) / static_cast<double>(out.received) * 1e6;
    }
    stop_child(pub);
    stop_child(sub);
    return out;
}

std::string loss_cell(const pubsub_result& p, long count) {
    const long lost = count - p.received;
    std::string s = rate(p.rate) + ", lost " + std::to_string(lost);
    if (lost) s += fmt(" (%.2f%%)", 100.0 * static_cast<double>(lost) / static_cast<double>(count));
    if (p.gaps) s += fmt(", seq gaps %llu", p.gaps);
    if (p.dropped) s += fmt(", publish refused %ld", p.dropped);
    return s;
}

} // namespace

void fig3_pubsub(const sizes& s, report& r) {
    const long idle_ms = s.m == mode::smoke ? 500 : 1000;
    for (const envelope_case c : {envelope_case{64, true}, envelope_case{64, false}, envelope_case{1024, true},
                                  envelope_case{1024, false}}) {
        const long count = c.body == 64 ? s.pubsub_small : s.pubsub_large;
        // Best rate of the rounds (outside load only ever slows a run down); worst loss.
        pubsub_result raw, plx;
        auto merge = [](pubsub_result& acc, const pubsub_result& x, int round) {
            if (round == 0 || x.rate > acc.rate) acc.rate = x.rate;
            acc.received = round == 0 ? x.received : std::min(acc.received, x.received);
            acc.gaps = std::max(acc.gaps, x.gaps);
            acc.pub_cpu_us = x.pub_cpu_us; // the last round's
            acc.sub_cpu_us = x.sub_cpu_us;
            acc.dropped = std::max(acc.dropped, x.dropped);
        };
        for (int round = 0; round < s.pubsub_rounds; ++round) {
            merge(raw, run_pubsub("raw", c.body, c.headers, count, idle_ms), round);
            merge(plx, run_pubsub("plexus", c.body, c.headers, count, idle_ms), round);
        }
        const double ratio = raw.rate > 0 ? plx.rate / raw.rate : 0;
        const std::string label = fmt("pub/sub msg/s, %ld events, %s", count,
                                      envelope_label(c.body, c.headers, plexus_wire(c.body, c.headers).event.size()).c_str());
        if (c.body == 64 && !c.headers) {
            const std::string v = "90%: " + verdict_at_least(ratio, 0.9) + "; 2.2 M/s: " + verdict_at_least(plx.rate, 2.2e6);
            r.rows.push_back({"3", label + " (minimal envelope)", loss_cell(plx, count), loss_cell(raw, count),
                              percent(ratio), ">= 90% of raw and >= 2.2 M/s, no loss", v});
        } else {
            r.rows.push_back({"3", label, loss_cell(plx, count), loss_cell(raw, count), percent(ratio),
                              ">= 90% of raw, no loss", verdict_at_least(ratio, 0.9)});
        }
        auto cpu = [](const pubsub_result& p) { return fmt("%.2f / %.2f us", p.pub_cpu_us, p.sub_cpu_us); };
        const double raw_cpu = raw.pub_cpu_us + raw.sub_cpu_us;
        r.rows.push_back({"3", "  CPU per event, publisher process / subscriber process", cpu(plx), cpu(raw),
                          raw_cpu > 0 ? ratio_x((plx.pub_cpu_us + plx.sub_cpu_us) / raw_cpu) : "-", "(info)", ""});
        if (c.body == 64 && !c.headers) note_added_headers(plexus_wire(64, false).event, "figure 3, minimal envelope", r);
        if (plx.received != count || raw.received != count)
            r.notes.push_back(fmt("figure 3, %zu B%s: lost events (Plexus %ld, raw %ld of %ld)", c.body,
                                  c.headers ? " + headers" : "", count - plx.received, count - raw.received, count));
    }
}

// ---------------------------------------------------------------- 4. codec

namespace {

template <class F>
double ns_per_op(const sizes& s, F&& f) {
    for (int i = 0; i < s.codec_iterations / 10; ++i) f(); // warm caches and branch predictors
    std::vector<double> per;
    for (int b = 0; b < s.codec_batches; ++b) {
        const auto t0 = now_ns();
        for (int i = 0; i < s.codec_iterations; ++i) f();
        per.push_back(static_cast<double>(now_ns() - t0) / s.codec_iterations);
    }
    return median_of(per);
}

// The same map written with msgpack-c's packer: the generic-library reference.
void msgpack_encode(const plexus::envelope_view& e, msgpack::sbuffer& sb) {
    msgpack::packer<msgpack::sbuffer> pk(sb);
    auto str = [&](std::string_view v) {
        pk.pack_str(static_cast<std::uint32_t>(v.size()));
        pk.pack_str_body(v.data(), static_cast<std::uint32_t>(v.size()));
    };
    pk.pack_map(static_cast<std::uint32_t>(7 + (e.headers.empty() ? 0 : 1)));
    pk.pack(0);
    pk.pack(e.version);
    pk.pack(1);
    pk.pack(static_cast<unsigned>(e.kind));
    pk.pack(2);
    pk.pack(e.id);
    pk.pack(3);
    str(e.service);
    pk.pack(4);
    str(e.method);
    if (!e.headers.empty()) {
        pk.pack(6);
        pk.pack_map(static_cast<std::uint32_t>(e.headers.size()));
        for (auto& [k, v] : e.headers) {
            str(k);
            str(v);
        }
    }
    pk.pack(7);
    pk.pack(*e.deadline_us);
    pk.pack(10);
    pk.pack_bin(static_cast<std::uint32_t>(e.body.size()));
    pk.pack_bin_body(e.body.data(), static_cast<std::uint32_t>(e.body.size()));
}

} // namespace

void fig4_codec(const sizes& s, report& r) {
    const std::string body = body_of(64);
    const plexus::headers h = six_headers();
    for (const bool with_headers : {true, false}) {
        const plexus::envelope_view e = request_view(body, with_headers ? &h : nullptr);
        std::string bytes;
        plexus::encode(e, bytes);
        msgpack::sbuffer sb;
        msgpack_encode(e, sb);
        if (std::string_view(sb.data(), sb.size()) != bytes)
            r.notes.push_back("figure 4: msgpack-c's packer wrote other bytes than plexus::encode");
        const std::string label = with_headers ? fmt("six-header request, 64 B body (%zu B)", bytes.size())
                                               : fmt("minimal request, 64 B body (%zu B)", bytes.size());

        std::string out;
        out.reserve(2048);
        const double enc = ns_per_op(s, [&] {
            out.clear();
            plexus::encode(e, out);
            keep(out);
        });
        const double enc_ref = ns_per_op(s, [&] {
            sb.clear();
            msgpack_encode(e, sb);
            keep(sb);
        });
        plexus::envelope_view v;
        long bad = 0;
        const double dec = ns_per_op(s, [&] {
            auto st = plexus::decode(bytes, v);
            if (!st.ok()) ++bad;
            keep(v);
        });
        const double dec_ref = ns_per_op(s, [&] {
            msgpack::object_handle oh = msgpack::unpack(bytes.data(), bytes.size());
            keep(oh);
        });
        plexus::envelope owned;
        const double dec_owned = ns_per_op(s, [&] {
            auto st = plexus::decode(bytes, owned);
            if (!st.ok()) ++bad;
            keep(owned);
        });
        if (bad) r.notes.push_back(fmt("figure 4: %ld decodes failed", bad));
        r.rows.push_back({"4", "encode ns, " + label + ", into a reused string", fmt("%.0f ns", enc),
                          fmt("%.0f ns (msgpack-c packer)", enc_ref), ratio_x(enc / enc_ref),
                          with_headers ? "< 100 ns" : "", with_headers ? verdict_at_most(enc, 100) : ""});
        r.rows.push_back({"4", "decode ns, " + label + ", into a reused envelope_view", fmt("%.0f ns", dec),
                          fmt("%.0f ns (msgpack-c object tree)", dec_ref), ratio_x(dec / dec_ref),
                          with_headers ? "< 150 ns" : "", with_headers ? verdict_at_most(dec, 150) : ""});
        r.rows.push_back({"4", "decode ns, " + label + ", into an owning envelope (sync-call reply path)",
                          fmt("%.0f ns", dec_owned), fmt("%.0f ns (msgpack-c object tree)", dec_ref),
                          ratio_x(dec_owned / dec_ref), "(info)", ""});
    }
}

// ---------------------------------------------------------------- 5. resources

void fig5_resources(const sizes& s, report& r) {
    // A server that never answers: a raw ROUTER nobody reads.
    zmq::context_t ctx(1);
    zmq::socket_t silent(ctx, zmq::socket_type::router);
    silent.set(zmq::sockopt::rcvhwm, 100000);
    silent.set(zmq::sockopt::linger, 0);
    silent.bind("tcp://127.0.0.1:*");
    const std::string ep = silent.get(zmq::sockopt::last_endpoint);

    auto c = child::spawn({"resources", "plexus", ep, fmt("%.2f", s.idle_cpu_seconds)});
    const auto res = c.expect("result", std::chrono::seconds(static_cast<long>(s.idle_cpu_seconds) + 30));
    long base = 0, idle = 0, inflight = 0;
    double cpu = 0;
    int ready = 0;
    if (std::sscanf(res.c_str(), "%ld %ld %lf %ld %d", &base, &idle, &cpu, &inflight, &ready) != 5)
        throw std::runtime_error("resources child answered '" + res + "'");
    stop_child(c);
    auto rc = child::spawn({"resources", "raw"});
    const auto rres = rc.expect("result", 30s);
    long rbase = 0, rrss = 0;
    if (std::sscanf(rres.c_str(), "%ld %ld", &rbase, &rrss) != 2)
        throw std::runtime_error("raw resources child answered '" + rres + "'");
    stop_child(rc);

    auto mb = [](long kb) { return fmt("%.1f MB", static_cast<double>(kb) / 1024); };
    r.rows.push_back({"5", "RSS of an idle node, whole process (default options: 4 workers, ROUTER + PUB bound)",
                      mb(idle) + " (+" + mb(idle - base) + " over the bare process)",
                      mb(rrss) + " (+" + mb(rrss - rbase) + "): context + ROUTER + PUB",
                      ratio_x(static_cast<double>(idle) / static_cast<double>(rrss)), "< 16 MB",
                      verdict_at_most(static_cast<double>(idle) / 1024, 16)});
    r.rows.push_back({"5", "RSS of a node holding 1,000 in-flight async calls (6 hdr, 64 B) to a silent ROUTER",
                      mb(inflight) + " (+" + mb(inflight - idle) + " over idle)", "-", "-", "(info)", ""});
    r.rows.push_back({"5",
                      s.m == mode::full ? "CPU of an idle node over 10 s"
                                        : fmt("CPU of an idle node over %.1f s (shortened: %s mode)", s.idle_cpu_seconds,
                                              std::string(mode_name(s.m)).c_str()),
                      fmt("%.3f%% of a core", cpu), "-", "-", "< 1%", verdict_at_most(cpu, 1.0)});
    if (ready) r.notes.push_back(fmt("figure 5: %d of the 1,000 calls to the silent server completed early", ready));
}

// ---------------------------------------------------------------- 6. discovery

namespace {

// Every wait of figure 6 is bounded by this: a bug fails a sample with a note.
constexpr auto discovery_bound = 5s;
constexpr std::string_view disc_service = "bench-disc";

plexus::node_options discovering(std::string name, const std::string& cluster, std::uint16_t port) {
    auto o = node_options_for(std::move(name)); // as every node of the bench
    o.discovery = beacons(cluster, port);
    return o;
}

// When a client node saw each peer (by name) join and leave, and a bounded wait for
// the next peer event. Declared before the node it watches, so that it outlives the
// handler; the handler runs after the node's own (registered later), so a route is
// in place when a waiter wakes.
class peer_watch {
public:
    struct times {
        long long joined_ns = 0, left_ns = 0;
        plexus::discovery::leave_reason reason = plexus::discovery::leave_reason::none;
    };
    void attach(plexus::node& n) {
        n.on_peer_event([this](const plexus::discovery::event& e) {
            const long long t = now_ns();
            std::lock_guard lk(mu_);
            ++events_;
            auto& p = peers_[e.node.name];
            if (e.kind == plexus::discovery::event_kind::join) p.joined_ns = t;
            if (e.kind == plexus::discovery::event_kind::leave) {
                p.left_ns = t;
                p.reason = e.reason;
            }
            cv_.notify_all();
        });
    }
    std::uint64_t events() {
        std::lock_guard lk(mu_);
        return events_;
    }
    // Until an event after the `seen`-th, at most `bound`.
    void wait_next(std::uint64_t seen, std::chrono::microseconds bound) {
        std::unique_lock lk(mu_);
        cv_.wait_for(lk, bound, [&] { return events_ > seen; });
    }
    // Until `name` joined (left, with `leave`), at most `bound`; its times either way.
    times wait_for(const std::string& name, bool leave, std::chrono::milliseconds bound) {
        std::unique_lock lk(mu_);
        cv_.wait_for(lk, bound, [&] {
            auto it = peers_.find(name);
            return it != peers_.end() && (leave ? it->second.left_ns : it->second.joined_ns) != 0;
        });
        auto it = peers_.find(name);
        return it == peers_.end() ? times{} : it->second;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::uint64_t events_ = 0;
    std::map<std::string, times> peers_;
};

std::string ms_cell(std::vector<double> v) {
    if (v.empty()) return "failed (see notes)";
    const auto p = percentiles_of(v);
    return fmt("p50 %.2f ms / max %.2f ms", p.p50, v.back());
}

std::string p50_ms(std::vector<double> v) {
    if (v.empty()) return "-";
    return fmt("%.2f", percentiles_of(v).p50);
}

double ms_between(long long t0, long long t1) { return static_cast<double>(t1 - t0) / 1e6; }

// A row of figure 6: times with no raw baseline nor target.
row measured_row(std::string what, std::vector<double> ms) {
    return {"6", std::move(what), ms_cell(std::move(ms)), "-", "-", "-", "measured"};
}

// Counts the samples that failed, keeps the first reason of each kind for the notes.
struct failures {
    std::map<std::string, std::pair<int, std::string>> by_what;
    void add(const std::string& what, const std::string& why) {
        auto& f = by_what[what];
        if (f.first++ == 0) f.second = why;
    }
    void to_notes(report& r) const {
        for (auto& [what, f] : by_what)
            r.notes.push_back("figure 6, " + what + ": " + std::to_string(f.first) +
                              " run(s) failed or were odd, first: " + f.second);
    }
};

// 6a. A server node in this process; a fresh node (default options) constructed and
// started each time, timed to its first successful call by name.
void start_in_process(const sizes& s, report& r, failures& fails) {
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("fig6-local");
    plexus::node srv(discovering("disc-server", cluster, port));
    srv.serve(std::string(disc_service))
        .raw_method("who", [](plexus::request&) { return std::string("disc-server"); },
                    {.exec = plexus::execution::inline_loop});
    srv.start();
    std::vector<double> total, started, joined;
    for (int i = 0; i < s.discovery_starts; ++i) {
        peer_watch w;
        const long long t0 = now_ns();
        plexus::node cli(discovering("disc-client", cluster, port));
        w.attach(cli);
        cli.start();
        const long long t_started = now_ns();
        const auto rep = cli.call_raw(disc_service, "who", "", {.timeout = discovery_bound});
        const long long t1 = now_ns();
        if (!rep.ok()) {
            fails.add("start -> first call, in process", rep.status.message);
            continue;
        }
        total.push_back(ms_between(t0, t1));
        started.push_back(ms_between(t0, t_started));
        if (const auto j = w.wait_for("disc-server", false, 0ms).joined_ns) joined.push_back(ms_between(t0, j));
        cli.stop();
    }
    r.rows.push_back(measured_row(fmt("discovery: start -> first ok call by name: a fresh node in this process "
                                      "(constructed, started, calling), the server node already running (%d runs)",
                                      s.discovery_starts),
                                  total));
    r.rows.push_back({"6", "  of which start() returned / the server joined its table (p50)",
                      p50_ms(started) + " / " + p50_ms(joined) + " ms", "-", "-", "(info)", ""});
    srv.stop();
}

// 6b. A running client node; a server process spawned each time (a service name of its
// own), timed from the fork to the client's first successful call by name. The client
// retries at each peer event (and every 2 ms): an unknown name fails at once.
void start_process(const sizes& s, report& r, failures& fails) {
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("fig6-proc");
    peer_watch w;
    plexus::node cli(discovering("disc-client", cluster, port));
    w.attach(cli);
    cli.start();
    // A client running for a while: past discovery's first interval, resolution no
    // longer waits for a name it does not know (a fresh node's does: 6a). This call
    // returns when that window closes.
    if (const auto none = cli.call_raw("bench-nobody", "who", "", {.timeout = discovery_bound});
        none.status.code != plexus::code::unavailable)
        throw std::runtime_error("figure 6: a call to a service nobody offers ended with " +
                                 std::string(plexus::to_string(none.status.code)));
    std::vector<double> total, entered, started, joined;
    long retries = 0;
    for (int i = 0; i < s.discovery_starts; ++i) {
        const std::string svc = fmt("%s-%d", std::string(disc_service).c_str(), i);
        const std::string inst = fmt("disc-proc-%d", i);
        const long long t0 = now_ns();
        auto c = child::spawn({"discovery-server", cluster, std::to_string(port), svc, inst});
        plexus::reply rep;
        for (;;) {
            const auto seen = w.events();
            rep = cli.call_raw(svc, "who", "", {.timeout = 1s});
            if (rep.ok() || now_ns() - t0 > std::chrono::nanoseconds(discovery_bound).count()) break;
            ++retries;
            w.wait_next(seen, 2ms);
        }
        const long long t1 = now_ns();
        if (!rep.ok() || rep.body != inst) {
            fails.add("spawn -> first call", rep.ok() ? "answered by " + rep.body : rep.status.message);
            stop_child(c);
            continue;
        }
        total.push_back(ms_between(t0, t1));
        long long te = 0, ts = 0;
        char ep[256];
        if (std::sscanf(c.expect("ep", spawn_timeout).c_str(), "%255s %lld %lld", ep, &te, &ts) == 3) {
            entered.push_back(ms_between(t0, te));
            started.push_back(ms_between(t0, ts));
        }
        if (const auto j = w.wait_for(inst, false, 0ms).joined_ns) joined.push_back(ms_between(t0, j));
        stop_child(c);
    }
    r.rows.push_back(measured_row(fmt("discovery: spawn of a server process -> first ok call by name from a running "
                                      "client node (%d runs; includes the process start)",
                                      s.discovery_starts),
                                  total));
    r.rows.push_back({"6", "  of which the child was in main() / its node started / it joined the client's table (p50)",
                      p50_ms(entered) + " / " + p50_ms(started) + " / " + p50_ms(joined) + " ms", "-", "-", "(info)",
                      ""});
    if (!total.empty())
        r.notes.push_back(fmt("figure 6, spawn -> first call: the client retried %.1f times per run (a call to a name "
                              "not known yet fails at once; it retries at each peer event, at the latest every 2 ms)",
                              static_cast<double>(retries) / static_cast<double>(total.size())));
    cli.stop();
}

// 6c. Two server processes offer the service; a thread keeps making calls by name
// (round robin) one after the other, synchronous or asynchronous; two calls (one
// async, one sync) are in flight to the victim, held by its "slow" method; SIGKILL.
struct failover_sample {
    std::optional<double> async_fail, sync_fail, left, done;
    int loop_failed = 0;
    int loop_failed_after_leave = 0;
    std::map<std::string, int> loop_codes;
    std::string problem;
};

failover_sample one_failover(bool async_loop) {
    failover_sample out;
    const auto port = free_udp_port();
    const auto cluster = unique_cluster("fig6-kill");
    const std::string svc(disc_service);
    peer_watch w;
    plexus::node cli(discovering("disc-client", cluster, port));
    w.attach(cli);
    cli.start();
    auto victim = child::spawn({"discovery-server", cluster, std::to_string(port), svc, "victim"});
    auto survivor = child::spawn({"discovery-server", cluster, std::to_string(port), svc, "survivor"});
    char ep_buf[256];
    if (std::sscanf(victim.expect("ep", spawn_timeout).c_str(), "%255s", ep_buf) != 1)
        throw std::runtime_error("figure 6: the victim did not say its endpoint");
    const std::string victim_ep = ep_buf;
    (void)survivor.expect("ep", spawn_timeout);
    if (!w.wait_for("victim", false, discovery_bound).joined_ns ||
        !w.wait_for("survivor", false, discovery_bound).joined_ns)
        throw std::runtime_error("figure 6: the client did not see both server processes join");

    struct call_rec {
        long long t0, t1;
        bool ok, from_victim;
        plexus::code code;
    };
    std::vector<call_rec> log;
    log.reserve(1 << 16);
    std::atomic<bool> stop{false};
    std::atomic<int> from_victim{0}, from_survivor{0}, survivor_streak{0};
    // Joins the loop on every way out (a throw included).
    struct joiner {
        std::atomic<bool>& stop;
        std::thread t;
        ~joiner() {
            stop = true;
            if (t.joinable()) t.join();
        }
    } loop{stop, std::thread([&] {
        while (!stop.load(std::memory_order_relaxed)) {
            const long long t0 = now_ns();
            auto rep = async_loop ? cli.call_async(svc, "who", "", {.timeout = 1s}).get()
                                  : cli.call_raw(svc, "who", "", {.timeout = 1s});
            const long long t1 = now_ns();
            const bool v = rep.ok() && rep.body == "victim";
            log.push_back({t0, t1, rep.ok(), v, rep.status.code});
            if (v) ++from_victim;
            if (rep.ok() && !v) {
                ++from_survivor;
                ++survivor_streak;
            } else {
                survivor_streak = 0;
            }
        }
    })};
    auto stop_loop = [&] {
        stop = true;
        loop.t.join();
    };
    const auto until = clk::now() + discovery_bound;
    while ((from_victim < 10 || from_survivor < 10) && clk::now() < until) std::this_thread::sleep_for(1ms);
    if (from_victim < 10 || from_survivor < 10) {
        stop_loop();
        throw std::runtime_error("figure 6: calls by name did not reach both server processes");
    }

    // The probes, addressed to the victim's endpoint so that they surely wait there; a
    // call by name that went there would fail the same way (the broken connection).
    const plexus::call_options probe{.timeout = discovery_bound, .endpoint = victim_ep};
    auto async_f = cli.call_async(svc, "slow", "60000", probe);
    auto async_done = std::async(std::launch::async, [&] {
        const bool ready = async_f.wait_for(discovery_bound + 1s) == std::future_status::ready;
        return std::make_pair(now_ns(), ready ? async_f.get() : plexus::reply{{plexus::code::internal, "hung"}, {}});
    });
    auto sync_done = std::async(std::launch::async, [&] {
        auto rep = cli.call_raw(svc, "slow", "60000", probe);
        return std::make_pair(now_ns(), rep);
    });
    for (int i = 0; i < 2; ++i) (void)victim.expect("busy", discovery_bound);
    // A crash comes at any moment of a call's wait: a synchronous call looks for a broken
    // connection between poll slices of 20 ms, so a kill right after the call started
    // would always cost a whole slice. The kill comes 0-20 ms (at random) later.
    static std::minstd_rand rng{std::random_device{}()};
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));

    const long long t_kill = now_ns();
    ::kill(victim.pid(), SIGKILL);

    using probe_future = std::future<std::pair<std::int64_t, plexus::reply>>;
    auto probe_result = [&](probe_future& f, const char* what) -> std::optional<double> {
        if (f.wait_for(discovery_bound + 2s) != std::future_status::ready) {
            out.problem += fmt("%s probe did not complete; ", what);
            return std::nullopt;
        }
        auto [t, rep] = f.get();
        if (rep.status.code != plexus::code::unavailable) {
            out.problem += fmt("%s probe ended with %s (%s); ", what,
                               std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
            return std::nullopt;
        }
        return ms_between(t_kill, t);
    };
    out.async_fail = probe_result(async_done, "async");
    out.sync_fail = probe_result(sync_done, "sync");
    const auto gone = w.wait_for("victim", true, discovery_bound);
    if (gone.left_ns) {
        out.left = ms_between(t_kill, gone.left_ns);
        if (gone.reason != plexus::discovery::leave_reason::dead)
            out.problem += fmt("the victim left the table by %s, not by the broken connection; ",
                               std::string(plexus::discovery::to_string(gone.reason)).c_str());
    } else {
        out.problem += "the victim never left the client's table; ";
    }
    // Failover is done once 20 calls in a row went to the survivor.
    const auto until2 = clk::now() + discovery_bound;
    while (survivor_streak < 20 && clk::now() < until2) std::this_thread::sleep_for(1ms);
    stop_loop();
    (void)victim.wait(2s);
    stop_child(survivor);
    cli.stop();

    long long last_fail = 0;
    for (auto& c : log)
        if (c.t1 > t_kill && !c.ok) {
            ++out.loop_failed;
            ++out.loop_codes[std::string(plexus::to_string(c.code))];
            last_fail = std::max(last_fail, c.t1);
            if (gone.left_ns && c.t0 > gone.left_ns) ++out.loop_failed_after_leave;
        }
    const long long after = std::max(last_fail, t_kill);
    for (auto& c : log)
        if (c.ok && !c.from_victim && c.t1 > after && c.t0 >= t_kill) {
            out.done = ms_between(t_kill, c.t1);
            break;
        }
    if (!out.done) out.problem += "no call succeeded on the survivor after the kill; ";
    return out;
}

void failover(const sizes& s, report& r, failures& fails) {
    std::vector<double> async_fail, sync_fail, left, done_sync, done_async;
    int loop_failed = 0, after_leave = 0, runs = 0;
    std::map<std::string, int> codes;
    // Runs alternate the synchronous and the asynchronous loop; the probes are in both.
    for (int i = 0; i < 2 * s.failovers; ++i) {
        const bool async_loop = i % 2 == 1;
        failover_sample f;
        try {
            f = one_failover(async_loop);
        } catch (const std::exception& e) {
            fails.add("SIGKILL -> failover", e.what());
            continue;
        }
        ++runs;
        if (f.async_fail) async_fail.push_back(*f.async_fail);
        if (f.sync_fail) sync_fail.push_back(*f.sync_fail);
        if (f.left) left.push_back(*f.left);
        if (f.done) (async_loop ? done_async : done_sync).push_back(*f.done);
        loop_failed += f.loop_failed;
        after_leave += f.loop_failed_after_leave;
        for (auto& [c, n] : f.loop_codes) codes[c] += n;
        if (!f.problem.empty()) fails.add("SIGKILL -> failover", f.problem);
    }
    std::string code_list;
    for (auto& [c, n] : codes) code_list += fmt("%s%d %s", code_list.empty() ? "" : ", ", n, c.c_str());
    const std::string of = fmt("(%d runs)", 2 * s.failovers), half = fmt("(%d runs)", s.failovers);
    r.rows.push_back(measured_row("discovery: SIGKILL of 1 of 2 server processes -> an async call in flight to it "
                                  "fails UNAVAILABLE " + of,
                                  async_fail));
    r.rows.push_back(measured_row("discovery: SIGKILL -> a sync call in flight to it fails UNAVAILABLE " + of, sync_fail));
    r.rows.push_back(measured_row("discovery: SIGKILL -> failover done: sync calls by name one after the other (round "
                                  "robin), the first ok call on the survivor after the last failed one " + half,
                                  done_sync));
    r.rows.push_back(measured_row(
        "discovery: SIGKILL -> failover done: the same with async calls (call_async, one at a time) " + half, done_async));
    r.rows.push_back({"6", "  SIGKILL -> the victim leaves the client's table (by the broken connection)",
                      ms_cell(left), "-", "-", "(info)", ""});
    if (runs)
        r.notes.push_back(fmt("figure 6, failover: %d of the looping calls by name failed after the kills, in %d "
                              "runs%s; %d of them were made after the victim had left the client's table",
                              loop_failed, runs, code_list.empty() ? "" : (" (" + code_list + ")").c_str(), after_leave));
}

} // namespace

void fig6_discovery(const sizes& s, report& r) {
    failures fails;
    start_in_process(s, r, fails);
    start_process(s, r, fails);
    failover(s, r, fails);
    fails.to_notes(r);
}

} // namespace bench
