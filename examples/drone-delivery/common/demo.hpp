// What every drone-delivery executable shares: its command line, the node options
// (discovery on this host, free loopback ports), the ready file, a clean stop on
// SIGINT/SIGTERM, and the one log line per request. Nothing here is needed to use
// Plexus; it keeps each service's main() about its service.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <plexus/node.hpp>

namespace demo {

struct extra_option {
    std::string name;          // without the leading "--"
    std::string default_value; // "" for none; a flag takes "false"
    std::string help;
};

struct options {
    std::string program;
    std::string role;     // what the executable is: "scheduler", "delivery", ...
    std::string name;     // --name: the node's (and beacon's) name; default: the role
    std::string cluster = "drone-delivery";
    std::uint16_t discovery_port = plexus::discovery::default_port;
    std::chrono::milliseconds beacon_interval{500};
    plexus::log_level log = plexus::log_level::info;
    std::string ready_file;
    bool exit_with_parent = false;
    std::map<std::string, std::string> extra;

    [[nodiscard]] const std::string& get(const std::string& key) const;
    [[nodiscard]] long get_long(const std::string& key) const;
    [[nodiscard]] double get_double(const std::string& key) const;
    [[nodiscard]] bool get_flag(const std::string& key) const;
};

// Parses the command line:
//   --cluster NAME        env PLEXUS_CLUSTER, default "drone-delivery"
//   --discovery-port N    env PLEXUS_DISCOVERY_PORT, default 5690; 0 picks a free one
//                         (written to the ready file, for the others to use)
//   --name NAME           default: the role
//   --log-level LEVEL     env PLEXUS_LOG_LEVEL: trace|debug|info|warn|error|off
//   --beacon-ms N         discovery beacon interval (default 500)
//   --ready-file PATH     written once the node serves (see write_ready_file)
//   --exit-with-parent    get SIGTERM when the parent process dies (a service stops
//                         cleanly; the client ends)
// and the extras given, each "--key value" or "--key=value". On --help prints usage
// and exits 0; on a bad option prints why and exits 2.
[[nodiscard]] options parse(int argc, char** argv, std::string role, std::string_view about,
                            std::vector<extra_option> extras = {});

// A node on loopback (tcp://127.0.0.1:*, RPC and events) with discovery on this host.
[[nodiscard]] plexus::node_options node_options(const options& o);

// Runs a service: blocks SIGINT and SIGTERM (before any thread exists, so every
// thread inherits the mask), builds the node, lets `setup` declare services, starts
// it, lets `started` subscribe and start its own threads, writes the ready file, waits
// for SIGINT or SIGTERM, calls `stopping` (end the service's own threads: they may
// publish) and stops the node. Returns the exit code: 0 after a clean stop, 1 when
// anything threw (the error on stderr).
struct service_hooks {
    std::function<void(plexus::node&)> setup;
    std::function<void(plexus::node&)> started{};
    std::function<void()> stopping{};
};
[[nodiscard]] int run_service(int argc, char** argv, std::string role, std::string_view about,
                              std::vector<extra_option> extras, const std::function<service_hooks(const options&)>& make);

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later).
void block_stop_signals();
// Waits for SIGINT or SIGTERM, which block_stop_signals() blocked; returns which.
int wait_for_stop_signal();

// The ready file: one "key=value" per line, written atomically (temporary + rename):
// name, role, pid, rpc, pub, cluster, discovery_port. Readable by a script
// (`sed -n 's/^rpc=//p' FILE`) and by read_ready_file().
void write_ready_file(const options& o, const plexus::node& n);
[[nodiscard]] std::map<std::string, std::string> read_ready_file(const std::string& path);

// The one line each handler writes per request (or event it acts on): service,
// method and the user-id of the context that came with it. The node adds trace_id
// and span_id; nothing here passes them on.
// Introspection methods polled in a loop log at debug.
void log_request(const plexus::node& n, std::string_view service, std::string_view method,
                 const plexus::headers& extra = {}, plexus::log_level level = plexus::log_level::info);

// The first of a node's endpoints (the one a node on loopback has), "" if none.
[[nodiscard]] std::string first_endpoint(const std::vector<std::string>& endpoints);

// The user-id of the current context ("-" outside any, or without one).
[[nodiscard]] std::string current_user();

// Calls made by handlers to other services: bounded well under the client's timeout.
inline constexpr std::chrono::milliseconds nested_call_timeout{3000};

} // namespace demo
