// Shared pieces of the Plexus benchmarks: fixtures (the same bytes for Plexus and
// the raw libzmq baselines), child processes, statistics, machine facts, the table.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <plexus/envelope.hpp>
#include <plexus/headers.hpp>
#include <plexus/node.hpp>

namespace bench {

using clk = std::chrono::steady_clock;
using namespace std::chrono_literals;

// steady_clock is CLOCK_MONOTONIC on Linux: comparable between processes of one host.
inline std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now().time_since_epoch()).count();
}

// Keeps the compiler from optimising a benchmarked value away.
template <class T>
inline void keep(const T& v) {
    asm volatile("" : : "g"(&v) : "memory");
}

// ---------------------------------------------------------------- run sizes

enum class mode { smoke, quick, full };

struct sizes {
    mode m = mode::full;
    int latency_calls = 20000;       // per row, split in rounds alternating raw and Plexus
    int latency_rounds = 4;
    double pipelined_seconds = 1.5;  // per row and round
    int pipelined_rounds = 2;
    int pipelined_window = 1000;
    int pubsub_small = 1000000;      // events of 64 B per row
    int pubsub_large = 400000;       // events of 1 KiB per row
    int pubsub_rounds = 2;
    int codec_iterations = 200000;   // per batch
    int codec_batches = 7;
    double idle_cpu_seconds = 10.0;
    int discovery_starts = 20;       // start -> first call by name, per row
    int failovers = 10;              // SIGKILL -> failover
};
sizes sizes_for(mode m);
std::string_view mode_name(mode m);

// ---------------------------------------------------------------- fixtures

inline constexpr std::string_view service = "bench";
inline constexpr std::string_view method_inline = "echo";
inline constexpr std::string_view method_pool = "echo_pool";
inline constexpr std::string_view topic = "b";      // measured events
inline constexpr std::string_view warm_topic = "w"; // slow-joiner handshake

// Options of every Plexus node in the bench: warnings only, and tracing that carries
// a trace on but starts none (trace_mode::propagate), so that "no headers" means an
// envelope without headers; messages with the six headers carry a traceparent and get
// a span per hop as with the default (trace_mode::start).
plexus::node_options node_options_for(std::string name);

// The six context headers of the issue, one of them a 200-character token.
plexus::headers six_headers();
std::string body_of(std::size_t n);

// A request envelope as a Plexus client writes one (a 63-bit id, a 5 s remaining
// deadline, the given headers and body), for the codec figure.
plexus::envelope_view request_view(const std::string& body, const plexus::headers* h);

std::string to_hex(std::string_view bytes);
std::string from_hex(std::string_view hex);

// Discovery without crosstalk: a UDP port free right now (bound to port 0 and read
// back) and a cluster name of this process alone, so that two runs on one host (or
// the test suite beside a benchmark) never see each other's nodes.
std::uint16_t free_udp_port();
std::string unique_cluster(std::string_view what);
// Beacons of `cluster` on UDP `port`, at the default interval (1 s) and target
// (127.255.255.255: this host only).
plexus::discovery::beacon_options beacons(const std::string& cluster, std::uint16_t port);

// ---------------------------------------------------------------- child processes

// This executable run again with other arguments (a role), its stdin and stdout on
// pipes. Lines in both directions are the protocol; stderr is inherited. The
// destructor kills a child still running.
class child {
public:
    static child spawn(const std::vector<std::string>& args);
    child() = default;
    child(child&& o) noexcept;
    child& operator=(child&& o) noexcept;
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child();

    // The next line without its newline; nullopt on timeout or end of output.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout);
    // Reads lines until one starts with `prefix ` and returns the rest; throws on timeout.
    std::string expect(std::string_view prefix, std::chrono::milliseconds timeout);
    void write_line(std::string_view line);
    void close_stdin();
    // Waits for the exit (SIGKILL after `timeout`); returns the exit status or -1.
    int wait(std::chrono::milliseconds timeout);
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

private:
    pid_t pid_ = -1;
    int in_ = -1, out_ = -1;
    std::string buf_;
};

// Child side: one line on stdout, flushed.
void say(std::string_view line);
// Child side: blocks until stdin reaches end of file (the parent closed it or died).
void wait_stdin_eof();
// Child side: the next line on stdin, waiting at most `timeout` (nullopt: none yet).
std::optional<std::string> poll_stdin_line(std::chrono::milliseconds timeout);

// ---------------------------------------------------------------- measurements

struct percentiles {
    double p50 = 0, p99 = 0, mean = 0;
    std::size_t n = 0;
};
percentiles percentiles_of(std::vector<double>& samples); // sorts samples
double median_of(std::vector<double> v);
double best_of(const std::vector<double>& v);

long rss_kb();          // VmRSS of this process
double cpu_seconds();   // user + system time of this process
double cpu_seconds(pid_t pid); // of another process (10 ms resolution), -1 when unknown

struct machine_info {
    std::string date_utc, cpu_model, kernel, compiler, libzmq;
    unsigned ncpu = 0;
    std::string load;   // /proc/loadavg, first three fields
};
machine_info machine();
std::string loadavg();

// ---------------------------------------------------------------- the table

struct row {
    std::string fig, what, plexus, raw, ratio, target, verdict;
};

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string us(double v);       // "87.3 us"
std::string rate(double v);     // "1.23 M/s", "670 k/s"
std::string ratio_x(double v);  // "1.14x"
std::string percent(double v);  // "83%"

// "met" / "missed by N%": a value that must be at most / at least `limit`.
std::string verdict_at_most(double value, double limit);
std::string verdict_at_least(double value, double limit);

std::string render_table(const std::vector<row>& rows);

} // namespace bench
