#include "common.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>
#include <numeric>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <zmq.h>

namespace bench {

sizes sizes_for(mode m) {
    sizes s;
    s.m = m;
    if (m == mode::quick) {
        s.latency_calls = 4000;
        s.latency_rounds = 2;
        s.pipelined_seconds = 0.4;
        s.pipelined_rounds = 1;
        s.pubsub_small = 200000;
        s.pubsub_large = 100000;
        s.pubsub_rounds = 1;
        s.codec_iterations = 100000;
        s.codec_batches = 3;
        s.idle_cpu_seconds = 2.0;
        s.discovery_starts = 5;
        s.failovers = 3;
    } else if (m == mode::smoke) {
        s.latency_calls = 200;
        s.latency_rounds = 1;
        s.pipelined_seconds = 0.05;
        s.pipelined_rounds = 1;
        s.pipelined_window = 100;
        s.pubsub_small = 5000;
        s.pubsub_large = 2000;
        s.pubsub_rounds = 1;
        s.codec_iterations = 2000;
        s.codec_batches = 1;
        s.idle_cpu_seconds = 0.2;
        s.discovery_starts = 2;
        s.failovers = 1;
    }
    return s;
}

std::string_view mode_name(mode m) {
    switch (m) {
    case mode::smoke: return "smoke";
    case mode::quick: return "quick";
    case mode::full: return "full";
    }
    return "?";
}

// ---------------------------------------------------------------- fixtures

plexus::node_options node_options_for(std::string name) {
    plexus::node_options o;
    o.name = std::move(name);
    o.log = plexus::log_level::warn;
    o.tracing = plexus::trace_mode::propagate;
    return o;
}

plexus::headers six_headers() {
    std::string token = "Bearer ";
    while (token.size() < 200) token += static_cast<char>('a' + token.size() % 26);
    return {
        {"user-id", "u-10293"},
        {"groups", "admin,ops"},
        {"authorization", token},
        {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"tenant", "acme-1"},
        {"request-id", "3f2a9c1e-7b4d-4e8a-9c1f-2d3e4f5a6b7c"},
    };
}

std::string body_of(std::size_t n) {
    std::string b(n, '\0');
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<char>('A' + i % 23);
    return b;
}

namespace {
// Widths as Plexus writes them: ids are a random 63-bit base plus a counter (a
// 9-byte uint64), a deadline of 5 s remaining is a 5-byte uint32.
constexpr std::uint64_t typical_id = (std::uint64_t{1} << 62) + 12345;
constexpr std::uint64_t typical_deadline_us = 4999000;
} // namespace

plexus::envelope_view request_view(const std::string& body, const plexus::headers* h) {
    plexus::envelope_view e;
    e.kind = plexus::kind::request;
    e.id = typical_id;
    e.service = service;
    e.method = method_inline;
    e.body = body;
    e.deadline_us = typical_deadline_us;
    if (h)
        for (auto& [k, v] : *h) e.headers.emplace_back(k, v);
    return e;
}

std::string to_hex(std::string_view bytes) {
    static constexpr char d[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += d[c >> 4];
        out += d[c & 15];
    }
    return out;
}

std::string from_hex(std::string_view hex) {
    auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        throw std::invalid_argument("not a hex digit");
    };
    if (hex.size() % 2) throw std::invalid_argument("odd-length hex");
    std::string out(hex.size() / 2, '\0');
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]));
    return out;
}

std::uint16_t free_udp_port() {
    const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY); // as the discovery listener binds
    socklen_t len = sizeof a;
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    const int err = errno;
    ::close(fd);
    if (!ok) throw std::system_error(err, std::generic_category(), "free UDP port");
    return ntohs(a.sin_port);
}

std::string unique_cluster(std::string_view what) {
    static std::atomic<int> n{0};
    return "bench-" + std::string(what) + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

plexus::discovery::beacon_options beacons(const std::string& cluster, std::uint16_t port) {
    plexus::discovery::beacon_options d;
    d.cluster = cluster;
    d.port = port;
    return d;
}

// ---------------------------------------------------------------- child processes

namespace {
std::string self_exe() {
    char buf[4096];
    const auto n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) throw std::system_error(errno, std::generic_category(), "readlink /proc/self/exe");
    return std::string(buf, static_cast<std::size_t>(n));
}

// The next whole line read from `fd` (bytes past it stay in `buf`), waiting until `end`:
// nullopt when none came in time, or when `fd` has ended (or failed): then `ended` is set.
std::optional<std::string> next_line(int fd, std::string& buf, clk::time_point end, bool& ended) {
    for (;;) {
        if (auto nl = buf.find('\n'); nl != std::string::npos) {
            std::string line = buf.substr(0, nl);
            buf.erase(0, nl + 1);
            return line;
        }
        if (ended) return std::nullopt;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - clk::now()).count();
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::max<long>(left, 0)));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return std::nullopt;
        char chunk[4096];
        const auto n = ::read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            ended = true;
        else
            buf.append(chunk, static_cast<std::size_t>(n));
    }
}
} // namespace

child child::spawn(const std::vector<std::string>& args) {
    int to_child[2], from_child[2];
    if (::pipe2(to_child, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    if (::pipe2(from_child, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    const std::string exe = self_exe();
    std::vector<std::string> all{exe};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) {
        // Only async-signal-safe calls between fork and exec (the parent has threads).
        ::dup2(to_child[0], 0);
        ::dup2(from_child[1], 1);
        ::execv(exe.c_str(), argv.data());
        ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    child c;
    c.pid_ = pid;
    c.in_ = to_child[1];
    c.out_ = from_child[0];
    return c;
}

child::child(child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), in_(std::exchange(o.in_, -1)), out_(std::exchange(o.out_, -1)),
      buf_(std::move(o.buf_)) {}

child& child::operator=(child&& o) noexcept {
    if (this != &o) {
        this->~child();
        pid_ = std::exchange(o.pid_, -1);
        in_ = std::exchange(o.in_, -1);
        out_ = std::exchange(o.out_, -1);
        buf_ = std::move(o.buf_);
    }
    return *this;
}

child::~child() {
    if (pid_ > 0) {
        close_stdin();
        wait(2000ms);
    }
    if (out_ >= 0) ::close(out_);
    out_ = -1;
}

std::optional<std::string> child::read_line(std::chrono::milliseconds timeout) {
    bool ended = out_ < 0;
    auto line = next_line(out_, buf_, clk::now() + timeout, ended);
    if (ended && out_ >= 0) {
        ::close(out_);
        out_ = -1;
    }
    return line;
}

std::string child::expect(std::string_view prefix, std::chrono::milliseconds timeout) {
    const auto end = clk::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - clk::now());
        auto line = read_line(std::max(left, 0ms));
        if (!line)
            throw std::runtime_error("child " + std::to_string(pid_) + " did not say '" + std::string(prefix) +
                                     "' in time");
        if (line->size() > prefix.size() && line->compare(0, prefix.size(), prefix) == 0 && (*line)[prefix.size()] == ' ')
            return line->substr(prefix.size() + 1);
        if (*line == prefix) return {};
        std::fprintf(stderr, "bench: child %d said: %s\n", static_cast<int>(pid_), line->c_str());
    }
}

void child::write_line(std::string_view line) {
    if (in_ < 0) return;
    std::string s(line);
    s += '\n';
    std::size_t off = 0;
    while (off < s.size()) {
        const auto n = ::write(in_, s.data() + off, s.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        off += static_cast<std::size_t>(n);
    }
}

void child::close_stdin() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
}

int child::wait(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return -1;
    const auto end = clk::now() + timeout;
    int st = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid_, &st, WNOHANG);
        if (r == pid_) break;
        if (r < 0 && errno != EINTR) {
            pid_ = -1;
            return -1;
        }
        if (clk::now() >= end) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &st, 0);
            pid_ = -1;
            return -1;
        }
        ::usleep(2000);
    }
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void say(std::string_view line) {
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

void wait_stdin_eof() {
    char buf[256];
    for (;;) {
        const auto n = ::read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
}

std::optional<std::string> poll_stdin_line(std::chrono::milliseconds timeout) {
    // Unbuffered on purpose: the parent writes whole lines and waits for an answer.
    static std::string buf;
    bool ended = false;
    auto line = next_line(0, buf, clk::now() + timeout, ended);
    if (!line && ended) return std::string("eof");
    return line;
}

// ---------------------------------------------------------------- measurements

percentiles percentiles_of(std::vector<double>& s) {
    percentiles p;
    p.n = s.size();
    if (s.empty()) return p;
    std::sort(s.begin(), s.end());
    auto at = [&](double q) {
        const auto i = static_cast<std::size_t>(q * static_cast<double>(s.size() - 1) + 0.5);
        return s[std::min(i, s.size() - 1)];
    };
    p.p50 = at(0.50);
    p.p99 = at(0.99);
    p.mean = std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
    return p;
}

double median_of(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double best_of(const std::vector<double>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }

long rss_kb() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    return -1;
}

double cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

double cpu_seconds(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')'); // the command name may hold spaces
    if (close == std::string::npos) return -1;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::string loadavg() {
    std::ifstream f("/proc/loadavg");
    std::string a, b, c;
    f >> a >> b >> c;
    return a + " " + b + " " + c;
}

machine_info machine() {
    machine_info m;
    char date[64];
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tm);
    m.date_utc = date;
    m.ncpu = static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN));
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            if (auto c = line.find(':'); c != std::string::npos) m.cpu_model = line.substr(c + 2);
            break;
        }
    utsname u{};
    if (::uname(&u) == 0) m.kernel = std::string(u.sysname) + " " + u.release;
    m.compiler = std::string("g++ ") + __VERSION__;
    int a, b, c;
    zmq_version(&a, &b, &c);
    m.libzmq = std::to_string(a) + "." + std::to_string(b) + "." + std::to_string(c);
    m.load = loadavg();
    return m;
}

// ---------------------------------------------------------------- the table

std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

std::string us(double v) { return v >= 100 ? fmt("%.0f us", v) : fmt("%.1f us", v); }

std::string rate(double v) {
    if (v >= 1e6) return fmt("%.2f M/s", v / 1e6);
    if (v >= 1e3) return fmt("%.0f k/s", v / 1e3);
    return fmt("%.0f /s", v);
}

std::string ratio_x(double v) { return fmt("%.2fx", v); }
std::string percent(double v) { return fmt("%.0f%%", v * 100); }

std::string verdict_at_most(double value, double limit) {
    if (value <= limit) return "met";
    return fmt("missed by %.0f%%", (value / limit - 1) * 100);
}

std::string verdict_at_least(double value, double limit) {
    if (value >= limit) return "met";
    return fmt("missed by %.0f%%", (1 - value / limit) * 100);
}

std::string render_table(const std::vector<row>& rows) {
    const char* head[] = {"#", "figure", "Plexus", "raw libzmq", "ratio", "target", "verdict"};
    std::vector<std::array<std::string, 7>> cells;
    cells.push_back({head[0], head[1], head[2], head[3], head[4], head[5], head[6]});
    for (auto& r : rows) cells.push_back({r.fig, r.what, r.plexus, r.raw, r.ratio, r.target, r.verdict});
    std::array<std::size_t, 7> w{};
    for (auto& c : cells)
        for (std::size_t i = 0; i < 7; ++i) w[i] = std::max(w[i], c[i].size());
    std::string out;
    auto line = [&](const std::array<std::string, 7>& c) {
        out += '|';
        for (std::size_t i = 0; i < 7; ++i) {
            out += ' ';
            out += c[i];
            out.append(w[i] - c[i].size() + 1, ' ');
            out += '|';
        }
        out += '\n';
    };
    line(cells[0]);
    out += '|';
    for (std::size_t i = 0; i < 7; ++i) {
        out.append(w[i] + 2, '-');
        out += '|';
    }
    out += '\n';
    for (std::size_t i = 1; i < cells.size(); ++i) line(cells[i]);
    return out;
}

} // namespace bench
