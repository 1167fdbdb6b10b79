// The orchestrator side of each figure: Plexus and its raw libzmq baseline in the
// same run, servers and publishers in child processes.
#include <atomic>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <memory>
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

plexus::node_options client_options(const std::string& server_ep) {
    plexus::node_options o;
    o.name = "bench-client";
    o.bind = {};
    o.pub_bind = {};
    o.connect = {server_ep};
    o.log = plexus::log_level::warn;
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
    plexus::node_options co_opts;
    co_opts.name = "bench-capture";
    co_opts.bind = {};
    co_opts.log = plexus::log_level::warn;
    plexus::node cli(co_opts);
    cli.start();
    plexus::call_options co;
    co.endpoint = router.get(zmq::sockopt::last_endpoint);
    co.timeout = 5s; // the width of the deadline as in the runs
    co.headers = h;
    auto pending = cli.call_async(service, method_inline, body, co);
    w.request = recv_all(router).back().to_string();

    // The reply: that request sent to a Plexus server by a raw DEALER.
    plexus::node_options so;
    so.name = "bench-capture-server";
    so.pub_bind = {};
    so.log = plexus::log_level::warn;
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
    auto srv = child::spawn({"server", "plexus"});
    const auto ep = srv.expect("ep", spawn_timeout);
    plexus::node cli(client_options(ep));
    cli.start();
    warm_plexus(cli, method_inline);
    plexus::call_options co;
    co.headers = six_headers();
    co.timeout = 5s;
    zmq::context_t ctx(1);

    for (std::size_t body_size : {std::size_t{64}, std::size_t{1024}}) {
        const auto& wire = plexus_wire(body_size, true);
        auto rsrv = child::spawn({"server", "raw-rep", to_hex(wire.reply)});
        const auto rep_ep = rsrv.expect("ep", spawn_timeout);
        zmq::socket_t req(ctx, zmq::socket_type::req);
        req.set(zmq::sockopt::linger, 0);
        req.connect(rep_ep);
        const std::string& req_env = wire.request;
        const std::string body = body_of(body_size);
        long errors = 0;
        // The same raw client against the Plexus server: splits the overhead between
        // the client and the server side.
        zmq::socket_t req_plexus(ctx, zmq::socket_type::req);
        req_plexus.set(zmq::sockopt::linger, 0);
        req_plexus.connect(ep);
        auto raw_to = [&](zmq::socket_t& sock) {
            (void)sock.send(zmq::buffer(req_env), zmq::send_flags::none);
            zmq::message_t m;
            (void)sock.recv(m);
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
    cli.stop();
    stop_child(srv);
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
        (void)d.recv(delim);
        (void)d.recv(env);
        --inflight;
        ++done;
        if ((done & 255) == 0 && clk::now() >= end) issuing = false;
    }
    return static_cast<double>(done) / std::chrono::duration<double>(clk::now() - t0).count();
}

// call_async futures, a sliding window of `window` calls in flight.
double plexus_futures(plexus::node& cli, std::string_view method, const std::string& body,
                      const plexus::call_options& co, int window, double seconds, long& errors, long& done) {
    std::deque<std::future<plexus::reply>> win;
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
    auto srv = child::spawn({"server", "plexus"});
    const auto ep = srv.expect("ep", spawn_timeout);
    plexus::node cli(client_options(ep));
    cli.start();
    warm_plexus(cli, method_inline);
    zmq::context_t ctx(1);
    const plexus::headers h = six_headers();
    const double warm_s = std::min(0.2, s.pipelined_seconds);

    struct case_t {
        std::size_t body;
        bool headers;
    };
    for (const case_t c : {case_t{64, true}, case_t{1024, true}, case_t{64, false}}) {
        const auto& wire = plexus_wire(c.body, c.headers);
        auto rsrv = child::spawn({"server", "raw-router", to_hex(wire.reply)});
        const auto rep_ep = rsrv.expect("ep", spawn_timeout);
        zmq::socket_t d(ctx, zmq::socket_type::dealer);
        d.set(zmq::sockopt::linger, 0);
        d.set(zmq::sockopt::sndhwm, 10000); // as a Plexus node's defaults
        d.set(zmq::sockopt::rcvhwm, 10000);
        d.connect(rep_ep);
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
        zmq::socket_t d_plexus(ctx, zmq::socket_type::dealer); // raw client, Plexus server
        d_plexus.set(zmq::sockopt::linger, 0);
        d_plexus.set(zmq::sockopt::sndhwm, 10000);
        d_plexus.set(zmq::sockopt::rcvhwm, 10000);
        d_plexus.connect(ep);
        (void)raw_pipelined(d_plexus, req_env, s.pipelined_window, warm_s, ignored);
        std::vector<double> raw_r, fut_r, pool_r, cb_r, mixed_r;
        cpu_per_call raw_cpu, fut_cpu;
        const pid_t raw_pid = rsrv.pid(), plexus_pid = srv.pid();
        const int w = s.pipelined_window;
        const double secs = s.pipelined_seconds;
        for (int round = 0; round < s.pipelined_rounds; ++round) {
            raw_r.push_back(raw_cpu.measure(raw_pid, [&](long& n) { return raw_pipelined(d, req_env, w, secs, n); }));
            fut_r.push_back(fut_cpu.measure(plexus_pid, [&](long& n) {
                return plexus_futures(cli, method_inline, body, co, w, secs, errors, n);
            }));
            mixed_r.push_back(raw_pipelined(d_plexus, req_env, w, secs, ignored));
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
    cli.stop();
    stop_child(srv);
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
    struct case_t {
        std::size_t body;
        bool headers;
    };
    for (const case_t c : {case_t{64, true}, case_t{64, false}, case_t{1024, true}, case_t{1024, false}}) {
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

void fig6_discovery(const sizes&, report& r) {
    r.rows.push_back({"6", "discovery: start -> first call by name; SIGKILL -> failover",
                      "n/a until discovery lands", "-", "-", "-", "placeholder"});
}

} // namespace bench
