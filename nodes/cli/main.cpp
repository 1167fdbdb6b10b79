// plexus: the command-line client, in the spirit of grpcurl and the nats CLI. JSON in
// and out; exit codes a script can trust (see usage()); every error one line on stderr.
//
// It runs a client-only plexus::node (no RPC or event endpoint bound) and talks to
// the node given as ENDPOINT, recognised by its scheme. Without one, the client node
// runs discovery (same --cluster / --discovery-port ... options as plexus-node) and
// resolves the service or node by name; `peers` and `watch` show its peer table.
#include <plexus/node.hpp>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <iterator>
#include <mutex>
#include <random>
#include <optional>
#include <string>
#include <vector>

#include <pthread.h>
#include <unistd.h>

#include "discovery_options.hpp"
#include "json_msgpack.hpp"
#include "logfmt.hpp"
#include "options.hpp"

namespace po = boost::program_options;
namespace pn = plexus::nodes;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_usage = 2;
constexpr int exit_status_base = 64;

[[nodiscard]] int exit_code_of(plexus::code c) { return exit_status_base + static_cast<int>(c); }

// A usage problem: exit 2 with the message.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A failed operation: exit 64 + code with the message.
struct status_error : std::runtime_error {
    status_error(plexus::code c, const std::string& msg) : std::runtime_error(msg), code(c) {}
    plexus::code code;
};

struct cli {
    std::string command;
    std::vector<std::string> args; // positional arguments after the command
    std::vector<std::string> header_args;
    std::optional<unsigned> timeout_ms;
    std::optional<unsigned> count;
    std::vector<std::string> pub_endpoints;
    bool compact = false;
    std::int64_t max_message_size = 4 * 1024 * 1024;
    plexus::log_level log = plexus::log_level::off;
    std::optional<plexus::discovery::beacon_options> discovery; // nullopt: --discovery off
    bool json_out = false;                                      // peers, watch: --json
    std::optional<unsigned> wait_ms;                            // peers: --wait
    std::optional<unsigned> expect;                             // peers: --expect
};

namespace disc = plexus::discovery;

void usage(std::ostream& out, const po::options_description& d) {
    out << "Usage: plexus COMMAND [ENDPOINT|NAME] [ARGS...] [OPTIONS]\n"
           "\n"
           "Commands:\n"
           "  call [ENDPOINT] SERVICE.METHOD [JSON|-]  call a method; prints the reply body as JSON.\n"
           "                                         JSON is the request body (`-`: read it from stdin;\n"
           "                                         none: an empty body). METHOD is what follows the\n"
           "                                         last dot. Without ENDPOINT: any live instance of\n"
           "                                         SERVICE, found through discovery.\n"
           "  pub TARGET TOPIC [JSON|-]              publish an event through the node (plexus.publish;\n"
           "                                         the node must run with --allow-publish); prints {\"seq\":N}\n"
           "  sub [ENDPOINT] [PREFIX]                events whose topic starts with PREFIX (default: all), one\n"
           "  sub --pub-endpoint EP [PREFIX]         JSON line each: {\"topic\",\"seq\",\"source\"(hex),\"headers\",\n"
           "                                         \"body\"}. From the node at ENDPOINT; without one, from\n"
           "                                         every publisher of a matching topic that discovery shows,\n"
           "                                         now or later\n"
           "  describe TARGET                        the node's services, methods, topics (plexus.describe)\n"
           "  ping TARGET                            plexus.ping's reply plus \"rtt_us\", the round trip\n"
           "  stats TARGET                           the node's counters (plexus.stats): per method calls,\n"
           "                                         errors, errors_by_code, in_flight, p50_us/p90_us/p99_us;\n"
           "                                         per topic published, dropped, received, gaps\n"
           "  peers                                  the nodes discovery sees: name, id, services (@version),\n"
           "                                         endpoints, age (time since its last beacon); --json: an\n"
           "                                         array of {name,id,incarnation,services,topics,endpoints,\n"
           "                                         address,interval_ms,age_ms}\n"
           "  watch                                  join, update and leave events as they happen, one line\n"
           "                                         each (--json: JSON lines {ts,event,reason,name,id,...}),\n"
           "                                         until --count events, --timeout or SIGINT/SIGTERM. The\n"
           "                                         nodes already there come first, as joins.\n"
           "\n"
           "ENDPOINT is a ZeroMQ endpoint: tcp://HOST:PORT, ipc://PATH or inproc://NAME. TARGET is an\n"
           "ENDPOINT, or a NAME resolved through discovery: a node name, a service name (any instance)\n"
           "or a node id prefix (4+ hex digits), waited for up to --timeout.\n"
           "\n"
           "Discovery: the client joins the cluster as a node named plexus-cli that serves nothing,\n"
           "only when a command names no ENDPOINT. Defaults stay on this host (cluster \"plexus\",\n"
           "UDP port 5690, beacons to 127.255.255.255); use the same options as the nodes.\n"
           "\n"
        << d
        << "\n"
           "JSON <-> MessagePack: request bodies are the MessagePack encoding of the JSON given.\n"
           "Replies and event bodies print as JSON: bin -> base64 string; ext -> {\"ext\":TYPE,\"data\":base64};\n"
           "a non-string map key -> its JSON text; an empty body -> null; a body that is not one\n"
           "MessagePack value -> base64 string of its bytes.\n"
           "\n"
           "peers prints once no new node has shown up for 2 beacon intervals (at most 500 ms), or\n"
           "as soon as --expect N nodes are seen (fewer by --timeout: prints them, exit 68), or after\n"
           "exactly --wait MS. Bounded by --timeout (default 5000).\n"
           "\n"
           "sub and watch end after --count events (exit 0), or at --timeout: exit 0 without --count, 68\n"
           "(DEADLINE_EXCEEDED) when fewer than --count events came. SIGINT/SIGTERM end it like the\n"
           "timeout. Without --timeout it runs until --count events or a signal. Events published\n"
           "before the subscription reaches the publisher are not received (ZeroMQ slow joiner).\n"
           "\n"
           "Exit codes:\n"
           "  0        success\n"
           "  1        failure outside a call (e.g. the client cannot start)\n"
           "  2        usage error: unknown command or option, missing argument, bad JSON, bad header\n"
           "  64+CODE  the call failed with status CODE (an error line on stderr: `plexus: CODE: message`):\n";
    for (int c = 1; c <= 17; ++c) {
        out << (c % 3 == 1 ? "           " : "  ") << exit_status_base + c << ' '
            << plexus::to_string(static_cast<plexus::code>(c));
        if (c % 3 == 0 || c == 17) out << '\n';
    }
    out << "\nEnvironment: the discovery options fall back to PLEXUS_DISCOVERY, PLEXUS_CLUSTER,\n"
           "PLEXUS_DISCOVERY_PORT, PLEXUS_DISCOVERY_INTERVAL, PLEXUS_DISCOVERY_MISSED, PLEXUS_BROADCAST,\n"
           "PLEXUS_NO_BROADCAST, PLEXUS_MULTICAST, PLEXUS_SEED, PLEXUS_ADVERTISE (lists comma-separated).\n"
           "\nExamples:\n"
           "  plexus call echo.echo '{\"hello\":\"world\"}'                  # any live instance of echo\n"
           "  plexus peers --cluster prod --discovery-port 5690\n"
           "  plexus watch --json --count 1 --timeout 10000\n"
           "  plexus ping orders                                          # a node or service named orders\n"
           "  plexus sub orders. --count 1 --timeout 10000                # every publisher of orders.*\n"
           "  plexus call tcp://127.0.0.1:5555 echo.echo '{\"hello\":\"world\"}' -H user-id=42\n"
           "  echo '{\"ms\":10}' | plexus call tcp://127.0.0.1:5555 echo.sleep - --timeout 500\n"
           "  plexus sub tcp://127.0.0.1:5555 orders. --count 1 --timeout 10000\n";
}

po::options_description discovery_description() {
    return pn::discovery_options("resolve names through discovery when a command names no ENDPOINT "
                                 "(off: an ENDPOINT is required; peers and watch need it on)");
}

po::options_description describe_options() {
    po::options_description d("Options");
    // clang-format off
    d.add_options()
        ("help,h", "print this help and exit")
        ("version", "print the version and exit")
        ("header,H", po::value<std::vector<std::string>>()->value_name("KEY=VALUE"),
            "request header (call, pub; repeatable); the event carries pub's headers")
        ("timeout,t", po::value<unsigned>()->value_name("MS"),
            "call, pub, ping, describe, stats: reply deadline (default 5000), and by NAME also the bound on "
            "finding it; sub, watch: how long to listen (default: no limit); peers: bound on the wait (default 5000)")
        ("count,n", po::value<unsigned>()->value_name("N"), "sub, watch: exit after N events")
        ("json", po::bool_switch(), "peers: a JSON array instead of a table; watch: JSON lines")
        ("wait", po::value<unsigned>()->value_name("MS"), "peers: watch the cluster for exactly MS, then print")
        ("expect", po::value<unsigned>()->value_name("N"), "peers: print as soon as N nodes are seen")
        ("pub-endpoint", po::value<std::vector<std::string>>()->value_name("EP"),
            "sub: subscribe to this publisher endpoint directly instead of asking ENDPOINT (repeatable)")
        ("compact,c", po::bool_switch(), "print JSON on one line")
        ("max-message-size", po::value<std::int64_t>()->default_value(4 * 1024 * 1024)->value_name("BYTES"),
            "largest message sent or accepted")
        ("log-level", po::value<std::string>()->default_value("off")->value_name("LEVEL"),
            "the client node's log lines on stderr: trace|debug|info|warn|error|off");
    // clang-format on
    d.add(discovery_description());
    return d;
}

// Returns nullopt when the process should exit 0 at once (--help, --version).
std::optional<cli> parse(int argc, char** argv) {
    auto desc = describe_options();
    po::options_description all;
    all.add(desc).add_options()("args", po::value<std::vector<std::string>>());
    po::positional_options_description pos;
    pos.add("args", -1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
        // Only the discovery options fall back to the environment (PLEXUS_CLUSTER, ...).
        const auto disc_desc = discovery_description();
        po::store(po::parse_environment(disc_desc, pn::env_name_mapper(disc_desc)), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw usage_error(e.what());
    }
    if (vm.count("help")) {
        usage(std::cout, desc);
        return std::nullopt;
    }
    if (vm.count("version")) {
        std::cout << "plexus 0.1.0 (protocol 1)\n";
        return std::nullopt;
    }
    cli c;
    if (vm.count("args")) c.args = vm["args"].as<std::vector<std::string>>();
    if (c.args.empty()) throw usage_error("no command given (call, pub, sub, describe, ping, stats, peers, watch)");
    c.command = c.args.front();
    c.args.erase(c.args.begin());
    if (vm.count("header")) c.header_args = vm["header"].as<std::vector<std::string>>();
    if (vm.count("timeout")) {
        c.timeout_ms = vm["timeout"].as<unsigned>();
        if (*c.timeout_ms == 0) throw usage_error("--timeout must be positive");
    }
    if (vm.count("count")) c.count = vm["count"].as<unsigned>();
    if (vm.count("pub-endpoint")) c.pub_endpoints = vm["pub-endpoint"].as<std::vector<std::string>>();
    for (const auto& ep : c.pub_endpoints)
        if (!pn::is_endpoint(ep)) throw usage_error("'" + ep + "' is not an endpoint (tcp://, ipc:// or inproc://)");
    c.compact = vm["compact"].as<bool>();
    c.max_message_size = vm["max-message-size"].as<std::int64_t>();
    if (c.max_message_size <= 0) throw usage_error("--max-message-size must be positive");
    if (!plexus::from_string(vm["log-level"].as<std::string>(), c.log))
        throw usage_error("--log-level must be trace|debug|info|warn|error|off");
    c.json_out = vm["json"].as<bool>();
    if (vm.count("wait")) c.wait_ms = vm["wait"].as<unsigned>();
    if (vm.count("expect")) c.expect = vm["expect"].as<unsigned>();
    if (c.wait_ms && c.expect) throw usage_error("--wait and --expect exclude each other");
    try {
        c.discovery = pn::discovery_from(vm);
    } catch (const std::invalid_argument& e) {
        throw usage_error(e.what());
    }
    return c;
}

// --- helpers ----------------------------------------------------------------------

// Takes the leading ENDPOINT argument, if there is one.
std::optional<std::string> take_endpoint(cli& c) {
    if (!c.args.empty() && pn::is_endpoint(c.args.front())) {
        std::string ep = c.args.front();
        c.args.erase(c.args.begin());
        return ep;
    }
    if (!c.args.empty() && c.args.front().find("://") != std::string::npos)
        throw usage_error("'" + c.args.front() + "' is not a supported endpoint (tcp://, ipc:// or inproc://)");
    return std::nullopt;
}

// A command's TARGET: an ENDPOINT, or a NAME to resolve through discovery.
struct target {
    std::string endpoint; // empty: resolve `name`
    std::string name;
};

target take_target(cli& c) {
    if (auto ep = take_endpoint(c)) return {*ep, {}};
    if (c.args.empty())
        throw usage_error("plexus " + c.command + " needs a TARGET: an ENDPOINT (tcp://HOST:PORT, ipc://PATH, "
                          "inproc://NAME) or a node or service name");
    target t{{}, c.args.front()};
    c.args.erase(c.args.begin());
    return t;
}

void no_more_args(const cli& c) {
    if (!c.args.empty()) throw usage_error("unexpected argument '" + c.args.front() + "'");
}

plexus::headers parse_headers(const std::vector<std::string>& in) {
    plexus::headers h;
    for (const auto& kv : in) {
        const auto eq = kv.find('=');
        if (eq == std::string::npos || eq == 0) throw usage_error("header '" + kv + "' is not KEY=VALUE");
        h.set(kv.substr(0, eq), kv.substr(eq + 1));
    }
    return h;
}

json parse_json(const std::string& arg) {
    std::string text = arg;
    if (arg == "-") text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    try {
        return json::parse(text);
    } catch (const json::parse_error& e) {
        std::string what = e.what();
        // nlohmann's messages start with "[json.exception.parse_error.101] ".
        if (const auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
        throw usage_error(std::string("bad JSON ") + (arg == "-" ? "on stdin" : "argument") + ": " + what);
    }
}

void print_json(const cli& c, const json& j) {
    const std::string s = pn::dump(j, c.compact ? -1 : 2) + "\n";
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

void print_line(const std::string& line) {
    const std::string s = line + "\n";
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

// Turns a failed reply into the one error line and exit code.
[[noreturn]] void fail(const plexus::status& st, const std::string& what, const std::string& endpoint,
                       std::chrono::milliseconds timeout) {
    std::string msg = st.message;
    if (msg.empty()) {
        if (st.code == plexus::code::deadline_exceeded)
            msg = "no reply from " + endpoint + " within " + std::to_string(timeout.count()) + " ms";
        else
            msg = what + " at " + endpoint + " failed";
    }
    throw status_error(st.code, msg);
}

std::string short_id(const disc::node_id& id) { return disc::to_hex(id).substr(0, 8); }

std::string services_text(const disc::peer& p) {
    std::string out;
    for (const auto& s : p.services) {
        if (!out.empty()) out += ',';
        out += s.name;
        if (!s.version.empty()) out += "@" + s.version;
    }
    return out.empty() ? "-" : out;
}

std::string endpoints_text(const disc::peer& p) {
    std::string out;
    for (const auto& [k, v] : p.endpoints) out += (out.empty() ? "" : " ") + k + "=" + v;
    return out.empty() ? "-" : out;
}

json peer_json(const disc::peer& p) {
    json services = json::array();
    for (const auto& s : p.services) services.push_back({{"name", s.name}, {"version", s.version}});
    json endpoints = json::object();
    for (const auto& [k, v] : p.endpoints) endpoints[k] = v;
    return {{"name", p.name},
            {"id", disc::to_hex(p.id)},
            {"incarnation", p.incarnation},
            {"services", services},
            {"topics", p.topics},
            {"endpoints", endpoints},
            {"address", p.address},
            {"interval_ms", p.interval.count()},
            {"age_ms", p.age().count()}};
}

bool is_hex(std::string_view s) { return s.find_first_not_of("0123456789abcdef") == std::string_view::npos; }

// The client: a node that binds nothing. With discovery it joins the cluster (named
// plexus-cli, serving nothing) so calls and subscriptions resolve by name.
struct session {
    // `on_peer` (optional) sees every peer event from the start; it runs on the
    // discovery thread.
    session(const cli& c, std::chrono::milliseconds timeout, bool with_discovery,
            std::function<void(const disc::event&)> on_peer = {})
        : log("plexus", c.log), timeout(timeout) {
        plexus::node_options o;
        o.name = "plexus-cli";
        o.bind.clear();
        o.pub_bind.clear();
        o.workers = 1;
        o.default_timeout = timeout;
        o.shutdown_timeout = 500ms;
        o.max_message_size = c.max_message_size;
        o.log = c.log;
        o.log_sink = log.sink();
        if (with_discovery) {
            if (!c.discovery)
                throw usage_error("plexus " + c.command +
                                  (c.command == "peers" || c.command == "watch"
                                       ? std::string(" needs discovery (--discovery on)")
                                       : " without an ENDPOINT needs discovery (--discovery on)"));
            o.discovery = c.discovery;
            where = "cluster '" + c.discovery->cluster + "' (UDP port " + std::to_string(c.discovery->port) + ")";
        }
        node.emplace(std::move(o));
        if (with_discovery)
            node->on_peer_event([this, on_peer = std::move(on_peer)](const disc::event& e) {
                if (on_peer) on_peer(e);
                {
                    std::lock_guard lock(mutex);
                    ++changes;
                    if (e.kind == disc::event_kind::join) last_join = std::chrono::steady_clock::now();
                }
                changed.notify_all();
            });
        try {
            node->start();
        } catch (const plexus::error& e) {
            throw status_error(e.code(), std::string("cannot start the client: ") + e.message());
        }
    }

    plexus::reply call(const std::string& endpoint, std::string_view service, std::string_view method, std::string body,
                       plexus::headers headers = {}) {
        plexus::call_options opts;
        opts.timeout = timeout;
        opts.headers = std::move(headers);
        opts.endpoint = endpoint; // empty: by service name
        return node->call_raw(service, method, std::move(body), opts);
    }

    // A system method's reply as JSON; throws status_error on failure.
    json system_call(const std::string& endpoint, std::string_view method, std::string body = {},
                     plexus::headers headers = {}) {
        auto r = call(endpoint, plexus::system_service, method, std::move(body), std::move(headers));
        if (!r.ok()) fail(r.status, "plexus." + std::string(method), endpoint, timeout);
        return pn::from_msgpack(r.body);
    }

    // The RPC endpoint of a peer called `name` (node name first, then a service it
    // serves, then an id prefix), waiting for one until `deadline`. Several match: any.
    std::string find_node(const std::string& name, std::chrono::steady_clock::time_point deadline) {
        auto pick = [&]() -> std::optional<std::string> {
            std::vector<std::string> by_rank[3];
            for (const auto& p : node->peers()) {
                auto rpc = p.endpoints.find("rpc");
                if (rpc == p.endpoints.end()) continue;
                if (p.name == name)
                    by_rank[0].push_back(rpc->second);
                else if (p.find_service(name))
                    by_rank[1].push_back(rpc->second);
                else if (name.size() >= 4 && is_hex(name) && disc::to_hex(p.id).rfind(name, 0) == 0)
                    by_rank[2].push_back(rpc->second);
            }
            for (auto& v : by_rank)
                if (!v.empty()) {
                    static std::minstd_rand rng{std::random_device{}()};
                    return v[rng() % v.size()];
                }
            return std::nullopt;
        };
        std::unique_lock lock(mutex);
        for (;;) {
            const auto seen = changes;
            lock.unlock();
            if (auto ep = pick()) return *ep;
            lock.lock();
            if (!changed.wait_until(lock, deadline, [&] { return changes != seen; }))
                throw status_error(plexus::code::unavailable,
                                   "no node or service named '" + name + "' seen in " + where + " within " +
                                       std::to_string(timeout.count()) + " ms");
        }
    }

    // The target's endpoint: as given, or resolved by name within the timeout.
    std::string endpoint_of(const target& t, std::chrono::steady_clock::time_point started) {
        return t.endpoint.empty() ? find_node(t.name, started + timeout) : t.endpoint;
    }

    pn::logger log;
    std::chrono::milliseconds timeout;
    std::string where; // "cluster 'x' (UDP port N)", for messages
    std::optional<plexus::node> node;

    std::mutex mutex;
    std::condition_variable changed;
    std::uint64_t changes = 0; // peer events so far
    std::chrono::steady_clock::time_point last_join = std::chrono::steady_clock::now();
};

constexpr auto default_timeout = 5000ms;

std::chrono::milliseconds call_timeout(const cli& c) {
    return c.timeout_ms ? std::chrono::milliseconds(*c.timeout_ms) : default_timeout;
}

// Blocks SIGINT, SIGTERM and SIGUSR1 in this thread and, as they inherit the mask,
// every thread started after it; SIGUSR1 is how a handler says "done".
sigset_t block_stop_signals() {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    return signals;
}

// Waits for one of `signals`, or until start + timeout_ms if given. Returns the
// signal, 0 on timeout.
int wait_for_end(const sigset_t& signals, std::chrono::steady_clock::time_point start, std::optional<unsigned> timeout_ms) {
    for (;;) {
        int sig;
        if (timeout_ms) {
            const auto left = start + std::chrono::milliseconds(*timeout_ms) - std::chrono::steady_clock::now();
            if (left <= left.zero()) return 0;
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
            sig = ::sigtimedwait(&signals, nullptr, &ts);
        } else {
            sig = ::sigwaitinfo(&signals, nullptr);
        }
        if (sig > 0) return sig;
        if (errno == EAGAIN) return 0; // timeout; else EINTR: again
    }
}

// The end of `sub` and `watch`: 0, or why fewer than --count events came.
int end_of_stream(const cli& c, unsigned seen, int sig, std::string_view what) {
    if (!c.count || seen >= *c.count) return exit_ok;
    const bool signalled = sig == SIGINT || sig == SIGTERM;
    throw status_error(signalled ? plexus::code::cancelled : plexus::code::deadline_exceeded,
                       std::to_string(seen) + " of " + std::to_string(*c.count) + " " + std::string(what) +
                           (signalled ? " before the signal" : " within " + std::to_string(*c.timeout_ms) + " ms"));
}

// --- commands ---------------------------------------------------------------------

int cmd_call(cli& c) {
    const auto endpoint = take_endpoint(c);
    if (c.args.empty()) throw usage_error("plexus call needs SERVICE.METHOD");
    const std::string target = c.args.front();
    c.args.erase(c.args.begin());
    const auto dot = target.rfind('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == target.size())
        throw usage_error("'" + target + "' is not SERVICE.METHOD");
    std::string body;
    if (!c.args.empty()) {
        body = pn::to_msgpack(parse_json(c.args.front()));
        c.args.erase(c.args.begin());
    }
    no_more_args(c);
    const auto headers = parse_headers(c.header_args);

    session s(c, call_timeout(c), !endpoint);
    const std::string service = target.substr(0, dot);
    auto r = s.call(endpoint.value_or(""), service, std::string_view(target).substr(dot + 1), std::move(body), headers);
    if (!r.ok()) fail(r.status, target, endpoint ? *endpoint : "any instance of '" + service + "' in " + s.where, s.timeout);
    print_json(c, pn::from_msgpack(r.body));
    return exit_ok;
}

int cmd_pub(cli& c) {
    const target t = take_target(c);
    if (c.args.empty()) throw usage_error("plexus pub needs a TOPIC");
    const std::string topic = c.args.front();
    c.args.erase(c.args.begin());
    if (topic.empty()) throw usage_error("the topic must not be empty");
    json value = nullptr;
    if (!c.args.empty()) {
        value = parse_json(c.args.front());
        c.args.erase(c.args.begin());
    }
    no_more_args(c);
    const auto headers = parse_headers(c.header_args);

    const auto start = std::chrono::steady_clock::now();
    session s(c, call_timeout(c), t.endpoint.empty());
    const std::string endpoint = s.endpoint_of(t, start);
    print_json(c, s.system_call(endpoint, "publish", pn::to_msgpack({{"topic", topic}, {"body", value}}), headers));
    return exit_ok;
}

int cmd_simple(cli& c, std::string_view method) {
    const target t = take_target(c);
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    const auto start = std::chrono::steady_clock::now();
    session s(c, call_timeout(c), t.endpoint.empty());
    const std::string endpoint = s.endpoint_of(t, start);
    const auto t0 = std::chrono::steady_clock::now();
    json j = s.system_call(endpoint, method);
    const auto rtt = std::chrono::steady_clock::now() - t0;
    if (method == "ping" && j.is_object())
        j["rtt_us"] = std::chrono::duration_cast<std::chrono::microseconds>(rtt).count();
    print_json(c, j);
    return exit_ok;
}

// A publisher bound to a wildcard address (tcp://0.0.0.0:P, tcp://*:P) is reached at
// the host we reached its RPC endpoint on.
std::string reachable(const std::string& pub, const std::string& rpc) {
    const std::string scheme = "tcp://";
    if (pub.rfind(scheme, 0) != 0 || rpc.rfind(scheme, 0) != 0) return pub;
    const auto colon = pub.rfind(':');
    const std::string host = pub.substr(scheme.size(), colon - scheme.size());
    if (host != "0.0.0.0" && host != "*" && host != "[::]" && host != "::") return pub;
    const auto rpc_colon = rpc.rfind(':');
    return scheme + rpc.substr(scheme.size(), rpc_colon - scheme.size()) + pub.substr(colon);
}

int cmd_sub(cli& c) {
    // [ENDPOINT] [PREFIX]: without an endpoint (or --pub-endpoint), through discovery.
    const auto endpoint = take_endpoint(c);
    std::string prefix;
    if (!c.args.empty()) {
        prefix = c.args.front();
        c.args.erase(c.args.begin());
    }
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    if (c.count && *c.count == 0) throw usage_error("--count must be positive");
    const bool by_discovery = !endpoint && c.pub_endpoints.empty();

    const sigset_t signals = block_stop_signals();
    const auto start = std::chrono::steady_clock::now();
    session s(c, c.timeout_ms ? std::min(call_timeout(c), default_timeout) : default_timeout, by_discovery);
    std::vector<std::string> pubs = c.pub_endpoints;
    if (endpoint && pubs.empty()) {
        const json d = s.system_call(*endpoint, "describe");
        if (d.is_object() && d.contains("endpoints") && d["endpoints"].is_object() && d["endpoints"].contains("pub") &&
            d["endpoints"]["pub"].is_array())
            for (const auto& ep : d["endpoints"]["pub"])
                if (ep.is_string()) pubs.push_back(reachable(ep.get<std::string>(), *endpoint));
        if (pubs.empty())
            throw status_error(plexus::code::failed_precondition, "the node at " + *endpoint + " publishes no events");
    }

    std::mutex mutex;
    unsigned seen = 0;
    bool done = false;
    // With discovery the node connects to every publisher announcing a matching topic,
    // now or later, and disconnects from those that leave.
    auto sub = s.node->subscribe(
        prefix,
        [&](const plexus::event& ev) {
            std::lock_guard lock(mutex);
            if (done) return;
            json h = json::object();
            for (const auto& [k, v] : ev.headers) h[k] = v;
            const json line{{"topic", ev.topic},
                            {"seq", ev.seq},
                            {"source", pn::hex(ev.source)},
                            {"headers", h},
                            {"body", pn::from_msgpack(ev.body)}};
            print_line(pn::dump(line));
            if (c.count && ++seen >= *c.count) {
                done = true;
                ::kill(::getpid(), SIGUSR1);
            }
        },
        plexus::execution::inline_loop);
    for (const auto& ep : pubs) s.node->connect_events(ep);

    const int sig = wait_for_end(signals, start, c.timeout_ms);
    {
        std::lock_guard lock(mutex);
        done = true;
    }
    sub.cancel();
    s.node->stop(); // no handler runs past here: what it captured goes away next
    return end_of_stream(c, seen, sig, "events");
}

int cmd_peers(cli& c) {
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    const auto start = std::chrono::steady_clock::now();
    const auto bound = start + call_timeout(c);
    session s(c, call_timeout(c), true);
    const auto interval = c.discovery->interval;
    const auto quiet = std::clamp<std::chrono::milliseconds>(2 * interval, 100ms, 500ms);
    bool short_of_expected = false;
    {
        std::unique_lock lock(s.mutex);
        if (c.wait_ms) {
            // The user asked to watch for this long: nothing to wait on but the clock.
            s.changed.wait_until(lock, std::min(bound, start + std::chrono::milliseconds(*c.wait_ms)), [] { return false; });
        } else if (c.expect) {
            for (;;) {
                const auto seen = s.changes;
                lock.unlock();
                const bool enough = s.node->peers().size() >= *c.expect;
                lock.lock();
                if (enough) break;
                if (!s.changed.wait_until(lock, bound, [&] { return s.changes != seen; })) {
                    short_of_expected = s.node->peers().size() < *c.expect;
                    break;
                }
            }
        } else {
            // Peers answer a new node at once: once no join has come for `quiet`, that is all.
            while (std::chrono::steady_clock::now() < bound) {
                const auto until = std::min(bound, s.last_join + quiet);
                if (std::chrono::steady_clock::now() >= until) break;
                s.changed.wait_until(lock, until);
            }
        }
    }
    const auto peers = s.node->peers();
    if (c.json_out) {
        json arr = json::array();
        for (const auto& p : peers) arr.push_back(peer_json(p));
        print_json(c, arr);
    } else {
        std::vector<std::vector<std::string>> rows{{"NAME", "ID", "SERVICES", "ENDPOINTS", "AGE"}};
        for (const auto& p : peers)
            rows.push_back({p.name, short_id(p.id), services_text(p), endpoints_text(p), std::to_string(p.age().count()) + "ms"});
        std::vector<std::size_t> width(rows[0].size(), 0);
        for (const auto& r : rows)
            for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
        for (const auto& r : rows) {
            std::string line;
            for (std::size_t i = 0; i < r.size(); ++i)
                line += i + 1 == r.size() ? r[i] : r[i] + std::string(width[i] - r[i].size() + 2, ' ');
            print_line(line);
        }
        if (peers.empty()) std::fprintf(stderr, "plexus: no peers seen in %s\n", s.where.c_str());
    }
    if (short_of_expected)
        throw status_error(plexus::code::deadline_exceeded,
                           std::to_string(peers.size()) + " of " + std::to_string(*c.expect) + " peers seen in " +
                               s.where + " within " + std::to_string(call_timeout(c).count()) + " ms");
    return exit_ok;
}

int cmd_watch(cli& c) {
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    if (c.count && *c.count == 0) throw usage_error("--count must be positive");
    const sigset_t signals = block_stop_signals();
    const auto start = std::chrono::steady_clock::now();
    // Events come on the discovery thread, one at a time; `done` (under the mutex) ends
    // the output before the session goes away.
    auto state = std::make_shared<std::pair<std::mutex, unsigned>>();
    auto done = std::make_shared<bool>(false);
    const bool as_json = c.json_out;
    const std::optional<unsigned> count = c.count;
    session s(c, default_timeout, true, [state, done, as_json, count](const disc::event& e) {
        std::lock_guard lock(state->first);
        if (*done) return;
        const auto& p = e.node;
        const std::string kind(disc::to_string(e.kind));
        if (as_json) {
            json j = peer_json(p);
            j.erase("age_ms");
            j["ts"] = plexus::utc_timestamp();
            j["event"] = kind;
            if (e.kind == disc::event_kind::leave) j["reason"] = std::string(disc::to_string(e.reason));
            print_line(pn::dump(j));
        } else {
            std::string line = plexus::utc_timestamp() + " " + kind + std::string(7 - kind.size(), ' ') + p.name + " " +
                               short_id(p.id) + " inc=" + std::to_string(p.incarnation);
            if (e.kind == disc::event_kind::leave)
                line += " reason=" + std::string(disc::to_string(e.reason));
            else
                line += " services=" + services_text(p) + " " + endpoints_text(p);
            print_line(line);
        }
        if (count && ++state->second >= *count) {
            *done = true;
            ::kill(::getpid(), SIGUSR1);
        }
    });
    const int sig = wait_for_end(signals, start, c.timeout_ms);
    unsigned seen;
    {
        std::lock_guard lock(state->first);
        *done = true;
        seen = state->second;
    }
    s.node->stop();
    return end_of_stream(c, seen, sig, "events");
}

int dispatch(cli& c) {
    if (c.command == "call") return cmd_call(c);
    if (c.command == "pub") return cmd_pub(c);
    if (c.command == "sub") return cmd_sub(c);
    if (c.command == "describe" || c.command == "ping" || c.command == "stats") return cmd_simple(c, c.command);
    if (c.command == "peers") return cmd_peers(c);
    if (c.command == "watch") return cmd_watch(c);
    throw usage_error("unknown command '" + c.command + "' (call, pub, sub, describe, ping, stats, peers, watch)");
}

// One line, whatever the message holds.
std::string one_line(std::string s) {
    for (char& ch : s)
        if (ch == '\n' || ch == '\r') ch = ' ';
    return s;
}

} // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    try {
        auto c = parse(argc, argv);
        if (!c) return exit_ok;
        return dispatch(*c);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "plexus: %s (see plexus --help)\n", one_line(e.what()).c_str());
        return exit_usage;
    } catch (const status_error& e) {
        std::fprintf(stderr, "plexus: %s: %s\n", std::string(plexus::to_string(e.code)).c_str(),
                     one_line(e.what()).c_str());
        return exit_code_of(e.code);
    } catch (const plexus::error& e) {
        std::fprintf(stderr, "plexus: %s\n", one_line(e.what()).c_str());
        return exit_code_of(e.code());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "plexus: %s\n", one_line(e.what()).c_str());
        return exit_failure;
    }
}
