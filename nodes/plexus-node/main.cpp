// plexus-node: a standalone Plexus node. Parses its options (command line > config
// file > PLEXUS_* environment > defaults), builds a plexus::node, runs it until
// SIGINT/SIGTERM, stops it within --shutdown-timeout and exits 0. Discovery is on by
// default and host-local (nodes/common/discovery_options.hpp): the node announces
// itself and its services, and `plexus peers` / `plexus call service.method` find it.
//
// Exit codes: 0 stopped by a signal; 1 runtime failure (cannot bind an endpoint or the
// metrics port, cannot write the ready file); 2 usage error (unknown option, bad value,
// unreadable config file).
#include <plexus/node.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

#include "discovery_options.hpp"
#include "json_msgpack.hpp"
#include "logfmt.hpp"
#include "metrics_http.hpp"
#include "options.hpp"

namespace po = boost::program_options;
namespace pn = plexus::nodes;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view heartbeat_topic = "plexus.heartbeat";
constexpr std::uint64_t max_sleep_ms = 3'600'000; // echo.sleep: an hour at most

struct settings {
    plexus::node_options node;
    std::chrono::milliseconds heartbeat{1000};
    bool echo = false;
    std::string ready_file;
    std::optional<std::uint16_t> metrics_port; // none: no HTTP endpoint
    std::string metrics_bind = "127.0.0.1";
};

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// --- options -----------------------------------------------------------------

po::options_description describe_options() {
    po::options_description d("Options");
    // clang-format off
    d.add_options()
        ("help,h", "print this help and exit")
        ("version", "print the version and exit")
        ("config", po::value<std::string>()->value_name("FILE"),
            "read options from FILE (ini syntax: `name = value` per line, `bind = ...` repeatable)")
        ("name", po::value<std::string>()->default_value("node")->value_name("NAME"), "node name shown by describe, ping and in logs")
        ("bind", po::value<std::vector<std::string>>()->default_value({"tcp://127.0.0.1:*"}, "tcp://127.0.0.1:*")->value_name("EP"),
            "RPC endpoint to bind (repeatable or comma-separated; `*` as port picks a free one; `none`: no RPC endpoint)")
        ("pub-bind", po::value<std::vector<std::string>>()->default_value({"tcp://127.0.0.1:*"}, "tcp://127.0.0.1:*")->value_name("EP"),
            "event (PUB) endpoint to bind (repeatable or comma-separated; `none`: this node does not publish)")
        ("connect", po::value<std::vector<std::string>>()->value_name("EP"),
            "peer RPC endpoint to connect to (repeatable or comma-separated)")
        ("subscribe-to", po::value<std::vector<std::string>>()->value_name("EP"),
            "publisher (PUB) endpoint to subscribe to directly (repeatable or comma-separated)")
        ("workers", po::value<unsigned>()->default_value(4)->value_name("N"), "threads running pool handlers (>= 1)")
        ("max-message-size", po::value<std::int64_t>()->default_value(4 * 1024 * 1024)->value_name("BYTES"),
            "largest message accepted or sent")
        ("default-timeout", po::value<unsigned>()->default_value(5000)->value_name("MS"),
            "timeout of calls made by this node that set none")
        ("shutdown-timeout", po::value<unsigned>()->default_value(2000)->value_name("MS"),
            "bound on a clean stop: running handlers finish and queued replies flush within it")
        ("overflow", po::value<std::string>()->default_value("block")->value_name("block|drop"),
            "publisher policy when a subscriber is slower: back-pressure or drop (counted in stats)")
        ("log-level", po::value<std::string>()->default_value("info")->value_name("LEVEL"),
            "trace|debug|info|warn|error|off")
        ("tracing", po::value<std::string>()->default_value("start")->value_name("start|propagate|off"),
            "W3C trace context: start a trace for calls and events made outside one, only carry one that "
            "arrives, or leave trace headers alone")
        ("allow-publish", po::bool_switch(), "let callers publish through the system method plexus.publish (`plexus pub`)")
        ("heartbeat-interval", po::value<unsigned>()->default_value(1000)->value_name("MS"),
            "publish {name,id,uptime_ms,seq} on topic plexus.heartbeat every MS ms; 0 disables")
        ("echo", po::bool_switch(),
            "serve the test service `echo`: echo and inline_echo (the body back as is), sleep {\"ms\":N}, "
            "fail (throws: INTERNAL), headers (the request's headers as a map), whoami (this node's --name)")
        ("ready-file", po::value<std::string>()->value_name("PATH"),
            "once started, write the bound endpoints as JSON {\"rpc\":[...],\"pub\":[...],...} to PATH (atomically: "
            "write then rename); removed again on a clean stop")
        ("metrics-port", po::value<unsigned>()->value_name("PORT"),
            "serve HTTP on PORT (0: a free one, see the ready file's \"metrics\"): GET /metrics gives the "
            "metrics in Prometheus text format 0.0.4, GET /healthz gives \"ok\"; off unless given")
        ("metrics-bind", po::value<std::string>()->default_value("127.0.0.1")->value_name("ADDR"),
            "IPv4 or IPv6 address the metrics port listens on (0.0.0.0 or :: for all interfaces)");
    // clang-format on
    d.add(pn::discovery_options("announce this node (name, endpoints, services, topics) and see its peers; "
                                "off: peers come from --connect only"));
    return d;
}

void print_help(const po::options_description& d) {
    std::cout << "Usage: plexus-node [OPTIONS]\n\n"
                 "A standalone Plexus node: serves the system methods plexus.ping, describe, stats\n"
                 "(and publish with --allow-publish), publishes heartbeats, logs logfmt lines on\n"
                 "stderr, stops cleanly on SIGINT/SIGTERM.\n\n"
              << d
              << "\nPrecedence: command line > config file (--config or PLEXUS_CONFIG) > environment > defaults.\n"
                 "A list given on the command line replaces the config file's, which replaces the environment's.\n\n"
                 "Environment (lists are comma-separated; flags take 1/true/yes or 0/false/no):";
    std::string line = "\n  PLEXUS_CONFIG";
    for (const auto& opt : d.options()) {
        const auto& n = opt->long_name();
        if (n == "help" || n == "version" || n == "config") continue;
        const std::string var = pn::env_name(n);
        if (line.size() + var.size() + 2 > 80) {
            std::cout << line << ',';
            line = "\n  " + var;
        } else {
            line += ", " + var;
        }
    }
    std::cout << line
              << "\n\nConfig file example:\n"
                 "  name = orders\n"
                 "  bind = tcp://127.0.0.1:5555\n"
                 "  bind = ipc:///tmp/orders.sock\n"
                 "  log-level = debug\n"
                 "  allow-publish = true\n\n"
                 "Discovery is on by default and stays on this host: beacons go to 127.255.255.255 on UDP port\n"
                 "5690, cluster \"plexus\", and endpoints bind 127.0.0.1. Across hosts, bind a reachable\n"
                 "address and name the LAN's broadcast address (or seeds):\n"
                 "  plexus-node --name a --echo --bind 'tcp://0.0.0.0:*' --pub-bind 'tcp://0.0.0.0:*' \\\n"
                 "              --broadcast 10.200.0.255 --cluster prod\n"
                 "Where broadcast is blocked: --no-broadcast --seed HOST:PORT (nodes gossip the peers they know).\n"
                 "Peers see the source address of our beacons, or --advertise HOST. Nodes of another --cluster\n"
                 "are ignored. Look with: plexus peers --cluster prod, plexus watch --cluster prod.\n\n"
                 "Metrics: with --metrics-port, Prometheus scrapes http://ADDR:PORT/metrics (the ready file\n"
                 "has it as \"metrics\"): plexus_server_* per method served (calls, errors by code, in-flight,\n"
                 "latency histogram), plexus_client_* per method called, plexus_events_* per topic. Nothing\n"
                 "listens without it. The same counters as JSON: plexus stats ENDPOINT.\n\n"
                 "Exit codes: 0 stopped by SIGINT/SIGTERM; 1 runtime failure (cannot bind an endpoint or the\n"
                 "metrics port, cannot write the ready file); 2 usage error.\n";
}

std::vector<std::string> list_option(const po::variables_map& vm, const char* name) {
    if (!vm.count(name)) return {};
    auto v = pn::split_list(vm[name].as<std::vector<std::string>>());
    if (v.size() == 1 && v[0] == "none") v.clear();
    return v;
}

// Returns nullopt when the process should exit 0 at once (--help, --version).
std::optional<settings> parse(int argc, char** argv) {
    const auto desc = describe_options();
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
        print_help(desc);
        return std::nullopt;
    }
    if (vm.count("version")) {
        std::cout << "plexus-node 0.1.0 (protocol 1)\n";
        return std::nullopt;
    }
    std::string config;
    if (vm.count("config"))
        config = vm["config"].as<std::string>();
    else if (const char* c = std::getenv("PLEXUS_CONFIG"); c && *c)
        config = c;
    if (!config.empty()) {
        std::ifstream in(config);
        if (!in) throw usage_error("cannot read config file '" + config + "'");
        try {
            po::store(po::parse_config_file(in, desc), vm);
        } catch (const po::error& e) {
            throw usage_error(std::string(e.what()) + " (in config file '" + config + "')");
        }
    }
    try {
        po::store(po::parse_environment(desc, pn::env_name_mapper(desc, {"help", "version", "config"})), vm);
    } catch (const po::error& e) {
        throw usage_error(std::string(e.what()) + " (from a PLEXUS_* environment variable)");
    }
    po::notify(vm);

    settings s;
    auto& o = s.node;
    o.name = vm["name"].as<std::string>();
    if (o.name.empty()) throw usage_error("--name must not be empty");
    o.bind = list_option(vm, "bind");
    o.pub_bind = list_option(vm, "pub-bind");
    o.connect = list_option(vm, "connect");
    o.subscribe_to = list_option(vm, "subscribe-to");
    for (const auto* list : {&o.bind, &o.pub_bind, &o.connect, &o.subscribe_to})
        for (const auto& ep : *list)
            if (!pn::is_endpoint(ep)) throw usage_error("'" + ep + "' is not an endpoint (tcp://, ipc:// or inproc://)");
    o.workers = vm["workers"].as<unsigned>();
    if (o.workers == 0) throw usage_error("--workers must be at least 1");
    o.max_message_size = vm["max-message-size"].as<std::int64_t>();
    if (o.max_message_size <= 0) throw usage_error("--max-message-size must be positive");
    o.default_timeout = std::chrono::milliseconds(vm["default-timeout"].as<unsigned>());
    if (o.default_timeout.count() == 0) throw usage_error("--default-timeout must be positive");
    o.shutdown_timeout = std::chrono::milliseconds(vm["shutdown-timeout"].as<unsigned>());
    const auto& ov = vm["overflow"].as<std::string>();
    if (ov == "block")
        o.publish_overflow = plexus::overflow::block;
    else if (ov == "drop")
        o.publish_overflow = plexus::overflow::drop;
    else
        throw usage_error("--overflow must be block or drop, not '" + ov + "'");
    const auto& tr = vm["tracing"].as<std::string>();
    if (tr == "start")
        o.tracing = plexus::trace_mode::start;
    else if (tr == "propagate")
        o.tracing = plexus::trace_mode::propagate;
    else if (tr == "off")
        o.tracing = plexus::trace_mode::off;
    else
        throw usage_error("--tracing must be start, propagate or off, not '" + tr + "'");
    if (!plexus::from_string(vm["log-level"].as<std::string>(), o.log))
        throw usage_error("--log-level must be trace|debug|info|warn|error|off, not '" + vm["log-level"].as<std::string>() + "'");
    o.remote_publish = vm["allow-publish"].as<bool>();
    s.heartbeat = std::chrono::milliseconds(vm["heartbeat-interval"].as<unsigned>());
    s.echo = vm["echo"].as<bool>();
    if (vm.count("ready-file")) s.ready_file = vm["ready-file"].as<std::string>();
    if (vm.count("metrics-port")) {
        const unsigned port = vm["metrics-port"].as<unsigned>();
        if (port > 65535) throw usage_error("--metrics-port must be at most 65535, not " + std::to_string(port));
        s.metrics_port = static_cast<std::uint16_t>(port);
    }
    s.metrics_bind = vm["metrics-bind"].as<std::string>();
    if (s.metrics_bind.empty()) throw usage_error("--metrics-bind must not be empty");
    try {
        o.discovery = pn::discovery_from(vm);
    } catch (const std::invalid_argument& e) {
        throw usage_error(e.what());
    }
    return s;
}

// --- the echo test service ------------------------------------------------------

struct sleep_req {
    std::uint64_t ms = 0;
    MSGPACK_DEFINE_MAP(ms)
};
struct sleep_rep {
    std::uint64_t slept = 0;
    MSGPACK_DEFINE_MAP(slept)
};

// Lets handlers that wait (echo.sleep) end early when the node is stopping, so a
// stop is not held up to the shutdown bound by a test sleep.
class stop_flag {
public:
    void set() {
        {
            std::lock_guard lock(mutex_);
            stopped_ = true;
        }
        cv_.notify_all();
    }
    // Waits up to d; returns the time actually waited.
    std::chrono::milliseconds wait_for(std::chrono::milliseconds d) {
        const auto start = std::chrono::steady_clock::now();
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, d, [&] { return stopped_; });
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool stopped_ = false;
};

void serve_echo(plexus::node& node, stop_flag& stopping) {
    node.serve("echo")
        .doc("test service of plexus-node --echo")
        .raw_method("whoami", [name = node.name()](plexus::request&) { return plexus::pack(name); },
                    {.doc = "replies this node's --name (shows which instance answered a call by name)"}, {},
                    plexus::pack(std::string()))
        .raw_method("echo", [](plexus::request& rq) { return std::string(rq.body); }, {.doc = "returns the body as is"})
        .raw_method("inline_echo", [](plexus::request& rq) { return std::string(rq.body); },
                    {.exec = plexus::execution::inline_loop, .doc = "returns the body as is, on the I/O thread"})
        .method(
            "sleep",
            [&stopping](const sleep_req& r) {
                if (r.ms > max_sleep_ms)
                    throw plexus::error(plexus::code::out_of_range, "ms is at most " + std::to_string(max_sleep_ms));
                const auto waited = stopping.wait_for(std::chrono::milliseconds(r.ms));
                return sleep_rep{std::min<std::uint64_t>(r.ms, static_cast<std::uint64_t>(waited.count()))};
            },
            {.doc = "sleeps ms milliseconds (at most 3600000; less if the node stops), then replies how long"})
        .raw_method(
            "fail", [](plexus::request&) -> std::string { throw std::runtime_error("boom"); },
            {.doc = "always throws std::runtime_error(\"boom\"): replies INTERNAL"})
        .raw_method(
            "headers",
            [](plexus::request& rq) {
                std::map<std::string, std::string> h;
                for (const auto& [k, v] : rq.context.headers) h[k] = v;
                return plexus::pack(h);
            },
            {.doc = "replies the request's headers as a map"}, {}, plexus::pack(std::map<std::string, std::string>{}));
}

// --- running ------------------------------------------------------------------------

void write_ready_file(const std::string& path, const plexus::node& node, const plexus::node_options& opts,
                      const pn::metrics_http* metrics) {
    nlohmann::json j{{"rpc", node.endpoints()},
                     {"pub", node.pub_endpoints()},
                     {"name", node.name()},
                     {"id", node.id_hex()},
                     {"pid", static_cast<long>(::getpid())}};
    if (metrics) j["metrics"] = metrics->url();
    if (const auto& d = opts.discovery)
        j["discovery"] = {{"cluster", d->cluster}, {"port", node.discovery_port()}};
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << j.dump() << '\n';
        out.flush();
        if (!out) throw std::runtime_error("cannot write '" + tmp + "'");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "'");
    }
}

int run(const settings& s, pn::logger& log, const sigset_t& signals) {
    stop_flag stopping;
    plexus::node node(s.node);
    if (s.echo) serve_echo(node, stopping);
    const bool heartbeats = s.heartbeat.count() > 0 && !s.node.pub_bind.empty();
    if (heartbeats)
        node.declare_topic(std::string(heartbeat_topic), "liveness beacon of plexus-node, every --heartbeat-interval ms",
                           pn::to_msgpack({{"name", ""}, {"id", ""}, {"uptime_ms", 0}, {"seq", 0}}));

    try {
        node.start();
    } catch (const std::exception& e) {
        log.error("cannot start", {{"error", e.what()}});
        return 1;
    }
    const auto started = std::chrono::steady_clock::now();
    const auto& d = s.node.discovery;
    if (d && !pn::host_local(*d))
        for (const auto& ep : node.endpoints())
            if (pn::endpoint_host(ep).rfind("127.", 0) == 0)
                log.warn("beacons leave this host but the RPC endpoint is on loopback: peers elsewhere cannot "
                         "call it (bind tcp://0.0.0.0:* or a LAN address)",
                         {{"rpc", ep}});
    // Declared after the node: gone before it, and stopped first (it reads the node).
    std::optional<pn::metrics_http> metrics;
    const auto stop_all = [&] {
        if (metrics && !metrics->stop()) log.warn("metrics connection still open at stop: abandoned");
        stopping.set();
        node.stop();
    };
    if (s.metrics_port) {
        try {
            metrics.emplace(s.metrics_bind, *s.metrics_port, [&node] { return node.metrics_text(); });
        } catch (const std::exception& e) {
            log.error("cannot serve metrics", {{"error", e.what()}});
            stop_all();
            return 1;
        }
    }
    if (!s.ready_file.empty()) {
        try {
            write_ready_file(s.ready_file, node, s.node, metrics ? &*metrics : nullptr);
        } catch (const std::exception& e) {
            log.error("cannot write ready file", {{"error", e.what()}});
            stop_all();
            return 1;
        }
    }
    // The framework's own "started" line lists the endpoints; this one adds what is ours.
    log.info("running", {{"id", node.id_hex()},
                         {"echo", s.echo ? "true" : "false"},
                         {"discovery", d ? d->cluster + "@" + std::to_string(node.discovery_port()) : "off"},
                         {"heartbeat_ms", std::to_string(heartbeats ? s.heartbeat.count() : 0)},
                         {"metrics", metrics ? metrics->url() : "off"},
                         {"ready_file", s.ready_file}});

    std::uint64_t seq = 0;
    auto next = started + s.heartbeat;
    int sig = 0;
    for (;;) {
        if (heartbeats) {
            const auto left = std::max(next - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero());
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
            sig = ::sigtimedwait(&signals, nullptr, &ts);
        } else {
            sig = ::sigwaitinfo(&signals, nullptr);
        }
        if (sig > 0) break;
        if (errno != EAGAIN) continue; // EINTR
        const auto now = std::chrono::steady_clock::now();
        const auto uptime = std::chrono::duration_cast<std::chrono::milliseconds>(now - started).count();
        node.publish_raw(heartbeat_topic, pn::to_msgpack({{"name", node.name()},
                                                          {"id", node.id_hex()},
                                                          {"uptime_ms", uptime},
                                                          {"seq", ++seq}}));
        next += s.heartbeat;
        if (next < now) next = now + s.heartbeat; // fell behind (suspended): no burst
    }

    log.info("stopping", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
    stop_all();
    if (!s.ready_file.empty()) {
        std::error_code ec;
        std::filesystem::remove(s.ready_file, ec);
    }
    return 0; // the framework logged "stopped"
}

} // namespace

int main(int argc, char** argv) {
    std::optional<settings> s;
    try {
        s = parse(argc, argv);
        if (!s) return 0;
    } catch (const std::exception& e) { // po::error, usage_error
        std::fprintf(stderr, "plexus-node: %s\nTry 'plexus-node --help'.\n", e.what());
        return 2;
    }

    // Block the stop signals in every thread (the node's threads inherit this mask)
    // so that only the main thread's sigtimedwait takes them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    pn::logger log(s->node.name, s->node.log);
    s->node.log_sink = log.sink();
    try {
        return run(*s, log, signals);
    } catch (const std::exception& e) {
        log.error("fatal", {{"error", e.what()}});
        return 1;
    }
}
