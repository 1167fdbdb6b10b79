// [process]: plexus-node and the plexus CLI as real processes, as a user or a script
// drives them. Every child is waited for with a bound and killed when the bound
// passes; none outlives its test (and PR_SET_PDEATHSIG kills it if this process dies).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <future>
#include <plexus/node.hpp>

#include "netns.hpp"
#include "testutil.hpp"

extern char** environ;

namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;
using steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

const std::string node_exe = PLEXUS_NODE_EXE;
const std::string cli_exe = PLEXUS_CLI_EXE;

// --- processes ------------------------------------------------------------------------

using env_list = std::vector<std::pair<std::string, std::string>>;

// A child process with its stdout (and stderr, unless sent to a file) on pipes that
// the waiting functions drain, so a chatty child never blocks on a full pipe.
class child {
public:
    struct options {
        // Added to this process' environment, minus its PLEXUS_* variables, after
        // PLEXUS_DISCOVERY=off (no test beacons on the default port unless it says so);
        // a later entry for the same variable replaces an earlier one.
        env_list env;
        std::optional<std::string> stdin_data; // default: /dev/null
        std::string stderr_file;            // default: a pipe
    };

    child(const std::vector<std::string>& argv, const options& opt) {
        int out[2], err[2] = {-1, -1}, in[2] = {-1, -1};
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        if (opt.stderr_file.empty()) REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
        if (opt.stdin_data) REQUIRE(::pipe2(in, O_CLOEXEC) == 0);

        // Everything the child needs is built before fork: after it, only async-signal-safe calls.
        std::vector<std::string> env_strings;
        for (char** e = environ; *e; ++e)
            if (std::strncmp(*e, "PLEXUS_", 7) != 0) env_strings.emplace_back(*e);
        env_list vars{{"PLEXUS_DISCOVERY", "off"}};
        for (const auto& [k, v] : opt.env) {
            std::erase_if(vars, [&k = k](const auto& kv) { return kv.first == k; });
            vars.emplace_back(k, v);
        }
        for (const auto& [k, v] : vars) env_strings.push_back(k + "=" + v);
        std::vector<char*> envp, args;
        for (auto& s : env_strings) envp.push_back(s.data());
        envp.push_back(nullptr);
        std::vector<std::string> argv_copy = argv;
        for (auto& s : argv_copy) args.push_back(s.data());
        args.push_back(nullptr);
        const pid_t parent = ::getpid();

        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            int null_fd = ::open("/dev/null", O_RDONLY);
            ::dup2(opt.stdin_data ? in[0] : null_fd, 0);
            ::dup2(out[1], 1);
            if (opt.stderr_file.empty()) {
                ::dup2(err[1], 2);
            } else {
                int f = ::open(opt.stderr_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
                ::dup2(f, 2);
            }
            ::execve(args[0], args.data(), envp.data());
            ::_exit(127);
        }
        ::close(out[1]);
        out_fd_ = out[0];
        if (err[1] >= 0) {
            ::close(err[1]);
            err_fd_ = err[0];
        }
        if (opt.stdin_data) {
            ::close(in[0]);
            // Small inputs only: they fit in the pipe buffer, so this cannot block.
            const auto& d = *opt.stdin_data;
            REQUIRE(d.size() < 60000);
            REQUIRE(::write(in[1], d.data(), d.size()) == static_cast<ssize_t>(d.size()));
            ::close(in[1]);
        }
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    ~child() {
        if (running()) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (out_fd_ >= 0) ::close(out_fd_);
        if (err_fd_ >= 0) ::close(err_fd_);
    }

    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] bool running() const { return !status_; }
    void signal(int sig) const {
        if (!status_) ::kill(pid_, sig);
    }

    // Waits for the exit (and the end of its output) within `bound`. Returns the exit
    // code (128 + signal when killed by one), or nullopt after killing it when the
    // bound passed.
    std::optional<int> wait(ms bound) {
        const auto deadline = steady::now() + bound;
        for (;;) {
            reap();
            if (status_) {
                // Exited: drain what is left in the pipes (EOF follows at once).
                while ((out_fd_ >= 0 || err_fd_ >= 0) && steady::now() < deadline) pump(50);
                return code();
            }
            const auto left = std::chrono::duration_cast<ms>(deadline - steady::now());
            if (left.count() <= 0) break;
            // Short slices: the exit itself is noticed by waitpid, not by poll.
            pump(std::min<long>(left.count(), 10));
        }
        ::kill(pid_, SIGKILL);
        int st = 0;
        ::waitpid(pid_, &st, 0);
        status_ = st;
        return std::nullopt;
    }

    [[nodiscard]] bool exited() {
        reap();
        return status_.has_value();
    }

    // Waits within `bound` for a stdout line (not seen by an earlier call) for which
    // `pred` holds; returns it.
    std::optional<std::string> wait_line(const std::function<bool(const std::string&)>& pred, ms bound) {
        const auto deadline = steady::now() + bound;
        for (;;) {
            std::size_t nl;
            while ((nl = out.find('\n', line_pos_)) != std::string::npos) {
                std::string line = out.substr(line_pos_, nl - line_pos_);
                line_pos_ = nl + 1;
                if (pred(line)) return line;
            }
            const auto left = std::chrono::duration_cast<ms>(deadline - steady::now());
            if (left.count() <= 0 || (out_fd_ < 0 && status_)) return std::nullopt;
            pump(std::min<long>(left.count(), 50));
            reap();
        }
    }

    std::string out, err;

private:
    void reap() {
        if (status_) return;
        int st = 0;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    }
    [[nodiscard]] int code() const {
        return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : 128 + WTERMSIG(*status_);
    }
    void pump(long timeout_ms) {
        pollfd fds[2];
        int n = 0;
        if (out_fd_ >= 0) fds[n++] = {out_fd_, POLLIN, 0};
        if (err_fd_ >= 0) fds[n++] = {err_fd_, POLLIN, 0};
        if (n == 0) {
            if (timeout_ms > 0) std::this_thread::sleep_for(ms(std::min<long>(timeout_ms, 10)));
            return;
        }
        if (::poll(fds, static_cast<nfds_t>(n), static_cast<int>(timeout_ms)) <= 0) return;
        for (int i = 0; i < n; ++i) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
            int& fd = fds[i].fd == out_fd_ ? out_fd_ : err_fd_;
            std::string& sink = fds[i].fd == out_fd_ ? out : err;
            if (got > 0) {
                sink.append(buf, static_cast<std::size_t>(got));
            } else if (got == 0 || errno != EINTR) {
                ::close(fd);
                fd = -1;
            }
        }
    }

    pid_t pid_ = -1;
    int out_fd_ = -1, err_fd_ = -1;
    std::optional<int> status_;
    std::size_t line_pos_ = 0;
};

struct result {
    int code = -1;
    std::string out, err;
    ms elapsed{0};

    [[nodiscard]] json out_json() const {
        INFO("stdout: " << out << "\nstderr: " << err);
        REQUIRE(json::accept(out));
        return json::parse(out);
    }
    [[nodiscard]] std::vector<std::string> err_lines() const {
        std::vector<std::string> lines;
        std::istringstream in(err);
        for (std::string l; std::getline(in, l);) lines.push_back(l);
        return lines;
    }
};

// Runs the CLI to completion; a hang fails the test after `bound`.
result plexus_cli(std::vector<std::string> args, ms bound = 10s, std::optional<std::string> stdin_data = {},
                  env_list env = {}, std::vector<std::string> wrapper = {}) {
    args.insert(args.begin(), cli_exe);
    args.insert(args.begin(), wrapper.begin(), wrapper.end());
    const auto t0 = steady::now();
    child c(args, {.env = std::move(env), .stdin_data = std::move(stdin_data), .stderr_file = {}});
    auto code = c.wait(bound);
    result r;
    r.elapsed = std::chrono::duration_cast<ms>(steady::now() - t0);
    r.out = c.out;
    r.err = c.err;
    std::string cmd;
    for (const auto& a : args) cmd += a + ' ';
    INFO("command: " << cmd << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(code.has_value()); // else: hung, killed
    r.code = *code;
    return r;
}

// --- files ---------------------------------------------------------------------------------

class temp_dir {
public:
    temp_dir() {
        std::string tmpl = (fs::temp_directory_path() / "plexus-process-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path_ = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    [[nodiscard]] std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    fs::path path_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// --- a plexus-node under test ---------------------------------------------------------------

class node_process {
public:
    // `wrapper` goes before the executable (e.g. {"ip", "netns", "exec", NS}).
    node_process(const temp_dir& dir, const std::string& name, std::vector<std::string> extra = {}, env_list env = {},
                 bool with_name = true, std::vector<std::string> wrapper = {})
        : ready_path_(dir.file(name + ".ready")), log_path_(dir.file(name + ".log")) {
        std::vector<std::string> argv = wrapper;
        argv.insert(argv.end(), {node_exe, "--ready-file", ready_path_});
        if (with_name) argv.insert(argv.end(), {"--name", name});
        argv.insert(argv.end(), extra.begin(), extra.end());
        proc_.emplace(argv, child::options{.env = std::move(env), .stdin_data = {}, .stderr_file = log_path_});
        // The ready file appears (renamed into place, so complete) once the node serves.
        const auto deadline = steady::now() + 10s;
        bool exited = false;
        // Polling a file: there is no event to wait on. Bounded, and the child's exit ends it.
        while (!fs::exists(ready_path_) && !(exited = proc_->exited()) && steady::now() < deadline)
            std::this_thread::sleep_for(10ms);
        INFO("node log:\n" << log());
        REQUIRE_FALSE(exited); // it must not exit before it is ready
        REQUIRE(fs::exists(ready_path_));
        const std::string text = read_file(ready_path_);
        INFO("ready file: " << text);
        REQUIRE(json::accept(text));
        ready = json::parse(text);
        REQUIRE(ready["rpc"].is_array());
        REQUIRE(!ready["rpc"].empty());
        rpc = ready["rpc"][0].get<std::string>();
        if (!ready["pub"].empty()) pub = ready["pub"][0].get<std::string>();
    }

    [[nodiscard]] std::string log() const { return read_file(log_path_); }
    [[nodiscard]] const std::string& ready_path() const { return ready_path_; }
    child& proc() { return *proc_; }

    // Signals the node and waits (bounded) for its exit code.
    std::optional<int> stop(int sig = SIGTERM, ms bound = 5s) {
        proc_->signal(sig);
        return proc_->wait(bound);
    }

    json ready;
    std::string rpc, pub;

private:
    std::string ready_path_, log_path_;
    std::optional<child> proc_;
};

std::optional<int> exit_of(const std::vector<std::string>& node_args, ms bound = 5s) {
    std::vector<std::string> argv{node_exe};
    argv.insert(argv.end(), node_args.begin(), node_args.end());
    child c(argv, {});
    return c.wait(bound);
}

bool has(const json& arr, const std::string& key, const std::string& value) {
    return arr.is_array() && std::any_of(arr.begin(), arr.end(), [&](const json& e) {
               return e.is_object() && e.contains(key) && e[key] == value;
           });
}


// --- HTTP over a raw TCP socket (the metrics endpoint) ----------------------------------

// Owns a file descriptor.
struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

// Connects to 127.0.0.1:port within `bound`: the connected descriptor, or -errno.
int tcp_connect(int port, ms bound = 5s) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int err = 0;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, static_cast<int>(bound.count())) == 1) {
                socklen_t len = sizeof err;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            } else {
                err = ETIMEDOUT;
            }
        }
    }
    if (err != 0) {
        ::close(fd);
        return -err;
    }
    return fd;
}

// Sends `bytes` to 127.0.0.1:port, then reads until the end of an HTTP head (or the
// peer closes, or `bound` passes); returns what came back.
std::string tcp_exchange(int port, const std::string& bytes, ms bound = 5s) {
    const auto deadline = steady::now() + bound;
    const int fd = tcp_connect(port, bound);
    REQUIRE(fd >= 0);
    fd_guard guard(fd);
    // Small inputs only: they fit in the socket buffer.
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    std::string got;
    for (;;) {
        const auto left = std::chrono::duration_cast<ms>(deadline - steady::now()).count();
        if (left <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) != 1) continue;
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) break;
        if (n > 0) got.append(buf, static_cast<std::size_t>(n));
        if (got.find("\r\n\r\n") != std::string::npos) break;
    }
    return got;
}

struct url_parts {
    std::string host;
    int port = 0;
    std::string path;
};

url_parts split_url(const std::string& url) {
    INFO("url: " << url);
    REQUIRE(url.rfind("http://", 0) == 0);
    const auto slash = url.find('/', 7);
    REQUIRE(slash != std::string::npos);
    const std::string hostport = url.substr(7, slash - 7);
    const auto colon = hostport.rfind(':');
    REQUIRE(colon != std::string::npos);
    url_parts u{hostport.substr(0, colon), 0, url.substr(slash)};
    const std::string port = hostport.substr(colon + 1);
    REQUIRE(!port.empty());
    REQUIRE(port.find_first_not_of("0123456789") == std::string::npos);
    u.port = std::stoi(port);
    return u;
}

struct http_reply {
    int status = 0;
    std::map<std::string, std::string> headers; // names in lower case
    std::string body;
};

// One HTTP/1.1 GET to 127.0.0.1 (Connection: close), read to EOF, everything within `bound`.
http_reply http_get(const std::string& url, ms bound = 5s) {
    const url_parts u = split_url(url);
    REQUIRE(u.host == "127.0.0.1");
    const auto deadline = steady::now() + bound;
    const int fd = tcp_connect(u.port, bound);
    INFO("connect to port " << u.port << ": " << (fd < 0 ? std::strerror(-fd) : "ok"));
    REQUIRE(fd >= 0);
    fd_guard guard(fd);

    const std::string request = "GET " + u.path + " HTTP/1.1\r\nHost: " + u.host + ":" + std::to_string(u.port) +
                                "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n";
    for (std::size_t sent = 0; sent < request.size();) {
        pollfd p{fd, POLLOUT, 0};
        REQUIRE(::poll(&p, 1, static_cast<int>(std::max<long>(0, std::chrono::duration_cast<ms>(deadline - steady::now()).count()))) == 1);
        const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        REQUIRE((n > 0 || errno == EAGAIN || errno == EINTR));
        if (n > 0) sent += static_cast<std::size_t>(n);
    }
    std::string raw;
    for (;;) {
        const auto left = std::chrono::duration_cast<ms>(deadline - steady::now()).count();
        INFO("received so far: " << raw);
        REQUIRE(left > 0); // else: no end of the reply within the bound
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) != 1) continue;
        char buf[8192];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0) {
            REQUIRE((errno == EAGAIN || errno == EINTR));
            continue;
        }
        raw.append(buf, static_cast<std::size_t>(n));
    }

    INFO("reply: " << raw.substr(0, 2000));
    const auto head_end = raw.find("\r\n\r\n");
    REQUIRE(head_end != std::string::npos);
    http_reply r;
    std::istringstream head(raw.substr(0, head_end));
    std::string status_line;
    std::getline(head, status_line);
    REQUIRE(status_line.rfind("HTTP/1.1 ", 0) == 0);
    r.status = std::stoi(status_line.substr(9, 3));
    for (std::string line; std::getline(head, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto colon = line.find(':');
        REQUIRE(colon != std::string::npos);
        std::string name = line.substr(0, colon);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        r.headers[name] = value;
    }
    REQUIRE(r.headers.count("transfer-encoding") == 0); // the server sends a length; no chunk decoding here
    r.body = raw.substr(head_end + 4);
    if (r.headers.count("content-length")) CHECK(std::stoul(r.headers["content-length"]) == r.body.size());
    return r;
}

// --- Prometheus text exposition format 0.0.4 ---------------------------------------------

struct sample {
    std::string name;
    std::map<std::string, std::string> labels;
    std::string value_text;
    double value = 0;
};

struct exposition {
    std::vector<sample> samples;
    std::map<std::string, std::string> types; // family -> counter|gauge|histogram|...
};

bool metric_name_char(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

// One sample line: name{label="value",...} value [timestamp]. nullopt when it is not one.
std::optional<sample> parse_sample(const std::string& line) {
    sample s;
    std::size_t i = 0;
    while (i < line.size() && metric_name_char(line[i], i == 0)) ++i;
    if (i == 0) return std::nullopt;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
        ++i;
        while (i < line.size() && line[i] != '}') {
            const std::size_t start = i;
            while (i < line.size() && metric_name_char(line[i], i == start) && line[i] != ':') ++i;
            if (i == start || line.compare(i, 2, "=\"") != 0) return std::nullopt;
            const std::string key = line.substr(start, i - start);
            i += 2;
            std::string value;
            for (;; ++i) {
                if (i >= line.size()) return std::nullopt;
                if (line[i] == '"') break;
                if (line[i] == '\\') {
                    if (++i >= line.size()) return std::nullopt;
                    if (line[i] == 'n')
                        value += '\n';
                    else if (line[i] == '\\' || line[i] == '"')
                        value += line[i];
                    else
                        return std::nullopt;
                } else {
                    value += line[i];
                }
            }
            ++i; // closing quote
            if (!s.labels.emplace(key, value).second) return std::nullopt; // a label twice
            if (i < line.size() && line[i] == ',') ++i;
            else if (i >= line.size() || line[i] != '}') return std::nullopt;
        }
        if (i >= line.size()) return std::nullopt;
        ++i; // '}'
    }
    if (i >= line.size() || line[i] != ' ') return std::nullopt;
    ++i;
    const auto end = line.find(' ', i);
    s.value_text = line.substr(i, end == std::string::npos ? std::string::npos : end - i);
    if (s.value_text == "+Inf" || s.value_text == "-Inf" || s.value_text == "NaN") {
        s.value = s.value_text == "NaN" ? std::nan("") : s.value_text == "+Inf" ? HUGE_VAL : -HUGE_VAL;
    } else {
        if (s.value_text.empty()) return std::nullopt;
        char* stop = nullptr;
        s.value = std::strtod(s.value_text.c_str(), &stop);
        if (*stop != '\0' || !std::isfinite(s.value)) return std::nullopt;
    }
    if (end != std::string::npos) { // a timestamp: an integer (ms)
        const std::string ts = line.substr(end + 1);
        if (ts.empty() || ts.find_first_not_of("-0123456789") != std::string::npos) return std::nullopt;
    }
    return s;
}

// The family a sample belongs to: histograms' _bucket, _sum and _count are the family's.
std::string family_of(const exposition& e, const std::string& name) {
    for (std::string suffix : {"_bucket", "_sum", "_count"})
        if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
            const std::string base = name.substr(0, name.size() - suffix.size());
            if (auto t = e.types.find(base); t != e.types.end() && (t->second == "histogram" || t->second == "summary"))
                return base;
        }
    return name;
}

// Parses the whole text; every line must be a comment or a sample of a family whose
// TYPE came before, and no sample (name and labels) may appear twice.
exposition parse_exposition(const std::string& text) {
    exposition e;
    REQUIRE(!text.empty());
    CHECK(text.back() == '\n');
    std::set<std::string> seen_families, seen_samples;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        INFO("line: " << line);
        CHECK(line.find('\r') == std::string::npos);
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::istringstream words(line.substr(1));
            std::string kind, name, rest;
            words >> kind >> name;
            if (kind == "TYPE") {
                words >> rest;
                CHECK((rest == "counter" || rest == "gauge" || rest == "histogram" || rest == "summary" || rest == "untyped"));
                CHECK(e.types.count(name) == 0);        // one TYPE per family
                CHECK(seen_families.count(name) == 0);  // and before its samples
                e.types[name] = rest;
            } else if (kind == "HELP") {
                CHECK(!name.empty());
            }
            continue;
        }
        auto s = parse_sample(line);
        REQUIRE(s.has_value());
        const std::string family = family_of(e, s->name);
        CHECK(e.types.count(family) == 1);
        seen_families.insert(family);
        std::string key = s->name;
        for (const auto& [k, v] : s->labels) key += "|" + k + "=" + v;
        CHECK(seen_samples.insert(key).second);
        e.samples.push_back(std::move(*s));
    }
    return e;
}

// The samples called `name` whose labels include all of `labels`.
std::vector<sample> samples_of(const exposition& e, const std::string& name, const std::map<std::string, std::string>& labels) {
    std::vector<sample> out;
    for (const auto& s : e.samples) {
        if (s.name != name) continue;
        bool all = true;
        for (const auto& [k, v] : labels) {
            auto it = s.labels.find(k);
            all = all && it != s.labels.end() && it->second == v;
        }
        if (all) out.push_back(s);
    }
    return out;
}

// The value of the one sample `name` with `labels`; fails unless exactly one matches.
double value_of(const exposition& e, const std::string& name, const std::map<std::string, std::string>& labels) {
    const auto found = samples_of(e, name, labels);
    std::string want = name;
    for (const auto& [k, v] : labels) want += " " + k + "=" + v;
    INFO("sample " << want);
    REQUIRE(found.size() == 1);
    return found[0].value;
}

// Checks a histogram series: buckets in increasing `le`, cumulative counts that never
// decrease, the last one le="+Inf" equal to _count. Returns _count.
double check_histogram(const exposition& e, const std::string& family, const std::map<std::string, std::string>& labels) {
    INFO("histogram " << family);
    const auto buckets = samples_of(e, family + "_bucket", labels);
    REQUIRE(buckets.size() >= 2);
    double last_le = -HUGE_VAL, last_count = 0;
    for (const auto& b : buckets) {
        INFO("bucket le=" << (b.labels.count("le") ? b.labels.at("le") : "(none)") << " " << b.value_text);
        REQUIRE(b.labels.count("le") == 1);
        const std::string& le_text = b.labels.at("le");
        double le = 0;
        if (le_text == "+Inf") {
            le = HUGE_VAL;
        } else {
            char* stop = nullptr;
            le = std::strtod(le_text.c_str(), &stop);
            REQUIRE(*stop == '\0');
        }
        CHECK(le > last_le);
        CHECK(b.value >= last_count);
        CHECK(b.value == std::floor(b.value));
        last_le = le;
        last_count = b.value;
    }
    CHECK(buckets.back().labels.at("le") == "+Inf");
    const double count = value_of(e, family + "_count", labels);
    CHECK(buckets.back().value == count);
    const double sum = value_of(e, family + "_sum", labels);
    CHECK(sum >= 0);
    return count;
}

// The TCP ports process `pid` listens on (IPv4 and IPv6), from /proc, each with the
// length of its accept queue (connections the kernel took that the process has not
// accepted yet).
std::map<int, int> listening_sockets(pid_t pid) {
    std::set<std::string> inodes;
    const fs::path fds = "/proc/" + std::to_string(pid) + "/fd";
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(fds, ec)) {
        std::error_code lec;
        const std::string target = fs::read_symlink(entry.path(), lec).string();
        if (!lec && target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
    }
    REQUIRE(!ec);
    std::map<int, int> ports;
    for (const char* table : {"tcp", "tcp6"}) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
        std::string line;
        std::getline(in, line); // header
        while (std::getline(in, line)) {
            std::istringstream f(line);
            std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
            f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
            if (state == "0A" && inodes.count(inode)) // 0A: LISTEN; queues: tx:rx, rx the accept queue
                ports[std::stoi(local.substr(local.rfind(':') + 1), nullptr, 16)] =
                    std::stoi(queues.substr(queues.find(':') + 1), nullptr, 16);
        }
    }
    return ports;
}

std::set<int> listening_ports(pid_t pid) {
    std::set<int> out;
    for (const auto& [port, queued] : listening_sockets(pid)) out.insert(port);
    return out;
}

int port_of(const std::string& endpoint) { return std::stoi(endpoint.substr(endpoint.rfind(':') + 1)); }

} // namespace

TEST_CASE("plexus-node writes its ready file and answers plexus ping, describe and stats", "[process]") {
    temp_dir dir;
    node_process n(dir, "alpha", {"--echo"});
    INFO("node log:\n" << n.log());
    CHECK(n.rpc.rfind("tcp://127.0.0.1:", 0) == 0);
    CHECK(n.rpc.find('*') == std::string::npos);
    CHECK(n.pub.rfind("tcp://127.0.0.1:", 0) == 0);

    auto ping = plexus_cli({"ping", n.rpc});
    REQUIRE(ping.code == 0);
    auto p = ping.out_json();
    CHECK(p["node"] == "alpha");
    CHECK(p["id"] == n.ready["id"]);
    CHECK(p["id"].get<std::string>().size() == 32);
    CHECK(p["rtt_us"].is_number_integer());
    CHECK(p["uptime_ms"].is_number_integer());

    auto describe = plexus_cli({"describe", n.rpc});
    REQUIRE(describe.code == 0);
    auto d = describe.out_json();
    CHECK(d["node"] == "alpha");
    CHECK(d["protocol"] == 1);
    CHECK(d["endpoints"]["rpc"] == n.ready["rpc"]);
    CHECK(d["endpoints"]["pub"] == n.ready["pub"]);
    REQUIRE(has(d["services"], "name", "echo"));
    for (const auto& s : d["services"])
        if (s["name"] == "echo")
            for (std::string m : {"echo", "inline_echo", "sleep", "fail", "headers"}) {
                INFO("method " << m);
                CHECK(has(s["methods"], "name", m));
            }
    CHECK(has(d["topics"], "name", "plexus.heartbeat"));

    auto stats = plexus_cli({"stats", n.rpc, "--compact"});
    REQUIRE(stats.code == 0);
    CHECK(std::count(stats.out.begin(), stats.out.end(), '\n') == 1);
    auto st = stats.out_json();
    CHECK(st["node"] == "alpha");
    CHECK(st["methods"].is_array());

    const std::string log = n.log();
    CHECK(log.find("level=info node=alpha msg=started") != std::string::npos);
    CHECK(log.find("rpc=" + n.rpc) != std::string::npos);
    CHECK(n.stop() == 0);
}

TEST_CASE("plexus call: JSON bodies, headers, stdin, errors as exit codes and one line", "[process]") {
    temp_dir dir;
    node_process n(dir, "calls", {"--echo"});
    INFO("node log:\n" << n.log());

    const json body = {{"a", 1}, {"b", {true, nullptr, "x"}}, {"c", 1.5}, {"d", -7}, {"e", {{"nested", "map"}}}};
    for (std::string method : {"echo.echo", "echo.inline_echo"}) {
        auto r = plexus_cli({"call", n.rpc, method, body.dump()});
        REQUIRE(r.code == 0);
        CHECK(r.out_json() == body);
        CHECK(r.err.empty());
    }

    auto h = plexus_cli({"call", n.rpc, "echo.headers", "-H", "user-id=42", "-H", "trace=a=b", "--compact"});
    REQUIRE(h.code == 0);
    // The node may add headers of its own (tracing): the ones sent must be there as sent.
    const json got = h.out_json();
    CHECK(got["user-id"] == "42");
    CHECK(got["trace"] == "a=b");

    auto in = plexus_cli({"call", n.rpc, "echo.echo", "-"}, 10s, std::string(R"({"from":"stdin"})"));
    REQUIRE(in.code == 0);
    CHECK(in.out_json() == json{{"from", "stdin"}});

    auto none = plexus_cli({"call", n.rpc, "echo.echo"});
    REQUIRE(none.code == 0);
    CHECK(none.out_json().is_null());

    auto slept = plexus_cli({"call", n.rpc, "echo.sleep", R"({"ms":1})"});
    REQUIRE(slept.code == 0);
    CHECK(slept.out_json() == json{{"slept", 1}});

    SECTION("unknown method and service: 64 + NOT_FOUND, one line on stderr") {
        for (std::string target : {"echo.nope", "nosuch.method"}) {
            auto r = plexus_cli({"call", n.rpc, target, "{}"});
            INFO(r.err);
            CHECK(r.code == 69);
            CHECK(r.out.empty());
            REQUIRE(r.err_lines().size() == 1);
            CHECK(r.err.rfind("plexus: NOT_FOUND: ", 0) == 0);
        }
    }
    SECTION("a handler that throws: 64 + INTERNAL with its message; the node keeps serving") {
        auto r = plexus_cli({"call", n.rpc, "echo.fail"});
        CHECK(r.code == 77);
        REQUIRE(r.err_lines().size() == 1);
        CHECK(r.err.rfind("plexus: INTERNAL: ", 0) == 0);
        CHECK(r.err.find("boom") != std::string::npos);
        CHECK(plexus_cli({"ping", n.rpc}).code == 0);
    }
    SECTION("a reply later than --timeout: 64 + DEADLINE_EXCEEDED, returned about at the deadline") {
        auto r = plexus_cli({"call", n.rpc, "echo.sleep", R"({"ms":2000})", "--timeout", "200"}, 1500ms);
        CHECK(r.code == 68);
        REQUIRE(r.err_lines().size() == 1);
        CHECK(r.err.rfind("plexus: DEADLINE_EXCEEDED: ", 0) == 0);
    }
    SECTION("plexus pub on a node without --allow-publish: 64 + PERMISSION_DENIED") {
        auto r = plexus_cli({"pub", n.rpc, "t", "1"});
        CHECK(r.code == 71);
        CHECK(r.err_lines().size() == 1);
    }
    SECTION("usage errors exit 2 with one line") {
        const std::vector<std::vector<std::string>> bad{
            {"call", n.rpc, "echo.echo", R"({"a":)"}, // bad JSON
            {"call", n.rpc, "echo.echo", "hello"},    // not JSON either
            {"call", "echo.echo", "{}"},              // no endpoint, and discovery off (PLEXUS_DISCOVERY=off)
            {"call", n.rpc, "echoecho", "{}"},        // no method
            {"call", n.rpc, "echo.echo", "{}", "-H", "novalue"},
            {"call", n.rpc, "echo.echo", "{}", "extra"},
            {"call", n.rpc, "echo.echo", "--timeout", "soon"},
            {"call", n.rpc, "echo.echo", "--bogus"},
            {"frobnicate", n.rpc},
            {},
        };
        for (const auto& args : bad) {
            auto r = plexus_cli(args);
            CHECK(r.code == 2);
            CHECK(r.out.empty());
            CHECK(r.err_lines().size() == 1);
        }
        auto bad_stdin = plexus_cli({"call", n.rpc, "echo.echo", "-"}, 10s, std::string("{nope"));
        CHECK(bad_stdin.code == 2);
        CHECK(bad_stdin.err.find("stdin") != std::string::npos);
    }
    CHECK(n.stop() == 0);
}

TEST_CASE("plexus call to an endpoint where nothing listens fails by its deadline", "[process]") {
    // A loopback port held bound but not listening for the whole call: nothing can listen there.
    fd_guard held(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(held.fd >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    REQUIRE(::bind(held.fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::getsockname(held.fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    auto r = plexus_cli({"call", endpoint, "echo.echo", "{}", "--timeout", "300"}, 5s);
    INFO(r.err);
    CHECK((r.code == 68 || r.code == 78)); // DEADLINE_EXCEEDED or UNAVAILABLE
    CHECK(r.err_lines().size() == 1);
}

TEST_CASE("plexus sub sees an event sent with plexus pub, headers included", "[process]") {
    temp_dir dir;
    node_process n(dir, "events", {"--allow-publish", "--heartbeat-interval", "100"});
    INFO("node log:\n" << n.log());

    child sub({cli_exe, "sub", n.rpc, "", "--timeout", "30000"}, {});
    // Heartbeats arriving prove the subscription reached the publisher (no slow-joiner
    // loss from here on).
    auto hb = sub.wait_line([](const std::string& l) { return l.find("\"plexus.heartbeat\"") != std::string::npos; }, 10s);
    INFO("sub stdout: " << sub.out << "\nsub stderr: " << sub.err);
    REQUIRE(hb.has_value());
    const json beat = json::parse(*hb);
    CHECK(beat["body"]["name"] == "events");
    CHECK(beat["source"] == n.ready["id"]);

    auto pub = plexus_cli({"pub", n.rpc, "orders.created", R"({"order":7,"items":["a","b"]})", "-H", "user-id=42"});
    REQUIRE(pub.code == 0);
    CHECK(pub.out_json() == json{{"seq", 1}});

    auto line = sub.wait_line([](const std::string& l) { return l.find("\"orders.created\"") != std::string::npos; }, 10s);
    REQUIRE(line.has_value());
    REQUIRE(json::accept(*line));
    const json ev = json::parse(*line);
    CHECK(ev["topic"] == "orders.created");
    CHECK(ev["seq"] == 1);
    CHECK(ev["source"] == n.ready["id"]);
    CHECK(ev["headers"]["user-id"] == "42");
    CHECK(ev["body"] == json{{"order", 7}, {"items", {"a", "b"}}});

    sub.signal(SIGTERM);
    CHECK(sub.wait(5s) == 0);

    SECTION("--pub-endpoint subscribes to a publisher directly; --count ends it") {
        auto r = plexus_cli({"sub", "--pub-endpoint", n.pub, "plexus.heartbeat", "--count", "2", "--timeout", "10000"});
        REQUIRE(r.code == 0);
        std::vector<json> lines;
        std::istringstream in(r.out);
        for (std::string l; std::getline(in, l);) lines.push_back(json::parse(l));
        REQUIRE(lines.size() == 2);
        CHECK(lines[0]["topic"] == "plexus.heartbeat");
        CHECK(lines[1]["seq"].get<std::uint64_t>() == lines[0]["seq"].get<std::uint64_t>() + 1);
    }
    SECTION("--count not reached by --timeout: 64 + DEADLINE_EXCEEDED") {
        auto r = plexus_cli({"sub", n.rpc, "nothing.here", "--count", "1", "--timeout", "300"});
        CHECK(r.code == 68);
        CHECK(r.out.empty());
        CHECK(r.err_lines().size() == 1);
    }
    SECTION("without --count, the timeout ends it with 0") {
        auto r = plexus_cli({"sub", n.rpc, "nothing.here", "--timeout", "300"});
        CHECK(r.code == 0);
        CHECK(r.out.empty());
    }
    CHECK(n.stop() == 0);
}

TEST_CASE("plexus-node options: command line over config file over environment", "[process]") {
    temp_dir dir;
    const std::string config = dir.file("node.ini");
    {
        std::ofstream(config) << "# a plexus-node config\nname = fromfile\nheartbeat-interval = 0\n";
    }
    auto name_of = [](node_process& n) {
        auto r = plexus_cli({"describe", n.rpc});
        REQUIRE(r.code == 0);
        return r.out_json()["node"].get<std::string>();
    };
    const env_list env{{"PLEXUS_NAME", "fromenv"}};
    {
        node_process n(dir, "a", {"--config", config, "--name", "fromcli"}, env, false);
        CHECK(name_of(n) == "fromcli");
    }
    {
        node_process n(dir, "b", {"--config", config}, env, false);
        CHECK(name_of(n) == "fromfile");
    }
    {
        node_process n(dir, "c", {}, env, false);
        CHECK(name_of(n) == "fromenv");
    }
    {
        node_process n(dir, "d", {}, {{"PLEXUS_NAME", "fromenv"}, {"PLEXUS_CONFIG", config}}, false);
        CHECK(name_of(n) == "fromfile");
    }
    {
        // Lists from the environment are comma-separated; flags take 1/true.
        node_process n(dir, "e", {}, {{"PLEXUS_BIND", "tcp://127.0.0.1:*, tcp://127.0.0.1:*"}, {"PLEXUS_ECHO", "1"}});
        CHECK(n.ready["rpc"].size() == 2);
        auto r = plexus_cli({"call", n.ready["rpc"][1].get<std::string>(), "echo.echo", "5"});
        REQUIRE(r.code == 0);
        CHECK(r.out_json() == 5);
    }
    {
        // --tracing: the default starts a trace and a call chain at this hop; off leaves
        // trace headers alone (PLEXUS_TRACING from the environment).
        const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        node_process on(dir, "tr-on", {"--echo"});
        node_process off(dir, "tr-off", {"--echo"}, {{"PLEXUS_TRACING", "off"}});
        auto a = plexus_cli({"call", on.rpc, "echo.headers", "-H", "traceparent=" + tp, "--compact"});
        auto b = plexus_cli({"call", off.rpc, "echo.headers", "-H", "traceparent=" + tp, "--compact"});
        REQUIRE(a.code == 0);
        REQUIRE(b.code == 0);
        CHECK(a.out_json()["call-chain"] == "echo.headers");
        CHECK(a.out_json()["traceparent"].get<std::string>().substr(0, 36) == tp.substr(0, 36)); // same trace
        CHECK(a.out_json()["traceparent"] != tp);                                                // its own span
        CHECK_FALSE(b.out_json().contains("call-chain"));
        CHECK(b.out_json()["traceparent"] == tp);
    }
    {
        // The command line's list replaces the config file's.
        const std::string cfg2 = dir.file("two.ini");
        std::ofstream(cfg2) << "bind = tcp://127.0.0.1:*\nbind = tcp://127.0.0.1:*\n";
        node_process n(dir, "f", {"--config", cfg2, "--bind", "tcp://127.0.0.1:*"});
        CHECK(n.ready["rpc"].size() == 1);
    }
    SECTION("bad options exit 2 before starting") {
        CHECK(exit_of({"--bogus"}) == 2);
        CHECK(exit_of({"--log-level", "loud"}) == 2);
        CHECK(exit_of({"--tracing", "sometimes"}) == 2);
        CHECK(exit_of({"--workers", "0"}) == 2);
        CHECK(exit_of({"--bind", "localhost:5"}) == 2);
        CHECK(exit_of({"--config", dir.file("missing.ini")}) == 2);
        const std::string bad = dir.file("bad.ini");
        std::ofstream(bad) << "no-such-option = 1\n";
        CHECK(exit_of({"--config", bad}) == 2);
        CHECK(exit_of({"--help"}) == 0);
    }
    SECTION("an endpoint that cannot be bound: exit 1 with an error line") {
        node_process a(dir, "taken");
        child b({node_exe, "--name", "b", "--bind", a.rpc}, {});
        CHECK(b.wait(5s) == 1);
        INFO(b.err);
        CHECK(b.err.find("level=error node=b msg=\"cannot start\"") != std::string::npos);
    }
}

TEST_CASE("plexus-node stops cleanly on SIGTERM and SIGINT", "[process]") {
    temp_dir dir;
    for (int sig : {SIGTERM, SIGINT}) {
        node_process n(dir, sig == SIGTERM ? "term" : "int");
        INFO("signal " << sig << "\nnode log:\n" << n.log());
        CHECK(n.stop(sig, 5s) == 0);
        CHECK(!fs::exists(n.ready_path()));
        CHECK(n.log().find("msg=stopped") != std::string::npos);
    }
    SECTION("with a call in progress") {
        node_process n(dir, "busy", {"--echo", "--shutdown-timeout", "1000"});
        child call({cli_exe, "call", n.rpc, "echo.sleep", R"({"ms":20000})", "--timeout", "8000"}, {});
        // Wait until the node is running the handler.
        const auto deadline = steady::now() + 10s;
        for (bool busy = false; !busy;) {
            REQUIRE(steady::now() < deadline);
            auto st = plexus_cli({"stats", n.rpc});
            REQUIRE(st.code == 0);
            const json stats = st.out_json();
            for (const auto& m : stats["methods"])
                if (m["method"] == "sleep" && m["in_flight"].get<int>() > 0) busy = true;
        }
        CHECK(n.stop(SIGTERM, 5s) == 0);
        // The stop ends the sleep early and the node flushes its reply before it exits
        // ("replies queued at shutdown are flushed within the bound").
        const auto code = call.wait(15s);
        INFO("call stdout: " << call.out << "\ncall stderr: " << call.err);
        REQUIRE(code.has_value());
        CHECK(*code == 0);
        if (*code == 0) {
            REQUIRE(json::accept(call.out));
            CHECK(json::parse(call.out)["slept"].get<std::uint64_t>() < 20000);
        }
    }
}

namespace {

// Polls a node's log (a file: no event to wait on) until it holds `text`; bounded.
bool log_has(node_process& n, const std::string& text, ms bound = 10s) {
    const auto deadline = steady::now() + bound;
    while (n.log().find(text) == std::string::npos) {
        if (steady::now() >= deadline) return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

} // namespace

TEST_CASE("plexus-node --connect: B learns A's services through A's describe", "[process]") {
    temp_dir dir;
    node_process a(dir, "a", {"--echo"});
    node_process b(dir, "b", {"--connect", a.rpc});
    INFO("a log:\n" << a.log() << "\nb log:\n" << b.log());
    // B's log says when A's describe answered.
    CHECK(log_has(b, "msg=\"peer described\" peer=" + a.rpc + " services=1"));

    auto st = plexus_cli({"stats", a.rpc});
    REQUIRE(st.code == 0);
    const json stats = st.out_json();
    bool asked = false;
    for (const auto& m : stats["methods"])
        if (m["service"] == "plexus" && m["method"] == "describe" && m["calls"].get<int>() >= 1) asked = true;
    CHECK(asked);
    CHECK(b.stop() == 0);
    CHECK(a.stop() == 0);
}

TEST_CASE("plexus-node --metrics-port: Prometheus text over real HTTP that parses and counts the calls", "[process][metrics]") {
    temp_dir dir;
    node_process n(dir, "metered", {"--echo", "--metrics-port", "0"});
    INFO("node log:\n" << n.log() << "\nready file: " << n.ready.dump());
    REQUIRE(n.ready.contains("metrics"));
    const std::string url = n.ready["metrics"].get<std::string>();
    CHECK(url.rfind("http://127.0.0.1:", 0) == 0);
    const url_parts u = split_url(url);
    CHECK(u.path == "/metrics");
    CHECK(u.port > 0);
    CHECK(u.port != port_of(n.rpc));

    constexpr int echo_calls = 3;
    for (int i = 0; i < echo_calls; ++i) {
        auto r = plexus_cli({"call", n.rpc, "echo.echo", json{{"i", i}}.dump()});
        REQUIRE(r.code == 0);
    }
    REQUIRE(plexus_cli({"call", n.rpc, "echo.fail"}).code == 77); // INTERNAL

    // Every call above had its reply, and the node counts a call before it replies.
    const http_reply scrape = http_get(url);
    INFO("scrape:\n" << scrape.body);
    REQUIRE(scrape.status == 200);
    REQUIRE(scrape.headers.count("content-type") == 1);
    CHECK(scrape.headers.at("content-type") == "text/plain; version=0.0.4; charset=utf-8");
    const exposition e = parse_exposition(scrape.body);

    const std::map<std::string, std::string> echo{{"node", "metered"}, {"service", "echo"}, {"method", "echo"}};
    const std::map<std::string, std::string> fail{{"node", "metered"}, {"service", "echo"}, {"method", "fail"}};
    CHECK(e.types.at("plexus_server_calls_total") == "counter");
    CHECK(e.types.at("plexus_server_errors_total") == "counter");
    CHECK(e.types.at("plexus_server_latency_seconds") == "histogram");
    CHECK(value_of(e, "plexus_server_calls_total", echo) == echo_calls);
    CHECK(value_of(e, "plexus_server_calls_total", fail) == 1);
    CHECK(samples_of(e, "plexus_server_errors_total", echo).empty());
    CHECK(samples_of(e, "plexus_server_errors_total", fail).size() == 1);
    auto fail_internal = fail;
    fail_internal["code"] = "INTERNAL";
    CHECK(value_of(e, "plexus_server_errors_total", fail_internal) == 1);
    CHECK(check_histogram(e, "plexus_server_latency_seconds", echo) == echo_calls);
    CHECK(check_histogram(e, "plexus_server_latency_seconds", fail) == 1);
    CHECK(value_of(e, "plexus_server_in_flight", echo) == 0);
    CHECK(value_of(e, "plexus_uptime_seconds", {{"node", "metered"}}) > 0);
    // Every method served has its series, called or not.
    CHECK(value_of(e, "plexus_server_calls_total", {{"service", "echo"}, {"method", "sleep"}}) == 0);

    // The same counters as JSON through the stats system method.
    auto st = plexus_cli({"stats", n.rpc});
    REQUIRE(st.code == 0);
    const json stats = st.out_json();
    bool saw_echo = false, saw_fail = false;
    for (const auto& m : stats["methods"]) {
        if (m["service"] != "echo") continue;
        INFO("stats of " << m.dump());
        if (m["method"] == "echo") {
            saw_echo = true;
            CHECK(m["calls"] == echo_calls);
            CHECK(m["errors"] == 0);
            CHECK(m["errors_by_code"] == json::object());
            REQUIRE(m["p50_us"].is_number());
            REQUIRE(m["p90_us"].is_number());
            REQUIRE(m["p99_us"].is_number());
            CHECK(m["p50_us"].get<double>() > 0);
            CHECK(m["p50_us"].get<double>() <= m["p90_us"].get<double>());
            CHECK(m["p90_us"].get<double>() <= m["p99_us"].get<double>());
        } else if (m["method"] == "fail") {
            saw_fail = true;
            CHECK(m["calls"] == 1);
            CHECK(m["errors"] == 1);
            CHECK(m["errors_by_code"] == json{{"INTERNAL", 1}});
        }
    }
    CHECK(saw_echo);
    CHECK(saw_fail);

    // A scrape reads the live counters.
    REQUIRE(plexus_cli({"call", n.rpc, "echo.echo", "1"}).code == 0);
    const exposition again = parse_exposition(http_get(url).body);
    CHECK(value_of(again, "plexus_server_calls_total", echo) == echo_calls + 1);
    CHECK(check_histogram(again, "plexus_server_latency_seconds", echo) == echo_calls + 1);

    const std::string base = url.substr(0, url.size() - std::string("/metrics").size());
    const http_reply health = http_get(base + "/healthz");
    CHECK(health.status == 200);
    CHECK(health.body == "ok");
    CHECK(http_get(base + "/nope").status == 404);

    // Garbage from the network is answered, not a crash: the node keeps serving.
    for (const std::string& junk : {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15),
                                    std::string("NOT-HTTP\r\n\r\n"),
                                    "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n",
                                    std::string("POST /metrics HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")}) {
        const std::string answer = tcp_exchange(u.port, junk);
        INFO("sent " << junk.substr(0, 60) << "\nanswer: " << answer);
        CHECK(answer.rfind("HTTP/1.1 4", 0) == 0); // 400 Bad Request, 413 Payload Too Large
    }
    CHECK(http_get(url).status == 200);
    CHECK(plexus_cli({"ping", n.rpc}).code == 0);

    CHECK(n.log().find("metrics=" + url) != std::string::npos);
    CHECK(n.stop() == 0);
    // Stopped: the port is closed.
    const int fd = tcp_connect(u.port);
    fd_guard guard(fd);
    CHECK(fd == -ECONNREFUSED);
}

TEST_CASE("plexus-node opens no metrics port unless asked and fails on a taken or bad one", "[process][metrics]") {
    temp_dir dir;
    {
        node_process n(dir, "quiet");
        INFO("ready file: " << n.ready.dump());
        CHECK_FALSE(n.ready.contains("metrics"));
        CHECK(listening_ports(n.proc().pid()) == std::set<int>{port_of(n.rpc), port_of(n.pub)});
        CHECK(n.log().find("metrics=off") != std::string::npos);
    }
    node_process m(dir, "loud", {}, {{"PLEXUS_METRICS_PORT", "0"}}); // from the environment
    INFO("ready file: " << m.ready.dump() << "\nnode log:\n" << m.log());
    REQUIRE(m.ready.contains("metrics"));
    const int metrics_port = split_url(m.ready["metrics"].get<std::string>()).port;
    CHECK(listening_ports(m.proc().pid()) == std::set<int>{port_of(m.rpc), port_of(m.pub), metrics_port});
    CHECK(http_get(m.ready["metrics"].get<std::string>()).status == 200);

    SECTION("a port another node serves: exit 1 with an error line (no SO_REUSEPORT sharing)") {
        child b({node_exe, "--name", "b", "--metrics-port", std::to_string(metrics_port)}, {});
        CHECK(b.wait(5s) == 1);
        INFO(b.err);
        CHECK(b.err.find("level=error node=b msg=\"cannot serve metrics\"") != std::string::npos);
        CHECK(http_get(m.ready["metrics"].get<std::string>()).status == 200); // the first one still serves
    }
    SECTION("bad values exit 2 before starting") {
        CHECK(exit_of({"--metrics-port", "65536"}) == 2);
        CHECK(exit_of({"--metrics-port", "http"}) == 2);
        CHECK(exit_of({"--metrics-port", "0", "--metrics-bind", ""}) == 2);
    }
    SECTION("an address that is not this host's (TEST-NET-1, nothing is sent): exit 1") {
        CHECK(exit_of({"--metrics-port", "0", "--metrics-bind", "192.0.2.1"}) == 1);
    }
    CHECK(m.stop() == 0);
}

TEST_CASE("plexus-node stops within its bound while metrics clients hold connections open", "[process][metrics]") {
    temp_dir dir;
    node_process n(dir, "held", {"--metrics-port", "0", "--heartbeat-interval", "0"});
    INFO("node log:\n" << n.log());
    const int port = split_url(n.ready["metrics"].get<std::string>()).port;

    // One client connects and says nothing; another trickles a request line that never
    // ends, a byte every 100 ms (each byte restarts the server's read timeout).
    fd_guard idle(tcp_connect(port));
    REQUIRE(idle.fd >= 0);
    fd_guard slow(tcp_connect(port));
    REQUIRE(slow.fd >= 0);
    REQUIRE(::send(slow.fd, "GET /", 5, MSG_NOSIGNAL) == 5);
    std::atomic<bool> done{false};
    std::thread trickle([&] {
        for (int i = 0; i < 300 && !done; ++i) {
            if (::send(slow.fd, "x", 1, MSG_NOSIGNAL) != 1) break; // the server closed it
            std::this_thread::sleep_for(100ms);
        }
    });
    struct joiner { // also when a REQUIRE below throws
        std::atomic<bool>& done;
        std::thread& thread;
        ~joiner() {
            done = true;
            thread.join();
        }
    } join_trickle{done, trickle};
    // Both connections are taken by the server (its accept queue is empty) before the
    // stop. No event to wait on: poll /proc, bounded.
    const auto queued = [&] {
        const auto sockets = listening_sockets(n.proc().pid());
        const auto it = sockets.find(port);
        return it == sockets.end() ? -1 : it->second;
    };
    CHECK(testutil::eventually([&] { return queued() == 0; }, 10s));

    CHECK(n.stop(SIGTERM, 10s) == 0); // killed, and failed, when the bound passes
    CHECK(n.log().find("msg=stopped") != std::string::npos);
}

// ======================================================================================
// Discovery: plexus-node and the CLI finding each other by name ([process][discovery]).
// Every test has a UDP port and a cluster name of its own, never the default port.
// ======================================================================================

namespace {

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// One test's cluster: a free UDP port, a unique name, a short beacon interval.
struct test_cluster {
    explicit test_cluster(const char* what, unsigned interval_ms = 250)
        : port(testutil::free_udp_port()), name(testutil::unique_cluster(what)), interval(interval_ms) {}

    // Options of plexus-node and plexus for this cluster.
    [[nodiscard]] std::vector<std::string> args(const std::vector<std::string>& more = {}) const {
        return cat({"--discovery", "on", "--cluster", name, "--discovery-port", std::to_string(port),
                    "--discovery-interval", std::to_string(interval)},
                   more);
    }
    // The same through the environment (the fallbacks the issue fixes for scripts).
    [[nodiscard]] env_list env() const {
        return {{"PLEXUS_DISCOVERY", "on"},
                {"PLEXUS_CLUSTER", name},
                {"PLEXUS_DISCOVERY_PORT", std::to_string(port)},
                {"PLEXUS_DISCOVERY_INTERVAL", std::to_string(interval)}};
    }
    // A framework node in this process, in the cluster.
    [[nodiscard]] plexus::node_options client(std::string node_name) const {
        auto o = testutil::discovering(std::move(node_name), name, port);
        o.discovery->interval = ms(interval);
        return o;
    }

    std::uint16_t port;
    std::string name;
    unsigned interval;
};

std::set<std::string> names_of(const json& peers) {
    std::set<std::string> out;
    for (const auto& p : peers) out.insert(p["name"].get<std::string>());
    return out;
}

json line_json(const std::string& l) { return json::accept(l) ? json::parse(l) : json(); }

std::string whoami(plexus::node& client, const plexus::call_options& o = {}) {
    auto r = client.call_raw("echo", "whoami", "", o);
    INFO(plexus::to_string(r.status.code) << ": " << r.status.message);
    REQUIRE(r.ok());
    return plexus::unpack<std::string>(r.body);
}

long ms_since(steady::time_point t0, steady::time_point t1 = steady::now()) {
    return static_cast<long>(std::chrono::duration_cast<ms>(t1 - t0).count());
}

} // namespace

TEST_CASE("discovery: three plexus-node processes see each other, and calls by name spread over them", "[process][discovery]") {
    temp_dir dir;
    const test_cluster cl("three");
    const std::vector<std::string> names{"d1", "d2", "d3"};
    std::vector<std::unique_ptr<node_process>> nodes;
    for (const auto& n : names)
        nodes.push_back(std::make_unique<node_process>(dir, n, cl.args({"--echo", "--heartbeat-interval", "100"})));
    CHECK(nodes[0]->ready["discovery"]["cluster"] == cl.name);
    CHECK(nodes[0]->ready["discovery"]["port"] == cl.port);

    // plexus peers --json, the cluster taken from PLEXUS_CLUSTER / PLEXUS_DISCOVERY_PORT.
    auto r = plexus_cli({"peers", "--json", "--expect", "3", "--timeout", "8000"}, 15s, {}, cl.env());
    REQUIRE(r.code == 0);
    const json peers = r.out_json();
    REQUIRE(peers.is_array());
    CHECK(names_of(peers) == std::set<std::string>(names.begin(), names.end()));
    for (std::size_t i = 0; i < names.size(); ++i) {
        INFO("peer " << names[i] << ": " << peers.dump());
        for (const auto& p : peers) {
            if (p["name"] != names[i]) continue;
            CHECK(p["id"] == nodes[i]->ready["id"]);
            CHECK(p["endpoints"]["rpc"] == nodes[i]->rpc);
            CHECK(p["endpoints"]["pub"] == nodes[i]->pub);
            CHECK(has(p["services"], "name", "echo"));
            CHECK(std::find(p["topics"].begin(), p["topics"].end(), "plexus.heartbeat") != p["topics"].end());
            CHECK(p["incarnation"].get<std::uint64_t>() > 0);
            CHECK(p["interval_ms"] == cl.interval);
        }
    }

    // The table, options on the command line.
    auto t = plexus_cli(cat({"peers", "--expect", "3", "--timeout", "8000"}, cl.args()), 15s);
    REQUIRE(t.code == 0);
    CHECK(t.out.rfind("NAME", 0) == 0);
    for (const auto& n : names) CHECK(t.out.find("\n" + n + " ") != std::string::npos);
    CHECK(t.out.find("echo") != std::string::npos);

    // Calls by name from the CLI.
    const json body = {{"x", 1}, {"y", {"a", nullptr}}};
    auto c = plexus_cli(cat({"call", "echo.echo", body.dump()}, cl.args()));
    REQUIRE(c.code == 0);
    CHECK(c.out_json() == body);
    auto w = plexus_cli(cat({"call", "echo.whoami"}, cl.args()));
    REQUIRE(w.code == 0);
    CHECK(std::find(names.begin(), names.end(), w.out_json().get<std::string>()) != names.end());

    // ping / describe / stats by node name, node id prefix and service name.
    auto p = plexus_cli(cat({"ping", "d2"}, cl.args()));
    REQUIRE(p.code == 0);
    CHECK(p.out_json()["node"] == "d2");
    auto d = plexus_cli(cat({"describe", nodes[2]->ready["id"].get<std::string>().substr(0, 8)}, cl.args()));
    REQUIRE(d.code == 0);
    CHECK(d.out_json()["node"] == "d3");
    auto st = plexus_cli(cat({"stats", "echo"}, cl.args()));
    REQUIRE(st.code == 0);
    CHECK(std::find(names.begin(), names.end(), st.out_json()["node"].get<std::string>()) != names.end());

    // Nothing by that name: UNAVAILABLE (64 + 14) by the timeout, one line.
    for (const auto& args : std::vector<std::vector<std::string>>{{"ping", "nobody", "--timeout", "500"},
                                                                  {"call", "ghost.method", "--timeout", "500"}}) {
        auto u = plexus_cli(cat(args, cl.args()));
        INFO(u.err);
        CHECK(u.code == 78);
        CHECK(u.err_lines().size() == 1);
    }

    // Round-robin, seen from a framework node in this process: each instance in turn.
    plexus::node client(cl.client("rr-client"));
    testutil::signal joins;
    client.on_peer_event([&](const plexus::discovery::event& e) {
        if (e.kind == plexus::discovery::event_kind::join && e.node.name.rfind('d', 0) == 0) joins.notify();
    });
    client.start();
    REQUIRE(joins.wait_for_count(3, 10s));
    std::map<std::string, int> hits;
    for (int i = 0; i < 30; ++i) ++hits[whoami(client)];
    CHECK(hits == std::map<std::string, int>{{"d1", 10}, {"d2", 10}, {"d3", 10}});

    // plexus sub PREFIX without an endpoint: events of every publisher of a matching topic.
    child sub(cat({cli_exe, "sub", "plexus.heartbeat", "--timeout", "20000"}, cl.args()), {});
    std::set<std::string> sources;
    auto all = sub.wait_line(
        [&](const std::string& l) {
            const json j = line_json(l);
            if (j.is_object() && j["topic"] == "plexus.heartbeat") sources.insert(j["body"]["name"].get<std::string>());
            return sources.size() == 3;
        },
        10s);
    INFO("sub stdout: " << sub.out << "\nsub stderr: " << sub.err);
    CHECK(all.has_value());
    sub.signal(SIGTERM);
    CHECK(sub.wait(5s) == 0);

    client.stop();
    for (auto& n : nodes) CHECK(n->stop() == 0);
}

TEST_CASE("discovery: SIGKILL of an instance fails the call in flight fast, and the others take over",
          "[process][discovery][failover]") {
    temp_dir dir;
    // A 500 ms interval: expiry (missed x interval) is 1.5 s, so a leave much sooner
    // than that comes from the broken connection, not from missed beacons.
    const test_cluster cl("kill", 500);
    const std::vector<std::string> names{"k1", "k2", "k3"};
    std::map<std::string, std::unique_ptr<node_process>> nodes;
    for (const auto& n : names)
        nodes[n] = std::make_unique<node_process>(dir, n, cl.args({"--echo", "--heartbeat-interval", "0"}));

    std::mutex mu;
    std::map<std::string, std::pair<steady::time_point, plexus::discovery::leave_reason>> left;
    testutil::signal joins, leaves;
    plexus::node client(cl.client("failover-client"));
    client.on_peer_event([&](const plexus::discovery::event& e) {
        if (e.node.name.rfind('k', 0) != 0) return;
        if (e.kind == plexus::discovery::event_kind::join) joins.notify();
        if (e.kind == plexus::discovery::event_kind::leave) {
            {
                std::lock_guard lk(mu);
                left.emplace(e.node.name, std::make_pair(steady::now(), e.reason));
            }
            leaves.notify();
        }
    });
    client.start();
    REQUIRE(joins.wait_for_count(3, 10s));

    // Round-robin is in turn over a stable list: the fourth call goes where the first went.
    std::vector<std::string> order;
    for (int i = 0; i < 3; ++i) order.push_back(whoami(client));
    REQUIRE(std::set<std::string>(order.begin(), order.end()).size() == 3);
    const std::string victim = order[0];
    INFO("victim " << victim);

    auto in_flight = std::async(std::launch::async, [&] {
        return client.call_raw("echo", "sleep", plexus::pack(std::map<std::string, std::uint64_t>{{"ms", 20000}}),
                               {.timeout = 15s});
    });
    // Make sure it runs on the victim: its stats show the sleep in flight (asked by
    // endpoint, outside the rotation).
    bool busy = false;
    for (const auto deadline = steady::now() + 10s; !busy && steady::now() < deadline;) {
        auto r = client.call_raw("plexus", "stats", "", {.timeout = 2s, .endpoint = nodes[victim]->rpc});
        REQUIRE(r.ok());
        const json stats = json::from_msgpack(r.body);
        for (const auto& m : stats["methods"])
            if (m["method"] == "sleep" && m["in_flight"].get<int>() > 0) busy = true;
    }
    REQUIRE(busy);

    const auto t0 = steady::now();
    nodes[victim]->proc().signal(SIGKILL);
    REQUIRE(in_flight.wait_for(14s) == std::future_status::ready);
    const auto failed_at = steady::now();
    const auto rep = in_flight.get();
    CHECK(rep.status.code == plexus::code::unavailable);
    CHECK(failed_at - t0 < 10s); // hang guard: its deadline was 15 s
    REQUIRE(leaves.wait_for_count(1, 10s));
    std::pair<steady::time_point, plexus::discovery::leave_reason> gone;
    {
        std::lock_guard lk(mu);
        REQUIRE(left.count(victim) == 1);
        gone = left[victim];
    }
    // The client had a connection to it: the break, not the expiry, drops it.
    CHECK(gone.second == plexus::discovery::leave_reason::dead);

    // Later calls go to the two others.
    std::map<std::string, int> hits;
    for (int i = 0; i < 10; ++i) ++hits[whoami(client)];
    CHECK(hits.count(victim) == 0);
    CHECK(hits.size() == 2);
    const auto first_ok = steady::now();

    // The other instances never connected to it: they drop it by expiry.
    std::vector<std::string> survivors;
    for (const auto& n : names)
        if (n != victim) survivors.push_back(n);
    for (const auto& s : survivors) CHECK(log_has(*nodes[s], "msg=\"peer left\" peer=" + victim));
    const auto all_dropped = steady::now();
    WARN("SIGKILL " << victim << ": in-flight call failed " << ms_since(t0, failed_at) << " ms after the kill ("
                    << rep.status.message << "; deadline 15000 ms); left the calling client's table after "
                    << ms_since(t0, gone.first) << " ms (reason " << plexus::discovery::to_string(gone.second)
                    << ", expiry " << 3 * cl.interval << " ms); next 10 calls done " << ms_since(t0, first_ok)
                    << " ms after; gone from the survivors' tables (expiry, no connection) within "
                    << ms_since(t0, all_dropped) << " ms");
    client.stop();
    for (const auto& s : survivors) CHECK(nodes[s]->stop() == 0);
}

TEST_CASE("discovery: plexus watch shows a graceful leave, then the restart as a new incarnation", "[process][discovery]") {
    temp_dir dir;
    const test_cluster cl("watch");
    auto w1 = std::make_unique<node_process>(dir, "worker", cl.args({"--heartbeat-interval", "0"}));
    child watch(cat({cli_exe, "watch", "--json", "--timeout", "30000"}, cl.args()), {});
    const auto is = [](const char* event, const char* name) {
        return [=](const std::string& l) {
            const json j = line_json(l);
            return j.is_object() && j["event"] == event && j["name"] == name;
        };
    };
    auto join1 = watch.wait_line(is("join", "worker"), 10s);
    INFO("watch stdout: " << watch.out << "\nwatch stderr: " << watch.err);
    REQUIRE(join1.has_value());
    const json j1 = json::parse(*join1);
    CHECK(j1["id"] == w1->ready["id"]);
    CHECK(j1["endpoints"]["rpc"] == w1->rpc);
    CHECK(j1["ts"].is_string());

    CHECK(w1->stop(SIGTERM) == 0);
    auto leave = watch.wait_line(is("leave", "worker"), 10s);
    REQUIRE(leave.has_value());
    const json l1 = json::parse(*leave);
    CHECK(l1["reason"] == "graceful");
    CHECK(l1["incarnation"] == j1["incarnation"]);
    w1.reset();

    node_process w2(dir, "worker", cl.args({"--heartbeat-interval", "0"}));
    auto join2 = watch.wait_line(is("join", "worker"), 10s);
    REQUIRE(join2.has_value());
    const json j2 = json::parse(*join2);
    CHECK(j2["incarnation"].get<std::uint64_t>() > j1["incarnation"].get<std::uint64_t>());
    CHECK(j2["id"] == w2.ready["id"]);
    watch.signal(SIGTERM);
    CHECK(watch.wait(5s) == 0);

    // The text form; --count ends it. The nodes already there come first, as joins.
    auto once = plexus_cli(cat({"watch", "--count", "1", "--timeout", "8000"}, cl.args()));
    REQUIRE(once.code == 0);
    CHECK(std::count(once.out.begin(), once.out.end(), '\n') == 1);
    CHECK(once.out.find(" join ") != std::string::npos);
    CHECK(once.out.find(" worker ") != std::string::npos);
    // Fewer than --count events by --timeout: 64 + DEADLINE_EXCEEDED.
    auto few = plexus_cli(cat({"watch", "--count", "5", "--timeout", "500"}, cl.args()));
    CHECK(few.code == 68);
    CHECK(few.err_lines().size() == 1);
    CHECK(w2.stop() == 0);
}

TEST_CASE("discovery: a node of another cluster on the same port is not listed", "[process][discovery]") {
    temp_dir dir;
    const test_cluster a("iso-a");
    test_cluster b("iso-b");
    b.port = a.port;
    node_process na(dir, "in-a", a.args({"--echo", "--heartbeat-interval", "0"}));
    node_process nb(dir, "in-b", b.args({"--heartbeat-interval", "0"}));
    // Each cluster first shows its own node; then, over three more intervals (an
    // observation window: absence has no event), never the other.
    for (const test_cluster* cl : {&a, static_cast<const test_cluster*>(&b)}) {
        auto r = plexus_cli(cat({"peers", "--json", "--expect", "1", "--timeout", "8000"}, cl->args()));
        REQUIRE(r.code == 0);
        auto w = plexus_cli(cat({"peers", "--json", "--wait", "750"}, cl->args()));
        REQUIRE(w.code == 0);
        CHECK(names_of(w.out_json()) == std::set<std::string>{std::string(cl == &a ? "in-a" : "in-b")});
    }
    auto call = plexus_cli(cat({"call", "echo.whoami", "--timeout", "1000"}, b.args()));
    CHECK(call.code == 78); // only cluster a serves echo
    auto ok = plexus_cli(cat({"call", "echo.whoami"}, a.args()));
    REQUIRE(ok.code == 0);
    CHECK(ok.out_json() == "in-a");
    CHECK(na.log().find("peer=in-b") == std::string::npos);
    CHECK(nb.log().find("peer=in-a") == std::string::npos);
}

TEST_CASE("discovery: with broadcast off, nodes seeded one by another converge by gossip", "[process][discovery]") {
    temp_dir dir;
    const test_cluster cl("seeds");
    // Each node its own discovery port (0: a free one, read from the ready file), no
    // broadcast: only seeds and gossip can bring them together.
    const auto opts = [&](const std::vector<std::string>& more) {
        return cat({"--discovery", "on", "--cluster", cl.name, "--discovery-port", "0", "--discovery-interval", "250",
                    "--no-broadcast", "--echo", "--heartbeat-interval", "0"},
                   more);
    };
    const auto port_of_node = [](const node_process& n) {
        const int p = n.ready["discovery"]["port"].get<int>();
        REQUIRE(p > 0);
        return "127.0.0.1:" + std::to_string(p);
    };
    node_process s1(dir, "s1", opts({}));
    node_process s2(dir, "s2", opts({"--seed", port_of_node(s1)}));
    node_process s3(dir, "s3", opts({"--seed", port_of_node(s2)}));

    // s1 never heard of s3 directly (s3 seeds s2): gossip brings them together.
    CHECK(log_has(s1, "msg=\"peer joined\" peer=s3"));
    CHECK(log_has(s3, "msg=\"peer joined\" peer=s1"));

    // The CLI seeds s1 only and sees all three.
    const std::vector<std::string> cli_opts{"--discovery", "on", "--cluster", cl.name, "--discovery-port", "0", "--discovery-interval",
                                            "250", "--no-broadcast", "--seed", port_of_node(s1)};
    auto r = plexus_cli(cat({"peers", "--json", "--expect", "3", "--timeout", "8000"}, cli_opts));
    REQUIRE(r.code == 0);
    CHECK(names_of(r.out_json()) == std::set<std::string>{"s1", "s2", "s3"});
    auto c = plexus_cli(cat({"call", "echo.whoami"}, cli_opts));
    REQUIRE(c.code == 0);
    CHECK(c.out_json().is_string());

    // A framework node seeding s3 only reaches all three by name, in turn.
    auto o = cl.client("seeded-client");
    o.discovery->port = 0;
    o.discovery->broadcast.clear();
    o.discovery->seeds = {port_of_node(s3)};
    plexus::node client(o);
    testutil::signal joins;
    client.on_peer_event([&](const plexus::discovery::event& e) {
        if (e.kind == plexus::discovery::event_kind::join) joins.notify();
    });
    client.start();
    REQUIRE(joins.wait_for_count(3, 10s));
    std::set<std::string> answered;
    for (int i = 0; i < 3; ++i) answered.insert(whoami(client));
    CHECK(answered == std::set<std::string>{"s1", "s2", "s3"});
    client.stop();
}

TEST_CASE("discovery: --multicast GROUP@127.0.0.1:0 instead of broadcast, on this host only", "[process][discovery]") {
    temp_dir dir;
    const test_cluster cl("mcast");
    const std::string group = "239.255.81." + std::to_string(1 + ::getpid() % 250) + "@127.0.0.1:0";
    const auto args = cl.args({"--no-broadcast", "--multicast", group});
    node_process m1(dir, "m1", cat(args, {"--echo", "--heartbeat-interval", "0"}));
    node_process m2(dir, "m2", cat(args, {"--echo", "--heartbeat-interval", "0"}));
    auto r = plexus_cli(cat({"peers", "--json", "--expect", "2", "--timeout", "8000"}, args));
    REQUIRE(r.code == 0);
    CHECK(names_of(r.out_json()) == std::set<std::string>{"m1", "m2"});
    CHECK(m1.stop() == 0);
    CHECK(m2.stop() == 0);
}

TEST_CASE("discovery: usage errors of the discovery options exit 2", "[process][discovery]") {
    CHECK(exit_of({"--discovery", "maybe"}) == 2);
    CHECK(exit_of({"--discovery", "on", "--broadcast", "10.200.0.255", "--no-broadcast"}) == 2);
    CHECK(exit_of({"--discovery", "on", "--seed", "127.0.0.1:notaport"}) == 2);
    CHECK(exit_of({"--discovery", "on", "--multicast", "10.0.0.1"}) == 2); // not a multicast group
    CHECK(exit_of({"--discovery", "on", "--discovery-interval", "1"}) == 2);
    CHECK(exit_of({"--discovery", "on", "--cluster", ""}) == 2);
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"peers", "--discovery", "off"},
             {"watch", "--discovery", "off"},
             {"call", "echo.echo", "--discovery", "off"},
             {"ping", "somenode", "--discovery", "off"},
             {"ping"},
             {"peers", "--wait", "10", "--expect", "1"},
             {"peers", "--cluster", ""},
         }) {
        auto r = plexus_cli(args);
        INFO(r.err);
        CHECK(r.code == 2);
        CHECK(r.err_lines().size() == 1);
    }
}

// --- several hosts -----------------------------------------------------------------------

namespace {

int sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

const std::string ip_exe = "/usr/sbin/ip";

// The LAN of tests/netns.hpp at 10.200.7.1-3/24.
class netns_lan : public netns::lan {
public:
    static constexpr const char* subnet = "10.200.7.";

    netns_lan() : netns::lan("plxp", subnet, "vp") {}

    [[nodiscard]] static std::string address(char host) { return subnet + std::to_string(host - 'a' + 1); }
    [[nodiscard]] std::vector<std::string> exec_in(char host) const { return {ip_exe, "netns", "exec", ns(host)}; }
};

} // namespace

TEST_CASE("discovery: plexus-node in three network namespaces find and call each other by LAN broadcast",
          "[process][discovery][netns]") {
    if (::geteuid() != 0 || sh("ip netns list") != 0) {
        WARN("SKIPPED: network namespaces need root and iproute2 (`ip`); this test did not run");
        return;
    }
    temp_dir dir;
    netns_lan lan; // before the nodes: removed after they are gone
    if (!lan.ok()) {
        WARN("SKIPPED: could not create network namespaces here (ip netns add failed); this test did not run");
        return;
    }
    const test_cluster cl("lan");
    const std::string lan_broadcast = std::string(netns_lan::subnet) + "255";
    const auto t0 = steady::now();
    std::vector<std::unique_ptr<node_process>> nodes;
    for (char h : {'a', 'b', 'c'})
        nodes.push_back(std::make_unique<node_process>(
            dir, std::string("host-") + h,
            cl.args({"--echo", "--heartbeat-interval", "0", "--bind", "tcp://0.0.0.0:*", "--pub-bind", "tcp://0.0.0.0:*",
                     "--broadcast", lan_broadcast}),
            env_list{}, true, lan.exec_in(h)));
    for (auto& n : nodes) CHECK(n->log().find("cannot call it") == std::string::npos); // no loopback warning
    {
        // Beacons on the LAN but the RPC endpoint on 127.0.0.1 (the default bind): a warning.
        node_process lo(dir, "loopback-a", cl.args({"--heartbeat-interval", "0", "--broadcast", lan_broadcast}), env_list{},
                        true, lan.exec_in('a'));
        CHECK(log_has(lo, "cannot call it"));
        CHECK(lo.stop() == 0);
    }

    // From host a: all three, each at its LAN address.
    const auto lan_args = cl.args({"--broadcast", lan_broadcast});
    auto r = plexus_cli(cat({"peers", "--json", "--expect", "3", "--timeout", "8000"}, lan_args), 15s, {}, {},
                        lan.exec_in('a'));
    REQUIRE(r.code == 0);
    WARN("namespaces: three plexus-node processes launched and seen from host a " << ms_since(t0) << " ms after the first launch");
    const json peers = r.out_json();
    CHECK(names_of(peers) == std::set<std::string>{"host-a", "host-b", "host-c"});
    for (const auto& p : peers) {
        const char h = p["name"].get<std::string>().back();
        INFO(p.dump());
        CHECK(p["endpoints"]["rpc"].get<std::string>().rfind("tcp://" + netns_lan::address(h) + ":", 0) == 0);
    }

    // Calls by name across the hosts: by node name, and by service.
    for (auto [from, to] : std::vector<std::pair<char, std::string>>{{'a', "host-b"}, {'b', "host-c"}, {'c', "host-a"}}) {
        auto p = plexus_cli(cat({"ping", to}, lan_args), 15s, {}, {}, lan.exec_in(from));
        INFO("from host-" << from << " to " << to << ": " << p.err);
        REQUIRE(p.code == 0);
        CHECK(p.out_json()["node"] == to);
    }
    auto c = plexus_cli(cat({"call", "echo.echo", R"({"from":"c"})"}, lan_args), 15s, {}, {}, lan.exec_in('c'));
    REQUIRE(c.code == 0);
    CHECK(c.out_json() == json{{"from", "c"}});
    for (auto& n : nodes) CHECK(n->stop() == 0);
}

// --- figures (hidden: run with `plexus_process_tests "[.figures]"`; benchmarks, not tests) ----

namespace {

struct summary {
    std::vector<double> v;
    void add(double x) { v.push_back(x); }
    [[nodiscard]] std::string text(const char* unit) {
        std::sort(v.begin(), v.end());
        if (v.empty()) return "none";
        std::ostringstream o;
        o << std::fixed;
        o.precision(1);
        o << "median " << v[v.size() / 2] << ' ' << unit << ", min " << v.front() << ", max " << v.back() << " (n=" << v.size()
          << ")";
        return o.str();
    }
};

double ms_between(steady::time_point a, steady::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

} // namespace

TEST_CASE("figures: start of a node to the first call by name from a peer", "[.figures]") {
    const test_cluster cl("fig-start", 1000);
    plexus::node peer(cl.client("peer"));
    std::mutex mu;
    std::map<std::string, steady::time_point> joined;
    testutil::signal joins;
    peer.on_peer_event([&](const plexus::discovery::event& e) {
        if (e.kind != plexus::discovery::event_kind::join) return;
        {
            std::lock_guard lk(mu);
            joined[e.node.name] = steady::now();
        }
        joins.notify();
    });
    peer.start();
    summary in_process, to_join, as_process;
    for (int i = 0; i < 20; ++i) {
        const std::string name = "fig-" + std::to_string(i), service = "svc" + std::to_string(i);
        plexus::node x(cl.client(name));
        x.serve(service).raw_method("m", [](plexus::request&) { return std::string("ok"); });
        const int before = joins.count();
        const auto t0 = steady::now();
        x.start();
        REQUIRE(joins.wait_for_count(before + 1, 5s));
        auto r = peer.call_raw(service, "m", "");
        const auto t1 = steady::now();
        REQUIRE(r.ok());
        in_process.add(ms_between(t0, t1));
        std::lock_guard lk(mu);
        to_join.add(ms_between(t0, joined[name]));
    }
    temp_dir dir;
    for (int i = 0; i < 10; ++i) {
        const std::string name = "figp-" + std::to_string(i);
        const int before = joins.count();
        const auto t0 = steady::now();
        child proc(cat({node_exe, "--name", name, "--echo", "--heartbeat-interval", "0", "--log-level", "warn"}, cl.args()),
                   {.env = {}, .stdin_data = {}, .stderr_file = dir.file(name + ".log")});
        REQUIRE(joins.wait_for_count(before + 1, 5s));
        auto r = peer.call_raw("echo", "whoami", "");
        const auto t1 = steady::now();
        REQUIRE(r.ok());
        as_process.add(ms_between(t0, t1));
        proc.signal(SIGTERM);
        CHECK(proc.wait(5s) == 0);
    }
    WARN("start -> first successful call by name from a peer, framework node in this process: "
         << in_process.text("ms") << "; start -> join seen by the peer: " << to_join.text("ms")
         << "; plexus-node process (fork+exec included): " << as_process.text("ms"));
}

TEST_CASE("figures: SIGKILL to leaving the peer tables and to the fail-fast error", "[.figures]") {
    const test_cluster cl("fig-kill", 1000); // default interval and missed: expiry 3 s
    temp_dir dir;
    summary fail_sync, fail_async, leave_sync, leave_async, leave_idle, leave_none;
    for (int i = 0; i < 5; ++i) {
        const std::string victim = "victim-" + std::to_string(i);
        node_process v(dir, victim, cl.args({"--echo", "--heartbeat-interval", "0"}));
        // c0: a synchronous call in flight; c1: an asynchronous one; c2: an idle
        // connection (its stats calls); c3: never called it.
        std::mutex mu;
        std::map<int, steady::time_point> left;
        testutil::signal joins, leaves;
        std::vector<std::unique_ptr<plexus::node>> clients;
        for (int c = 0; c < 4; ++c) {
            clients.push_back(std::make_unique<plexus::node>(cl.client("c" + std::to_string(c))));
            clients.back()->on_peer_event([&, c](const plexus::discovery::event& e) {
                if (e.node.name != victim) return;
                if (e.kind == plexus::discovery::event_kind::join) joins.notify();
                if (e.kind == plexus::discovery::event_kind::leave) {
                    {
                        std::lock_guard lk(mu);
                        left[c] = steady::now();
                    }
                    leaves.notify();
                }
            });
            clients.back()->start();
        }
        REQUIRE(joins.wait_for_count(4, 5s));
        const auto sleep_body = plexus::pack(std::map<std::string, int>{{"ms", 20000}});
        auto sync_call = std::async(std::launch::async, [&] {
            return clients[0]->call_raw("echo", "sleep", sleep_body, {.timeout = 15s});
        });
        auto async_call = clients[1]->call_async("echo", "sleep", sleep_body, {.timeout = 15s});
        bool busy = false;
        for (const auto deadline = steady::now() + 5s; !busy && steady::now() < deadline;) {
            auto r = clients[2]->call_raw("plexus", "stats", "", {.timeout = 2s, .endpoint = v.rpc});
            REQUIRE(r.ok());
            const json stats = json::from_msgpack(r.body);
            for (const auto& m : stats["methods"])
                if (m["method"] == "sleep" && m["in_flight"].get<int>() == 2) busy = true;
        }
        REQUIRE(busy);
        const auto t0 = steady::now();
        v.proc().signal(SIGKILL);
        REQUIRE(async_call.wait_for(14s) == std::future_status::ready);
        const auto async_done = steady::now();
        REQUIRE(sync_call.wait_for(14s) == std::future_status::ready);
        const auto sync_done = steady::now();
        CHECK(sync_call.get().status.code == plexus::code::unavailable);
        CHECK(async_call.get().status.code == plexus::code::unavailable);
        fail_sync.add(ms_between(t0, sync_done));
        fail_async.add(ms_between(t0, async_done));
        REQUIRE(leaves.wait_for_count(4, 10s));
        std::lock_guard lk(mu);
        leave_sync.add(ms_between(t0, left[0]));
        leave_async.add(ms_between(t0, left[1]));
        leave_idle.add(ms_between(t0, left[2]));
        leave_none.add(ms_between(t0, left[3]));
    }
    WARN("SIGKILL -> call in flight fails UNAVAILABLE: synchronous " << fail_sync.text("ms") << "; asynchronous "
         << fail_async.text("ms") << ". SIGKILL -> gone from the peer table of: the synchronous caller "
         << leave_sync.text("ms") << "; the asynchronous caller " << leave_async.text("ms")
         << "; a peer with an idle connection " << leave_idle.text("ms")
         << "; a peer that never called it (expiry, 3 x 1000 ms) " << leave_none.text("ms"));
}

TEST_CASE("figures: 50 nodes on one host converge, and beacon bytes per node per second", "[.figures]") {
    const test_cluster cl("fig-50", 1000);
    constexpr int n = 50;
    std::vector<std::unique_ptr<plexus::node>> nodes;
    std::vector<std::unique_ptr<std::atomic<int>>> seen;
    testutil::signal converged;
    std::mutex mu;
    steady::time_point last_converged{};
    for (int i = 0; i < n; ++i) {
        auto o = cl.client(std::string("n").append(std::to_string(i)));
        o.workers = 1;
        nodes.push_back(std::make_unique<plexus::node>(o));
        nodes.back()->serve("svc" + std::to_string(i % 5)).version("1.0").raw_method("m", [](plexus::request&) {
            return std::string();
        });
        nodes.back()->declare_topic("topic." + std::to_string(i));
        seen.push_back(std::make_unique<std::atomic<int>>(0));
        nodes.back()->on_peer_event([&, c = seen.back().get()](const plexus::discovery::event& e) {
            if (e.kind == plexus::discovery::event_kind::join && ++*c == n - 1) {
                {
                    std::lock_guard lk(mu);
                    last_converged = steady::now();
                }
                converged.notify();
            }
        });
    }
    const auto t0 = steady::now();
    for (auto& node : nodes) node->start();
    const auto started = steady::now();
    REQUIRE(converged.wait_for_count(n, 10s));
    double all_ms;
    {
        std::lock_guard lk(mu);
        all_ms = ms_between(t0, last_converged);
    }
    // A listener on the shared port, bound after the joins, counts what is broadcast
    // (unicast answers go to the nodes' own sockets and are not counted: they happen at
    // joins only).
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(cl.port);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);

    // Beacon bytes over 5 s of steady state.
    std::uint64_t bytes = 0, datagrams = 0;
    std::map<std::string, int> kinds;
    const auto w0 = steady::now();
    while (steady::now() - w0 < 5s) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        char buf[2048];
        const auto got = ::recv(fd, buf, sizeof buf, 0);
        if (got > 0) {
            bytes += static_cast<std::uint64_t>(got);
            ++datagrams;
            plexus::discovery::beacon b;
            const auto* u = reinterpret_cast<const std::uint8_t*>(buf);
            if (plexus::discovery::decode(std::span<const std::uint8_t>(u, static_cast<std::size_t>(got)), b) ==
                plexus::discovery::decode_error::none)
                ++kinds[(b.flags & plexus::discovery::flag_broadcast ? "broadcast" : "unicast") + std::string(b.gossip.empty() ? "" : "+gossip")];
        }
    }
    const double secs = std::chrono::duration<double>(steady::now() - w0).count();
    ::close(fd);
    for (auto& node : nodes) CHECK(node->peers().size() == n - 1);
    WARN(n << " framework nodes in one process (1 s interval): all " << n << " see the other " << n - 1 << " "
           << all_ms << " ms after the first start() (the " << n << " start() calls took " << ms_between(t0, started)
           << " ms); steady state: " << static_cast<double>(bytes) / n / secs << " beacon bytes per node per second ("
           << static_cast<double>(datagrams) / n / secs << " datagrams, " << (datagrams ? bytes / datagrams : 0)
           << " bytes each; a node with rpc+pub endpoints, one service, one topic)");
    for (const auto& [k, c] : kinds) WARN(k << ": " << c << " datagrams in " << secs << " s");
    for (auto& node : nodes) node->stop();
}
