#include "demo.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <sys/prctl.h>
#include <unistd.h>

namespace demo {

namespace {

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

long to_long(const std::string& key, const std::string& v) {
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0) throw usage_error("--" + key + " wants an integer, not '" + v + "'");
    return n;
}

std::uint16_t to_port(const std::string& key, const std::string& v) {
    const long n = to_long(key, v);
    if (n < 0 || n > 65535) throw usage_error("--" + key + " must be a port number (0-65535)");
    return static_cast<std::uint16_t>(n);
}

void print_usage(const options& o, std::string_view about, const std::vector<extra_option>& extras) {
    std::cout << "Usage: " << o.program << " [OPTIONS]\n\n" << about << "\n\nOptions:\n"
              << "  --cluster NAME        discovery cluster (env PLEXUS_CLUSTER; default drone-delivery)\n"
              << "  --discovery-port N    shared UDP port of discovery on this host (env PLEXUS_DISCOVERY_PORT;\n"
              << "                        default 5690; 0 picks a free one, written to the ready file)\n"
              << "  --name NAME           node name (default " << o.role << ")\n"
              << "  --log-level LEVEL     trace|debug|info|warn|error|off (env PLEXUS_LOG_LEVEL; default info)\n"
              << "  --beacon-ms N         discovery beacon interval in ms (default 500)\n"
              << "  --ready-file PATH     write name, pid and endpoints there once serving\n"
              << "  --exit-with-parent    stop cleanly when the parent process dies\n";
    for (auto& e : extras) {
        std::string left = "  --" + e.name + (e.default_value == "false" ? "" : " V");
        if (left.size() < 24) left.resize(24, ' ');
        std::cout << left << e.help;
        if (!e.default_value.empty() && e.default_value != "false") std::cout << " (default " << e.default_value << ")";
        std::cout << "\n";
    }
    std::cout << "  --help                this help\n";
}

} // namespace

const std::string& options::get(const std::string& key) const {
    auto it = extra.find(key);
    if (it == extra.end()) throw std::logic_error("option --" + key + " was not declared");
    return it->second;
}
long options::get_long(const std::string& key) const { return to_long(key, get(key)); }
double options::get_double(const std::string& key) const {
    const auto& v = get(key);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') throw usage_error("--" + key + " wants a number, not '" + v + "'");
    return d;
}
bool options::get_flag(const std::string& key) const { return get(key) == "true"; }

options parse(int argc, char** argv, std::string role, std::string_view about, std::vector<extra_option> extras) {
    options o;
    o.program = argc > 0 ? argv[0] : role;
    if (auto slash = o.program.rfind('/'); slash != std::string::npos) o.program.erase(0, slash + 1);
    o.role = role;
    o.name = std::move(role);
    std::set<std::string> flags;
    for (auto& e : extras) {
        o.extra[e.name] = e.default_value;
        if (e.default_value == "false") flags.insert(e.name);
    }
    try {
        if (const char* v = std::getenv("PLEXUS_CLUSTER"); v && *v) o.cluster = v;
        if (const char* v = std::getenv("PLEXUS_DISCOVERY_PORT"); v && *v) o.discovery_port = to_port("discovery-port", v);
        if (const char* v = std::getenv("PLEXUS_LOG_LEVEL"); v && *v && !plexus::from_string(v, o.log))
            throw usage_error("PLEXUS_LOG_LEVEL must be trace|debug|info|warn|error|off");

        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i];
            if (arg == "--help" || arg == "-h") {
                print_usage(o, about, extras);
                std::exit(0);
            }
            if (arg.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + arg + "'");
            std::string key = arg.substr(2), value;
            bool has_value = false;
            if (auto eq = key.find('='); eq != std::string::npos) {
                value = key.substr(eq + 1);
                key.erase(eq);
                has_value = true;
            }
            const bool is_flag = key == "exit-with-parent" || flags.count(key);
            if (is_flag) {
                if (has_value) throw usage_error("--" + key + " takes no value");
                value = "true";
            } else if (!has_value) {
                if (i + 1 >= argc) throw usage_error("--" + key + " needs a value");
                value = argv[++i];
            }
            if (key == "cluster") {
                o.cluster = value;
            } else if (key == "discovery-port") {
                o.discovery_port = to_port(key, value);
            } else if (key == "name") {
                o.name = value;
            } else if (key == "log-level") {
                if (!plexus::from_string(value, o.log)) throw usage_error("--log-level must be trace|debug|info|warn|error|off");
            } else if (key == "beacon-ms") {
                const long ms = to_long(key, value);
                if (ms < 10 || ms > 60000) throw usage_error("--beacon-ms must be within 10..60000");
                o.beacon_interval = std::chrono::milliseconds(ms);
            } else if (key == "ready-file") {
                o.ready_file = value;
            } else if (key == "exit-with-parent") {
                o.exit_with_parent = true;
            } else if (o.extra.count(key)) {
                o.extra[key] = value;
            } else {
                throw usage_error("unknown option --" + key + " (see --help)");
            }
        }
        if (o.exit_with_parent) {
            // The script that started us may be killed without a chance to clean up
            // (a CTest timeout): then we get SIGTERM, as if it had asked us to stop.
            const pid_t parent = ::getppid();
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::raise(SIGTERM); // it died before prctl
        }
        if (o.name.empty()) throw usage_error("--name must not be empty");
        if (o.cluster.empty()) throw usage_error("--cluster must not be empty");
    } catch (const usage_error& e) {
        std::cerr << o.program << ": " << e.what() << "\n";
        std::exit(2);
    }
    return o;
}

plexus::node_options node_options(const options& o) {
    plexus::node_options n;
    n.name = o.name;
    n.bind = {"tcp://127.0.0.1:*"};
    n.pub_bind = {"tcp://127.0.0.1:*"};
    n.log = o.log;
    n.default_timeout = std::chrono::milliseconds(5000);
    n.shutdown_timeout = std::chrono::milliseconds(2000);
    plexus::discovery::beacon_options d;
    d.cluster = o.cluster;
    d.port = o.discovery_port;
    d.interval = o.beacon_interval;
    n.discovery = d;
    return n;
}

namespace {
sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}
} // namespace

void block_stop_signals() {
    const sigset_t set = stop_signals();
    if (int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr); rc != 0)
        throw std::runtime_error(std::string("pthread_sigmask: ") + std::strerror(rc));
}

int wait_for_stop_signal() {
    const sigset_t set = stop_signals();
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    return sig;
}

void write_ready_file(const options& o, const plexus::node& n) {
    if (o.ready_file.empty()) return;
    std::ostringstream s;
    s << "name=" << o.name << "\nrole=" << o.role << "\npid=" << ::getpid() << "\n";
    s << "rpc=" << first_endpoint(n.endpoints()) << "\npub=" << first_endpoint(n.pub_endpoints()) << "\n";
    s << "cluster=" << o.cluster << "\ndiscovery_port=" << n.discovery_port() << "\n";
    const std::string tmp = o.ready_file + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc);
        f << s.str();
        f.flush();
        if (!f) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), o.ready_file.c_str()) != 0)
        throw std::runtime_error("cannot rename " + tmp + " to " + o.ready_file + ": " + std::strerror(errno));
}

std::map<std::string, std::string> read_ready_file(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot read " + path);
    std::map<std::string, std::string> out;
    std::string line;
    while (std::getline(f, line))
        if (auto eq = line.find('='); eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
    return out;
}

std::string first_endpoint(const std::vector<std::string>& endpoints) { return endpoints.empty() ? "" : endpoints.front(); }

std::string current_user() {
    auto* c = plexus::context::current();
    return c ? std::string(c->headers.get_or(plexus::header_key::user_id, "-")) : "-";
}

void log_request(const plexus::node& n, std::string_view service, std::string_view method, const plexus::headers& extra,
                 plexus::log_level level) {
    plexus::headers f{{"service", std::string(service)}, {"method", std::string(method)}, {"user-id", current_user()}};
    for (auto& [k, v] : extra) f.set(k, v);
    n.log(level, "request", f);
}

int run_service(int argc, char** argv, std::string role, std::string_view about, std::vector<extra_option> extras,
                const std::function<service_hooks(const options&)>& make) {
    const std::string who = role;
    try {
        block_stop_signals();
        const options o = parse(argc, argv, std::move(role), about, std::move(extras));
        service_hooks hooks = make(o);
        plexus::node node(node_options(o));
        if (hooks.setup) hooks.setup(node);
        node.start();
        if (hooks.started) hooks.started(node);
        write_ready_file(o, node);
        node.log(plexus::log_level::info, "ready",
                 {{"role", o.role}, {"rpc", first_endpoint(node.endpoints())}, {"cluster", o.cluster},
                  {"discovery_port", std::to_string(node.discovery_port())}});
        const int sig = wait_for_stop_signal();
        node.log(plexus::log_level::info, "stopping", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
        if (hooks.stopping) hooks.stopping();
        node.stop();
        return 0;
    } catch (const std::exception& e) {
        std::cerr << who << ": " << e.what() << "\n";
        return 1;
    }
}

} // namespace demo
