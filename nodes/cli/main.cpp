// plexus: the command-line client, in the spirit of grpcurl and the nats CLI. JSON in
// and out; exit codes a script can trust (see usage()); every error one line on stderr.
//
// It runs a client-only plexus::node (no RPC or event endpoint bound) and talks to
// the node given as ENDPOINT. The endpoint is recognised by its scheme, so that once
// discovery lands `plexus call service.method ...` can resolve the service by name
// without changing the other arguments.
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
#include <optional>
#include <string>
#include <vector>

#include <pthread.h>
#include <unistd.h>

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
};

void usage(std::ostream& out, const po::options_description& d) {
    out << "Usage: plexus COMMAND [ENDPOINT] [ARGS...] [OPTIONS]\n"
           "\n"
           "Commands:\n"
           "  call ENDPOINT SERVICE.METHOD [JSON|-]  call a method; prints the reply body as JSON.\n"
           "                                         JSON is the request body (`-`: read it from stdin;\n"
           "                                         none: an empty body). METHOD is what follows the\n"
           "                                         last dot.\n"
           "  pub ENDPOINT TOPIC [JSON|-]            publish an event through the node (plexus.publish;\n"
           "                                         the node must run with --allow-publish); prints {\"seq\":N}\n"
           "  sub ENDPOINT [PREFIX]                  subscribe to the node's events whose topic starts with\n"
           "  sub --pub-endpoint EP [PREFIX]         PREFIX (default: all); one JSON line per event:\n"
           "                                         {\"topic\",\"seq\",\"source\"(hex),\"headers\",\"body\"}\n"
           "  describe ENDPOINT                      the node's services, methods, topics (plexus.describe)\n"
           "  ping ENDPOINT                          plexus.ping's reply plus \"rtt_us\", the round trip\n"
           "  stats ENDPOINT                         the node's counters (plexus.stats): per method calls,\n"
           "                                         errors, errors_by_code, in_flight, p50_us/p90_us/p99_us;\n"
           "                                         per topic published, dropped, received, gaps\n"
           "\n"
           "ENDPOINT is a ZeroMQ endpoint: tcp://HOST:PORT, ipc://PATH or inproc://NAME. (Resolving a\n"
           "service by name without an endpoint needs discovery, which this build does not have yet.)\n"
           "\n"
        << d
        << "\n"
           "JSON <-> MessagePack: request bodies are the MessagePack encoding of the JSON given.\n"
           "Replies and event bodies print as JSON: bin -> base64 string; ext -> {\"ext\":TYPE,\"data\":base64};\n"
           "a non-string map key -> its JSON text; an empty body -> null; a body that is not one\n"
           "MessagePack value -> base64 string of its bytes.\n"
           "\n"
           "sub ends after --count events (exit 0), or at --timeout: exit 0 without --count, 68\n"
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
    out << "\nExamples:\n"
           "  plexus call tcp://127.0.0.1:5555 echo.echo '{\"hello\":\"world\"}' -H user-id=42\n"
           "  echo '{\"ms\":10}' | plexus call tcp://127.0.0.1:5555 echo.sleep - --timeout 500\n"
           "  plexus sub tcp://127.0.0.1:5555 orders. --count 1 --timeout 10000\n";
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
            "call: reply deadline (default 5000); sub: how long to listen (default: no limit)")
        ("count,n", po::value<unsigned>()->value_name("N"), "sub: exit after N events")
        ("pub-endpoint", po::value<std::vector<std::string>>()->value_name("EP"),
            "sub: subscribe to this publisher endpoint directly instead of asking ENDPOINT (repeatable)")
        ("compact,c", po::bool_switch(), "print JSON on one line")
        ("max-message-size", po::value<std::int64_t>()->default_value(4 * 1024 * 1024)->value_name("BYTES"),
            "largest message sent or accepted")
        ("log-level", po::value<std::string>()->default_value("off")->value_name("LEVEL"),
            "the client node's log lines on stderr: trace|debug|info|warn|error|off");
    // clang-format on
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
    if (c.args.empty()) throw usage_error("no command given (call, pub, sub, describe, ping, stats)");
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
    if (!pn::parse_level(vm["log-level"].as<std::string>(), c.log))
        throw usage_error("--log-level must be trace|debug|info|warn|error|off");
    return c;
}

// --- helpers ----------------------------------------------------------------------

// Takes the leading ENDPOINT argument. Without one, a usage error that says why.
std::string take_endpoint(cli& c) {
    if (!c.args.empty() && pn::is_endpoint(c.args.front())) {
        std::string ep = c.args.front();
        c.args.erase(c.args.begin());
        return ep;
    }
    if (!c.args.empty() && c.args.front().find("://") != std::string::npos)
        throw usage_error("'" + c.args.front() + "' is not a supported endpoint (tcp://, ipc:// or inproc://)");
    throw usage_error("plexus " + c.command +
                      " needs an ENDPOINT (tcp://HOST:PORT, ipc://PATH or inproc://NAME): resolving by name "
                      "needs discovery, not available in this build");
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

struct session {
    explicit session(const cli& c, std::chrono::milliseconds timeout) : log("plexus", c.log), timeout(timeout) {
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
        node.emplace(std::move(o));
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
        opts.endpoint = endpoint;
        return node->call_raw(service, method, std::move(body), opts);
    }

    // A system method's reply as JSON; throws status_error on failure.
    json system_call(const std::string& endpoint, std::string_view method, std::string body = {},
                     plexus::headers headers = {}) {
        auto r = call(endpoint, plexus::system_service, method, std::move(body), std::move(headers));
        if (!r.ok()) fail(r.status, "plexus." + std::string(method), endpoint, timeout);
        return pn::from_msgpack(r.body);
    }

    pn::logger log;
    std::chrono::milliseconds timeout;
    std::optional<plexus::node> node;
};

constexpr auto default_timeout = 5000ms;

std::chrono::milliseconds call_timeout(const cli& c) {
    return c.timeout_ms ? std::chrono::milliseconds(*c.timeout_ms) : default_timeout;
}

// --- commands ---------------------------------------------------------------------

int cmd_call(cli& c) {
    const std::string endpoint = take_endpoint(c);
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

    session s(c, call_timeout(c));
    auto r = s.call(endpoint, std::string_view(target).substr(0, dot), std::string_view(target).substr(dot + 1),
                    std::move(body), headers);
    if (!r.ok()) fail(r.status, target, endpoint, s.timeout);
    print_json(c, pn::from_msgpack(r.body));
    return exit_ok;
}

int cmd_pub(cli& c) {
    const std::string endpoint = take_endpoint(c);
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

    session s(c, call_timeout(c));
    print_json(c, s.system_call(endpoint, "publish", pn::to_msgpack({{"topic", topic}, {"body", value}}), headers));
    return exit_ok;
}

int cmd_simple(cli& c, std::string_view method) {
    const std::string endpoint = take_endpoint(c);
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    session s(c, call_timeout(c));
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
    std::string endpoint;
    if (c.pub_endpoints.empty() || (!c.args.empty() && pn::is_endpoint(c.args.front()))) endpoint = take_endpoint(c);
    std::string prefix;
    if (!c.args.empty()) {
        prefix = c.args.front();
        c.args.erase(c.args.begin());
    }
    no_more_args(c);
    if (!c.header_args.empty()) throw usage_error("-H applies to call and pub only");
    if (c.count && *c.count == 0) throw usage_error("--count must be positive");

    // SIGUSR1 is how the event handler tells main that --count events came.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    const auto start = std::chrono::steady_clock::now();
    session s(c, c.timeout_ms ? std::min(call_timeout(c), default_timeout) : default_timeout);
    std::vector<std::string> pubs;
    for (const auto& ep : c.pub_endpoints) pubs.push_back(ep);
    if (pubs.empty()) {
        const json d = s.system_call(endpoint, "describe");
        if (d.is_object() && d.contains("endpoints") && d["endpoints"].is_object() && d["endpoints"].contains("pub") &&
            d["endpoints"]["pub"].is_array())
            for (const auto& ep : d["endpoints"]["pub"])
                if (ep.is_string()) pubs.push_back(reachable(ep.get<std::string>(), endpoint));
        if (pubs.empty())
            throw status_error(plexus::code::failed_precondition, "the node at " + endpoint + " publishes no events");
    }

    std::mutex mutex;
    unsigned seen = 0;
    bool done = false;
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
            const std::string text = pn::dump(line) + "\n";
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
            if (c.count && ++seen >= *c.count) {
                done = true;
                ::kill(::getpid(), SIGUSR1);
            }
        },
        plexus::execution::inline_loop);
    for (const auto& ep : pubs) s.node->connect_events(ep);

    int sig = 0;
    for (;;) {
        if (c.timeout_ms) {
            const auto left = start + std::chrono::milliseconds(*c.timeout_ms) - std::chrono::steady_clock::now();
            if (left <= left.zero()) break;
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
            sig = ::sigtimedwait(&signals, nullptr, &ts);
        } else {
            sig = ::sigwaitinfo(&signals, nullptr);
        }
        if (sig > 0) break;
        if (errno == EAGAIN) break; // timeout
    }
    {
        std::lock_guard lock(mutex);
        done = true;
    }
    sub.cancel();
    s.node->stop(); // no handler runs past here: what it captured goes away next
    if (!c.count || seen >= *c.count) return exit_ok;
    throw status_error(sig == SIGINT || sig == SIGTERM ? plexus::code::cancelled : plexus::code::deadline_exceeded,
                       std::to_string(seen) + " of " + std::to_string(*c.count) + " events" +
                           (sig == SIGINT || sig == SIGTERM ? " before the signal"
                                                            : " within " + std::to_string(*c.timeout_ms) + " ms"));
}

int dispatch(cli& c) {
    if (c.command == "call") return cmd_call(c);
    if (c.command == "pub") return cmd_pub(c);
    if (c.command == "sub") return cmd_sub(c);
    if (c.command == "describe" || c.command == "ping" || c.command == "stats") return cmd_simple(c, c.command);
    throw usage_error("unknown command '" + c.command + "' (call, pub, sub, describe, ping, stats)");
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
