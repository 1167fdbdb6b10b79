// [discovery] plexus::discovery alone: the beacon codec and its test vector, agents on
// one host (one process and several), graceful leave, expiry, restart, cluster
// isolation, bad datagrams, seeds and gossip without broadcast, several hosts in
// network namespaces.
//
// This executable is also the helper process of the multi-process tests: with
// `--probe` as first argument it runs one agent instead of Catch (probe_main below).
// Catch2 v2 has no SKIP: a test that cannot run here (not root, no `ip`) prints a
// WARN saying so and returns; it then counts as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <plexus/discovery/agent.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.hpp>

#include "netns.hpp"

namespace disc = plexus::discovery;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------- helpers

std::mt19937_64& rng() {
    static std::mt19937_64 r{std::random_device{}()};
    return r;
}

// A UDP port free right now (bound without sharing, read back, closed).
std::uint16_t free_udp_port() {
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    ::close(fd);
    return ntohs(sa.sin_port);
}

std::string unique_cluster(const std::string& what) {
    return "t-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(rng()() % 100000);
}

disc::beacon_options options(const std::string& cluster, std::uint16_t port, const std::string& name,
                             std::chrono::milliseconds interval = 1000ms) {
    disc::beacon_options o;
    o.cluster = cluster;
    o.port = port;
    o.name = name;
    o.interval = interval;
    return o;
}

// Records an agent's events; waits on them with a bound. Outlives the agent it watches.
class recorder {
public:
    void attach(disc::agent& a) {
        a.on_event([this](const disc::event& e) {
            std::lock_guard lk(mu_);
            events_.push_back(e);
            if (e.kind == disc::event_kind::leave)
                live_.erase(e.node.id);
            else
                live_.insert(e.node.id);
            cv_.notify_all();
        });
    }
    bool wait(const std::function<bool(const std::vector<disc::event>&)>& pred, std::chrono::milliseconds limit = 5s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, limit, [&] { return pred(events_); });
    }
    bool wait_live(std::size_t n, std::chrono::milliseconds limit = 5s) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, limit, [&] { return live_.size() == n; });
    }
    // The first event matching, waiting for it.
    std::optional<disc::event> wait_for(disc::event_kind k, const std::string& name,
                                        std::chrono::milliseconds limit = 5s) {
        std::optional<disc::event> found;
        wait(
            [&](const auto& evs) {
                for (const auto& e : evs)
                    if (e.kind == k && e.node.name == name) {
                        found = e;
                        return true;
                    }
                return false;
            },
            limit);
        return found;
    }
    std::vector<disc::event> events() {
        std::lock_guard lk(mu_);
        return events_;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<disc::event> events_;
    std::set<disc::node_id> live_;
};

// Polls `pred` with a bound, for conditions no event announces (counters).
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 5s) {
    const auto end = clk::now() + limit;
    while (clk::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(2ms);
    }
    return pred();
}

// A plain UDP socket on loopback for hand-made datagrams.
class raw_socket {
public:
    raw_socket() {
        fd_ = ::socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
        int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    }
    // To every agent on the port (this host only).
    void broadcast(std::uint16_t port, const std::vector<std::uint8_t>& bytes) const { send(port, bytes, 0x7fffffff); }
    ~raw_socket() { ::close(fd_); }
    // Unicast to 127.0.0.1:port: on a port shared by several agents only one gets it.
    void send(std::uint16_t port, const std::vector<std::uint8_t>& bytes, in_addr_t ip = INADDR_LOOPBACK) const {
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_addr.s_addr = htonl(ip);
        to.sin_port = htons(port);
        REQUIRE(::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
                static_cast<ssize_t>(bytes.size()));
    }
    // The next datagram within `limit`, or empty.
    std::vector<std::uint8_t> receive(std::chrono::milliseconds limit) const {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return {};
        std::vector<std::uint8_t> buf(2048);
        auto n = ::recv(fd_, buf.data(), buf.size(), 0);
        buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        return buf;
    }

private:
    int fd_ = -1;
};

std::vector<std::uint8_t> from_hex(std::string_view hex) {
    std::vector<std::uint8_t> out;
    std::string digits;
    for (char c : hex)
        if (std::isxdigit(static_cast<unsigned char>(c))) digits.push_back(c);
    for (std::size_t i = 0; i + 1 < digits.size(); i += 2)
        out.push_back(static_cast<std::uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
    return out;
}

std::string to_hex(const std::vector<std::uint8_t>& bytes) {
    static constexpr char d[] = "0123456789abcdef";
    std::string s;
    for (auto b : bytes) {
        s.push_back(d[b >> 4]);
        s.push_back(d[b & 15]);
    }
    return s;
}

// ---------------------------------------------------------------- the test vector

// docs/PROTOCOL.md, "Discovery beacon", test vector 1: keep the two in sync (the test
// below checks that the document contains this hex).
constexpr std::string_view vector_hello_hex =
    "9ca4504c58440100a464656d6fc410000102030405060708090a0b0c0d0e0fcf00060a24181e4000a663616c632d31cd03e8"
    "01930001cf324b1db93d54a23e9381a3727063b27463703a2f2f302e302e302e303a353535359192a463616c63a3312e3091"
    "ab63616c632e6576656e74739193c410101112131415161718191a1b1c1d1e1f2aaf3132372e302e302e313a3430303030";

disc::beacon vector_hello() {
    disc::beacon b;
    b.kind = disc::beacon_kind::hello;
    b.cluster = "demo";
    for (std::uint8_t i = 0; i < 16; ++i) b.id[i] = i;
    b.incarnation = 1'700'000'000'000'000ULL;
    b.name = "calc-1";
    b.interval_ms = 1000;
    b.flags = disc::flag_broadcast;
    b.body.endpoints["rpc"] = "tcp://0.0.0.0:5555";
    b.body.services.push_back({"calc", "1.0"});
    b.body.topics.push_back("calc.events");
    b.digest = disc::payload_digest(b.body);
    disc::gossip_entry g;
    for (std::uint8_t i = 0; i < 16; ++i) g.id[i] = static_cast<std::uint8_t>(0x10 + i);
    g.incarnation = 42;
    g.address = "127.0.0.1:40000";
    b.gossip.push_back(g);
    return b;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// ---------------------------------------------------------------- child processes

std::string self_exe() {
    char buf[4096] = {};
    auto n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// A child process with its stdin and stdout on pipes; killed and reaped on destruction.
class child {
public:
    explicit child(const std::vector<std::string>& argv) {
        int in[2], out[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::dup2(in[0], 0);
            ::dup2(out[1], 1);
            std::vector<char*> args;
            for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execvp(args[0], args.data());
            ::_exit(127);
        }
        ::close(in[0]);
        ::close(out[1]);
        in_ = in[1];
        out_ = out[0];
    }
    ~child() {
        close_stdin();
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0) ::close(out_);
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    // Lines the child has printed so far (non-blocking read of what is there).
    void pump() {
        char buf[4096];
        for (;;) {
            pollfd p{out_, POLLIN, 0};
            if (::poll(&p, 1, 0) <= 0) return;
            auto n = ::read(out_, buf, sizeof buf);
            if (n <= 0) return;
            partial_.append(buf, static_cast<std::size_t>(n));
            for (auto pos = partial_.find('\n'); pos != std::string::npos; pos = partial_.find('\n')) {
                lines_.push_back(partial_.substr(0, pos));
                partial_.erase(0, pos + 1);
            }
        }
    }
    bool has_line(std::string_view prefix) {
        pump();
        return std::any_of(lines_.begin(), lines_.end(), [&](const std::string& l) { return l.rfind(prefix, 0) == 0; });
    }
    const std::vector<std::string>& lines() {
        pump();
        return lines_;
    }
    void close_stdin() {
        if (in_ >= 0) ::close(in_);
        in_ = -1;
    }
    void kill_now() {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        reaped_ = true;
    }
    // Exit status after stdin was closed, or -1 if it did not end within `limit`.
    int wait_exit(std::chrono::milliseconds limit) {
        const auto end = clk::now() + limit;
        while (clk::now() < end) {
            if (reaped_) return status_;
            int st = 0;
            if (::waitpid(pid_, &st, WNOHANG) == pid_) {
                reaped_ = true;
                status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                return status_;
            }
            std::this_thread::sleep_for(5ms);
        }
        return -1;
    }

private:
    pid_t pid_ = -1;
    int in_ = -1, out_ = -1;
    bool reaped_ = false;
    int status_ = -1;
    std::string partial_;
    std::vector<std::string> lines_;
};

int sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

} // namespace

// ---------------------------------------------------------------- probe mode

// plexus_discovery_tests --probe --cluster C --port P --name N [--broadcast ADDR|none]
//     [--seed H:P] [--endpoint E] [--service S] [--interval MS] [--expect K]
// Prints "JOIN <name> <host> <rpc endpoint>" and "LEAVE <name> <reason>" per event,
// "DONE" once K peers are live, then runs until its stdin closes (at most 20 s) and
// stops gracefully.
static int probe_main(int argc, char** argv) {
    disc::beacon_options o;
    std::size_t expect = 0;
    bool bcast_set = false;
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--cluster") o.cluster = v;
        else if (k == "--port") o.port = static_cast<std::uint16_t>(std::stoi(v));
        else if (k == "--name") o.name = v;
        else if (k == "--broadcast") {
            if (!bcast_set) o.broadcast.clear();
            bcast_set = true;
            if (v != "none") o.broadcast.push_back(v);
        } else if (k == "--seed") o.seeds.push_back(v);
        else if (k == "--endpoint") o.announce.endpoints["rpc"] = v;
        else if (k == "--service") o.announce.services.push_back({v, "1"});
        else if (k == "--interval") o.interval = std::chrono::milliseconds(std::stoi(v));
        else if (k == "--expect") expect = static_cast<std::size_t>(std::stoi(v));
        else {
            std::fprintf(stderr, "probe: unknown option %s\n", k.c_str());
            return 2;
        }
    }
    std::mutex mu;
    std::set<disc::node_id> live;
    bool done = false;
    disc::agent a(o);
    a.on_event([&](const disc::event& e) {
        std::lock_guard lk(mu);
        if (e.kind == disc::event_kind::leave) {
            live.erase(e.node.id);
            std::printf("LEAVE %s %s\n", e.node.name.c_str(), std::string(disc::to_string(e.reason)).c_str());
        } else {
            live.insert(e.node.id);
            auto ep = e.node.endpoints.find("rpc");
            std::printf("%s %s %s %s\n", e.kind == disc::event_kind::join ? "JOIN" : "UPDATE", e.node.name.c_str(),
                        e.node.host.c_str(), ep == e.node.endpoints.end() ? "-" : ep->second.c_str());
        }
        if (!done && expect > 0 && live.size() >= expect) {
            done = true;
            std::printf("DONE\n");
        }
        std::fflush(stdout);
    });
    try {
        a.start();
    } catch (const std::exception& e) {
        std::printf("ERROR %s\n", e.what());
        std::fflush(stdout);
        return 1;
    }
    std::printf("STARTED %s\n", disc::to_hex(a.id()).c_str());
    std::fflush(stdout);
    pollfd p{0, POLLIN, 0};
    const auto end = clk::now() + 20s;
    while (clk::now() < end) {
        if (::poll(&p, 1, 100) > 0) {
            char c;
            if (::read(0, &c, 1) <= 0) break;  // EOF: the test is done with us
        }
    }
    a.stop();
    return 0;
}

int main(int argc, char** argv) {
    if (argc > 1 && std::string_view(argv[1]) == "--probe") return probe_main(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);
    return Catch::Session().run(argc, argv);
}

// ---------------------------------------------------------------- codec

TEST_CASE("beacon: test vector encodes and decodes exactly", "[discovery]") {
    const auto b = vector_hello();
    const auto bytes = disc::encode(b);
    CHECK(to_hex(bytes) == vector_hello_hex);
    disc::beacon back;
    REQUIRE(disc::decode(from_hex(vector_hello_hex), back) == disc::decode_error::none);
    CHECK(back == b);
    CHECK(disc::encode(back) == bytes);

    // The spec carries the same vector.
    std::string doc = read_file(std::string(PLEXUS_SOURCE_DIR) + "/docs/PROTOCOL.md");
    std::erase_if(doc, [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
    CHECK(doc.find(vector_hello_hex) != std::string::npos);
}

TEST_CASE("beacon: tolerant reader, strict bounds", "[discovery]") {
    auto b = vector_hello();
    auto bytes = disc::encode(b);

    SECTION("extra trailing array elements are ignored") {
        auto more = bytes;
        REQUIRE(more[0] == 0x9c);  // fixarray of 12
        more[0] = 0x9d;            // 13 elements: one more, appended
        more.push_back(0xc0);      // nil
        disc::beacon back;
        REQUIRE(disc::decode(more, back) == disc::decode_error::none);
        CHECK(back == b);
    }
    SECTION("every truncation is malformed, never a crash") {
        for (std::size_t n = 0; n < bytes.size(); ++n) {
            disc::beacon back;
            auto r = disc::decode(std::span(bytes.data(), n), back);
            CHECK(r != disc::decode_error::none);
        }
    }
    SECTION("trailing bytes after the array are malformed") {
        auto more = bytes;
        more.push_back(0x00);
        disc::beacon back;
        CHECK(disc::decode(more, back) == disc::decode_error::malformed);
    }
    SECTION("writer refuses out-of-bound fields") {
        auto bad = b;
        bad.cluster = std::string(65, 'x');
        CHECK_THROWS_AS(disc::encode(bad), std::invalid_argument);
        bad = b;
        bad.body.topics.push_back(std::string(256, 't'));
        CHECK_THROWS_AS(disc::encode(bad), std::invalid_argument);
    }
    SECTION("node id hex") {
        disc::node_id id{};
        REQUIRE(disc::parse_node_id(disc::to_hex(b.id), id));
        CHECK(id == b.id);
        CHECK_FALSE(disc::parse_node_id("xyz", id));
    }
}

// ---------------------------------------------------------------- one host

TEST_CASE("agents on one host see each other, with payload, at once", "[discovery]") {
    const auto cluster = unique_cluster("see");
    const auto port = free_udp_port();
    recorder ra, rb, rc;
    auto oa = options(cluster, port, "alpha");
    oa.announce.endpoints["rpc"] = "tcp://0.0.0.0:5555";
    oa.announce.endpoints["pub"] = "tcp://127.0.0.1:5556";
    oa.announce.services.push_back({"accounts", "1.2.0"});
    oa.announce.topics.push_back("accounts.changed");
    auto ob = options(cluster, port, "beta");
    ob.announce.endpoints["rpc"] = "tcp://*:6000";
    ob.announce.services.push_back({"accounts", "1.3.0"});
    auto oc = options(cluster, port, "gamma");
    oc.advertise = "127.0.0.9";
    oc.announce.endpoints["rpc"] = "tcp://0.0.0.0:7000";
    disc::agent a(oa), b(ob), c(oc);
    ra.attach(a);
    rb.attach(b);
    rc.attach(c);
    const auto t0 = clk::now();
    a.start();
    b.start();
    c.start();
    // The interval is 1 s: without the immediate unicast answer a late starter would
    // wait for it; the bound still allows for a slow machine.
    REQUIRE(ra.wait_live(2));
    REQUIRE(rb.wait_live(2));
    REQUIRE(rc.wait_live(2));
    WARN("three agents converged in "
         << std::chrono::duration_cast<std::chrono::microseconds>(clk::now() - t0).count() << " us");

    auto seen_by_b = rb.wait_for(disc::event_kind::join, "alpha");
    REQUIRE(seen_by_b);
    const auto& pa = seen_by_b->node;
    CHECK(pa.id == a.id());
    CHECK(pa.incarnation == a.incarnation());
    CHECK(pa.endpoints.at("rpc") == "tcp://127.0.0.1:5555");  // wildcard rewritten to the source
    CHECK(pa.endpoints.at("pub") == "tcp://127.0.0.1:5556");
    REQUIRE(pa.find_service("accounts"));
    CHECK(pa.find_service("accounts")->version == "1.2.0");
    CHECK(pa.topics == std::vector<std::string>{"accounts.changed"});
    CHECK(pa.host == "127.0.0.1");
    CHECK(pa.interval == 1000ms);

    auto pb = a.find(b.id());
    REQUIRE(pb);
    CHECK(pb->endpoints.at("rpc") == "tcp://127.0.0.1:6000");  // "*" too
    auto pc = a.find(c.id());
    REQUIRE(pc);
    CHECK(pc->endpoints.at("rpc") == "tcp://127.0.0.9:7000");  // the advertised host wins

    auto instances = c.find_service("accounts");
    REQUIRE(instances.size() == 2);
    CHECK(instances[0].name == "alpha");
    CHECK(instances[1].name == "beta");
    CHECK(c.find_service("nothing").empty());
    CHECK(a.peers().size() == 2);

    SECTION("update_payload re-announces at once") {
        auto p = c.current_payload();
        p.services.push_back({"accounts", "2.0.0"});
        c.update_payload(p);
        auto up = ra.wait_for(disc::event_kind::update, "gamma");
        REQUIRE(up);
        REQUIRE(up->node.find_service("accounts"));
        CHECK(a.find_service("accounts").size() == 2);  // beta and gamma; an agent does not list itself
    }
    SECTION("a throwing handler does not stop the agent") {
        recorder rd;
        disc::agent d(options(cluster, port, "delta"));
        d.on_event([](const disc::event&) { throw std::runtime_error("handler bug"); });
        rd.attach(d);
        d.start();
        CHECK(rd.wait_live(3));
    }
}

// A watching agent `a` and a second agent `b` on a fresh cluster and port; constructed once
// `a` saw `b` join.
struct watched_pair {
    watched_pair(const std::string& what, const std::string& a_name, const std::string& b_name,
                 std::chrono::milliseconds interval)
        : cluster(unique_cluster(what)), port(free_udp_port()), a(options(cluster, port, a_name, interval)),
          b(options(cluster, port, b_name, interval)) {
        ra.attach(a);
        a.start();
        b.start();
        REQUIRE(ra.wait_for(disc::event_kind::join, b_name));
    }
    std::string cluster;
    std::uint16_t port;
    recorder ra;
    disc::agent a;
    disc::agent b;
};

TEST_CASE("graceful stop: peers drop the node at once", "[discovery]") {
    watched_pair p("leave", "stays", "goes", 1000ms);
    const auto t0 = clk::now();
    p.b.stop();
    // Expiry would take 3 x 1 s; the reason tells a leave beacon from expiry.
    auto left = p.ra.wait_for(disc::event_kind::leave, "goes", 2500ms);
    REQUIRE(left);
    CHECK(left->reason == disc::leave_reason::graceful);
    WARN("leave seen "
         << std::chrono::duration_cast<std::chrono::microseconds>(clk::now() - t0).count() << " us after stop()");
    CHECK(p.a.peers().empty());
    CHECK_FALSE(p.b.running());
    p.b.stop();  // idempotent
}

TEST_CASE("expiry: a silent node is dropped after missed intervals", "[discovery]") {
    watched_pair p("expiry", "watcher", "crasher", 50ms);
    const auto t0 = clk::now();
    p.b.halt();  // no leave beacon
    auto left = p.ra.wait_for(disc::event_kind::leave, "crasher", 3s);
    REQUIRE(left);
    CHECK(left->reason == disc::leave_reason::expired);
    WARN("expired after " << std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count()
                          << " ms (3 x 50 ms)");
}

TEST_CASE("mark_dead drops a peer and ignores its late beacons, forget does not", "[discovery]") {
    watched_pair p("dead", "framework", "flaky", 50ms);
    auto& ra = p.ra;
    auto& a = p.a;
    auto& b = p.b;

    a.forget(b.id());
    auto f = ra.wait_for(disc::event_kind::leave, "flaky");
    REQUIRE(f);
    CHECK(f->reason == disc::leave_reason::forgotten);
    // Its next beacon brings it back.
    REQUIRE(ra.wait([](const auto& evs) {
        return std::count_if(evs.begin(), evs.end(), [](const auto& e) { return e.kind == disc::event_kind::join; }) == 2;
    }));

    a.mark_dead(b.id());
    REQUIRE(ra.wait([](const auto& evs) { return evs.back().reason == disc::leave_reason::dead; }));
    // Beacons of that incarnation are now counted as stale, not joined.
    REQUIRE(eventually([&] { return a.stats().stale >= 2; }));
    CHECK_FALSE(a.find(b.id()));
    // After the hold (3 x 50 ms) a still-beaconing node is accepted again.
    REQUIRE(ra.wait([](const auto& evs) { return evs.back().kind == disc::event_kind::join; }));
}

TEST_CASE("restart with a new incarnation replaces the entry", "[discovery]") {
    const auto cluster = unique_cluster("restart");
    const auto port = free_udp_port();
    recorder ra;
    disc::agent a(options(cluster, port, "observer"));
    ra.attach(a);
    a.start();
    const auto id = disc::random_node_id();
    auto ob = options(cluster, port, "phoenix");
    ob.id = id;
    ob.incarnation = 1000;
    {
        disc::agent b1(ob);
        b1.start();
        REQUIRE(ra.wait_for(disc::event_kind::join, "phoenix"));
        b1.halt();  // crashed: no leave
    }
    ob.incarnation = 2000;
    ob.announce.endpoints["rpc"] = "tcp://127.0.0.1:9999";
    disc::agent b2(ob);
    b2.start();
    REQUIRE(ra.wait([](const auto& evs) {
        return std::count_if(evs.begin(), evs.end(), [](const auto& e) { return e.kind == disc::event_kind::join; }) == 2;
    }));
    const auto evs = ra.events();
    REQUIRE(evs.size() == 3);
    CHECK(evs[1].kind == disc::event_kind::leave);
    CHECK(evs[1].reason == disc::leave_reason::replaced);
    CHECK(evs[1].node.incarnation == 1000);
    CHECK(evs[2].node.incarnation == 2000);
    auto p = a.find(id);
    REQUIRE(p);
    CHECK(p->incarnation == 2000);
    CHECK(p->endpoints.at("rpc") == "tcp://127.0.0.1:9999");
    CHECK(a.peers().size() == 1);

    // A beacon of the old incarnation arriving late is stale, not a regression.
    auto old = vector_hello();
    old.cluster = cluster;
    old.id = id;
    old.incarnation = 1000;
    old.gossip.clear();
    raw_socket raw;
    const auto before = a.stats().stale;
    raw.broadcast(a.port(), disc::encode(old));
    REQUIRE(eventually([&] { return a.stats().stale > before; }));
    CHECK(a.find(id)->incarnation == 2000);
}

TEST_CASE("clusters on the same host and port never see each other", "[discovery]") {
    const auto port = free_udp_port();
    const auto red = unique_cluster("red"), blue = unique_cluster("blue");
    recorder r1, r2, r3;
    disc::agent a1(options(red, port, "red-1")), a2(options(red, port, "red-2")),
        b1(options(blue, port, "blue-1", 100ms));
    r1.attach(a1);
    r2.attach(a2);
    r3.attach(b1);
    b1.start();
    a1.start();
    a2.start();
    REQUIRE(r1.wait_live(1));
    REQUIRE(r2.wait_live(1));
    REQUIRE(eventually([&] { return b1.stats().foreign_cluster >= 2 && a1.stats().foreign_cluster >= 1; }));
    CHECK(b1.peers().empty());
    CHECK(r3.events().empty());
    CHECK(a1.peers().size() == 1);
    CHECK(a1.peers()[0].name == "red-2");
}

TEST_CASE("malformed, foreign and oversized datagrams are counted and ignored", "[discovery]") {
    const auto cluster = unique_cluster("bad");
    const auto port = free_udp_port();
    recorder ra;
    disc::agent a(options(cluster, port, "target"));
    ra.attach(a);
    a.start();
    raw_socket raw;

    auto good = vector_hello();
    good.cluster = cluster;
    good.gossip.clear();
    good.id = disc::random_node_id();
    const auto good_bytes = disc::encode(good);

    // Random bytes.
    std::vector<std::uint8_t> junk(100);
    for (auto& x : junk) x = static_cast<std::uint8_t>(rng()());
    junk[0] = 0xc1;  // never valid MessagePack
    raw.send(a.port(), junk);
    REQUIRE(eventually([&] { return a.stats().malformed == 1; }));

    // Valid MessagePack, not a beacon.
    {
        msgpack::sbuffer buf;
        msgpack::packer<msgpack::sbuffer> pk(buf);
        pk.pack_map(1);
        pk.pack(std::string("hello"));
        pk.pack(1);
        raw.send(a.port(), std::vector<std::uint8_t>(buf.data(), buf.data() + buf.size()));
        REQUIRE(eventually([&] { return a.stats().wrong_magic == 1; }));
    }
    // Another version.
    {
        auto v2 = good_bytes;
        REQUIRE(v2[6] == 0x01);  // after fixarray + "PLXD"
        v2[6] = 0x02;
        raw.send(a.port(), v2);
        REQUIRE(eventually([&] { return a.stats().unsupported_version == 1; }));
    }
    // Unknown kind.
    {
        auto k = good_bytes;
        REQUIRE(k[7] == 0x00);
        k[7] = 0x07;
        raw.send(a.port(), k);
        REQUIRE(eventually([&] { return a.stats().unknown_kind == 1; }));
    }
    // A foreign cluster.
    {
        auto f = good;
        f.cluster = cluster + "-other";
        raw.send(a.port(), disc::encode(f));
        REQUIRE(eventually([&] { return a.stats().foreign_cluster >= 1; }));
    }
    // Oversized.
    raw.send(a.port(), std::vector<std::uint8_t>(2000, 0x90));
    REQUIRE(eventually([&] { return a.stats().oversized == 1; }));
    // A node id of the wrong length.
    {
        auto bad = good_bytes;
        auto pos = to_hex(bad).find("c410");
        REQUIRE(pos != std::string::npos);
        bad[pos / 2 + 1] = 0x0f;
        raw.send(a.port(), bad);
        REQUIRE(eventually([&] { return a.stats().malformed == 2; }));
    }
    // Fuzz: bit flips and truncations of a good beacon, and noise.
    int sent = 0;
    for (int i = 0; i < 300; ++i) {
        auto m = good_bytes;
        if (i % 3 == 0) {
            m.resize(rng()() % m.size());
        } else {
            for (int j = 0; j < 3; ++j) m[rng()() % m.size()] ^= static_cast<std::uint8_t>(1u << (rng()() % 8));
        }
        raw.send(a.port(), m);
        ++sent;
        if (i % 50 == 0) std::this_thread::sleep_for(1ms);  // stay under the socket buffer
    }
    // Every datagram lands in one bucket (flipped bits may still decode, e.g. a changed
    // name or an id that joins: those are accepted).
    REQUIRE(eventually([&] {
        auto s = a.stats();
        return s.ignored() + s.accepted + s.self >= static_cast<std::uint64_t>(sent) + 7;
    }));
    CHECK(a.running());

    // Still working: a well-formed hello from a new node joins and is answered at once.
    raw.send(a.port(), good_bytes);
    auto j = ra.wait(
        [&](const auto& evs) {
            return std::any_of(evs.begin(), evs.end(), [&](const auto& e) { return e.node.id == good.id; });
        });
    CHECK(j);
    disc::beacon answer;
    bool answered = false;
    for (auto bytes = raw.receive(2s); !bytes.empty(); bytes = raw.receive(500ms)) {
        if (disc::decode(bytes, answer) == disc::decode_error::none && answer.id == a.id()) {
            answered = true;
            break;
        }
    }
    CHECK(answered);
    CHECK(answer.flags == 0);  // unicast
    CHECK(answer.cluster == cluster);
}

TEST_CASE("seeds without broadcast: A seeds B, B seeds C, all converge by gossip", "[discovery]") {
    const auto cluster = unique_cluster("seeds");
    recorder ra, rb, rc;
    // No broadcast, a port of its own, and at most one seed: the agent `seed`.
    auto seeded = [&](const std::string& name, const disc::agent* seed) {
        auto o = options(cluster, 0, name, 100ms);
        o.broadcast.clear();
        if (seed) o.seeds = {"127.0.0.1:" + std::to_string(seed->port())};
        return o;
    };
    const auto t0 = clk::now();
    disc::agent c(seeded("c", nullptr));
    rc.attach(c);
    c.start();
    disc::agent b(seeded("b", &c));
    rb.attach(b);
    b.start();
    disc::agent a(seeded("a", &b));
    ra.attach(a);
    a.start();
    REQUIRE(ra.wait_live(2));
    REQUIRE(rb.wait_live(2));
    REQUIRE(rc.wait_live(2));
    WARN("seed/gossip convergence " << std::chrono::duration_cast<std::chrono::microseconds>(clk::now() - t0).count()
                                    << " us after the first start");
    CHECK(a.stats().gossip_contacts + c.stats().gossip_contacts >= 1);
    // Stays converged over several expiry windows (unicast keeps them alive).
    std::this_thread::sleep_for(500ms);  // not synchronisation: the observation window
    CHECK(a.peers().size() == 2);
    CHECK(c.peers().size() == 2);
    for (auto* r : {&ra, &rb, &rc}) {
        auto evs = r->events();
        CHECK(std::none_of(evs.begin(), evs.end(), [](const auto& e) { return e.kind == disc::event_kind::leave; }));
    }
}

TEST_CASE("multicast on loopback with TTL 0", "[discovery]") {
    const auto cluster = unique_cluster("mcast");
    const auto port = free_udp_port();
    recorder ra, rb;
    auto o = options(cluster, port, "m1");
    o.broadcast.clear();
    o.multicast = disc::multicast_options{"239.255.80." + std::to_string(1 + rng()() % 250), "127.0.0.1", 0};
    disc::agent a(o);
    o.name = "m2";
    disc::agent b(o);
    ra.attach(a);
    rb.attach(b);
    a.start();
    b.start();
    REQUIRE(ra.wait_live(1));
    REQUIRE(rb.wait_live(1));
    CHECK(a.peers()[0].name == "m2");
    CHECK(a.stats().send_errors == 0);
}

TEST_CASE("options are validated, port 0 picks a free port", "[discovery]") {
    auto o = options(unique_cluster("opts"), 0, "x");
    disc::agent a(o);  // default broadcast target with port 0: filled in by start()
    a.start();
    CHECK(a.port() != 0);
    CHECK_THROWS_AS(a.start(), std::logic_error);
    a.stop();
    auto bad = o;
    bad.cluster.clear();
    CHECK_THROWS_AS(disc::agent(bad), std::invalid_argument);
    bad = o;
    bad.interval = 1ms;
    CHECK_THROWS_AS(disc::agent(bad), std::invalid_argument);
    bad = o;
    bad.seeds = {"no-such-host.invalid:1"};
    CHECK_THROWS_AS(disc::agent(bad), std::invalid_argument);
    bad = o;
    bad.multicast = disc::multicast_options{"10.0.0.1", "127.0.0.1", 0};
    CHECK_THROWS_AS(disc::agent(bad), std::invalid_argument);
    bad = o;
    bad.announce.endpoints["rpc"] = std::string(300, 'e');
    CHECK_THROWS_AS(disc::agent(bad), std::invalid_argument);
    // Handlers may not stop their own agent.
    recorder rb;
    std::atomic<bool> threw{false};
    disc::agent b(options(o.cluster, free_udp_port(), "b"));
    b.on_event([&](const disc::event&) {
        try {
            b.stop();
        } catch (const std::logic_error&) {
            threw = true;
        }
    });
    rb.attach(b);
    b.start();
    disc::agent d(options(o.cluster, b.port(), "d"));
    d.start();
    REQUIRE(rb.wait_live(1));
    CHECK(threw);
}

TEST_CASE("a payload larger than one datagram is split and reassembled", "[discovery]") {
    const auto cluster = unique_cluster("split");
    const auto port = free_udp_port();
    recorder rb;
    auto oa = options(cluster, port, "big");
    for (int i = 0; i < 60; ++i)
        oa.announce.services.push_back({"service-with-a-long-name-" + std::to_string(i), "1.0." + std::to_string(i)});
    oa.announce.endpoints["rpc"] = "tcp://0.0.0.0:5555";
    disc::agent b(options(cluster, port, "small"));
    rb.attach(b);
    b.start();
    disc::agent a(oa);
    a.start();
    auto j = rb.wait_for(disc::event_kind::join, "big");
    REQUIRE(j);
    CHECK(j->node.services == oa.announce.services);
    CHECK(j->node.endpoints.at("rpc") == "tcp://127.0.0.1:5555");
    CHECK(a.stats().sent >= 3);  // several datagrams per round
    CHECK(a.stats().sent_bytes / a.stats().sent <= disc::default_datagram_size);

    disc::payload huge;
    for (int i = 0; i < 2000; ++i) huge.topics.push_back(std::string(200, 'x') + std::to_string(i));
    CHECK_THROWS_AS(a.update_payload(huge), std::invalid_argument);
}

TEST_CASE("separate processes on one host share the port, a killed one expires", "[discovery]") {
    const auto cluster = unique_cluster("procs");
    const auto port = free_udp_port();
    recorder ra;
    disc::agent a(options(cluster, port, "parent", 50ms));
    ra.attach(a);
    a.start();
    const auto exe = self_exe();
    auto args = [&](const std::string& name) {
        return std::vector<std::string>{exe, "--probe", "--cluster", cluster, "--port", std::to_string(port),
                                        "--name", name, "--interval", "50", "--expect", "2",
                                        "--endpoint", "tcp://0.0.0.0:4000"};
    };
    child p1(args("child-1")), p2(args("child-2"));
    REQUIRE(ra.wait_live(2));
    REQUIRE(eventually([&] { return p1.has_line("DONE") && p2.has_line("DONE"); }));
    CHECK(p1.has_line("JOIN parent 127.0.0.1 -"));
    CHECK(p1.has_line("JOIN child-2 127.0.0.1 tcp://127.0.0.1:4000"));

    p2.kill_now();
    auto left = ra.wait_for(disc::event_kind::leave, "child-2", 3s);
    REQUIRE(left);
    CHECK(left->reason == disc::leave_reason::expired);

    p1.close_stdin();  // graceful
    auto left1 = ra.wait_for(disc::event_kind::leave, "child-1", 3s);
    REQUIRE(left1);
    CHECK(left1->reason == disc::leave_reason::graceful);
    CHECK(p1.wait_exit(5s) == 0);
}

// ---------------------------------------------------------------- several hosts

namespace {

// The LAN of tests/netns.hpp at 10.200.0.1-3/24.
class netns_lan : public netns::lan {
public:
    netns_lan() : netns::lan("plxd", "10.200.0.", "v") {}
};

} // namespace

TEST_CASE("several hosts: three network namespaces discover each other by LAN broadcast", "[discovery]") {
    if (::geteuid() != 0 || sh("ip netns list") != 0) {
        WARN("SKIPPED: network namespaces need root and iproute2 (`ip`); this test did not run");
        return;
    }
    netns_lan lan;
    if (!lan.ok()) {
        WARN("SKIPPED: could not create network namespaces here (ip netns add failed); this test did not run");
        return;
    }
    const auto cluster = unique_cluster("lan");
    const auto exe = self_exe();
    const auto port = std::to_string(free_udp_port());  // free here; a fresh namespace binds nothing
    std::vector<std::unique_ptr<child>> probes;
    const auto t0 = clk::now();
    for (char h : {'a', 'b', 'c'})
        probes.push_back(std::make_unique<child>(std::vector<std::string>{
            "ip", "netns", "exec", lan.ns(h), exe, "--probe", "--cluster", cluster, "--port", port, "--name",
            std::string("host-") + h, "--broadcast", "10.200.0.255", "--interval", "200", "--expect", "2",
            "--endpoint", "tcp://0.0.0.0:5555"}));
    const bool all = eventually(
        [&] { return std::all_of(probes.begin(), probes.end(), [](auto& p) { return p->has_line("DONE"); }); }, 10s);
    WARN("namespaces: all three saw each other " << std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count() << " ms after launch");
    for (auto& p : probes)
        for (const auto& l : p->lines()) UNSCOPED_INFO(l);
    REQUIRE(all);
    // Each saw the other two at their LAN address, wildcard endpoints rewritten.
    CHECK(probes[0]->has_line("JOIN host-b 10.200.0.2 tcp://10.200.0.2:5555"));
    CHECK(probes[0]->has_line("JOIN host-c 10.200.0.3 tcp://10.200.0.3:5555"));
    CHECK(probes[1]->has_line("JOIN host-a 10.200.0.1 tcp://10.200.0.1:5555"));
    CHECK(probes[1]->has_line("JOIN host-c 10.200.0.3 tcp://10.200.0.3:5555"));
    CHECK(probes[2]->has_line("JOIN host-a 10.200.0.1 tcp://10.200.0.1:5555"));
    CHECK(probes[2]->has_line("JOIN host-b 10.200.0.2 tcp://10.200.0.2:5555"));
    // Host b leaves gracefully: a and c drop it by its leave beacon.
    const auto t1 = clk::now();
    probes[1]->close_stdin();
    CHECK(probes[1]->wait_exit(5s) == 0);
    CHECK(eventually([&] { return probes[0]->has_line("LEAVE host-b graceful") && probes[2]->has_line("LEAVE host-b graceful"); }));
    WARN("namespaces: leave seen " << std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t1).count() << " ms after closing stdin");
    for (auto& p : probes) p->close_stdin();
    for (auto& p : probes) p->wait_exit(5s);
}

// ---------------------------------------------------------------- figures (hidden)

// Not tests: run with `plexus_discovery_tests "[.discovery-bench]" -s`.
TEST_CASE("discovery figures", "[.discovery-bench]") {
    using std::chrono::duration_cast;
    using us = std::chrono::microseconds;
    {
        std::vector<double> samples;
        for (int i = 0; i < 20; ++i) {
            const auto cluster = unique_cluster("two");
            const auto port = free_udp_port();
            recorder ra, rb;
            disc::agent a(options(cluster, port, "a")), b(options(cluster, port, "b"));
            ra.attach(a);
            rb.attach(b);
            a.start();
            // Start b later than a's first beacon: the case the immediate answer is for.
            std::this_thread::sleep_for(20ms);
            const auto t0 = clk::now();
            b.start();
            REQUIRE(ra.wait_live(1));
            REQUIRE(rb.wait_live(1));
            samples.push_back(static_cast<double>(duration_cast<us>(clk::now() - t0).count()));
        }
        std::sort(samples.begin(), samples.end());
        std::cout << "two agents, late joiner, start -> both see each other: p50 " << samples[10] << " us, max "
                  << samples.back() << " us (20 runs)\n";
    }
    for (std::size_t n : {50}) {
        const auto cluster = unique_cluster("fifty");
        const auto port = free_udp_port();
        std::vector<std::unique_ptr<recorder>> recs;
        std::vector<std::unique_ptr<disc::agent>> agents;
        for (std::size_t i = 0; i < n; ++i) {
            auto o = options(cluster, port, "n" + std::to_string(i));
            o.announce.endpoints["rpc"] = "tcp://0.0.0.0:" + std::to_string(20000 + i);
            o.announce.endpoints["pub"] = "tcp://0.0.0.0:" + std::to_string(30000 + i);
            o.announce.services.push_back({"svc" + std::to_string(i % 5), "1.0.0"});
            o.announce.topics.push_back("topic." + std::to_string(i));
            recs.push_back(std::make_unique<recorder>());
            agents.push_back(std::make_unique<disc::agent>(o));
            recs.back()->attach(*agents.back());
        }
        const auto t0 = clk::now();
        for (auto& a : agents) a->start();
        for (auto& r : recs) REQUIRE(r->wait_live(n - 1, 10s));
        const auto conv = duration_cast<us>(clk::now() - t0).count();
        std::this_thread::sleep_for(2s);  // let the start-up traffic settle
        std::uint64_t b0 = 0, d0 = 0;
        for (auto& a : agents) b0 += a->stats().sent_bytes, d0 += a->stats().sent;
        std::this_thread::sleep_for(5s);  // steady state measurement window
        std::uint64_t b1 = 0, d1 = 0;
        for (auto& a : agents) b1 += a->stats().sent_bytes, d1 += a->stats().sent;
        std::cout << n << " agents in one process, host-local broadcast: all see " << n - 1 << " in " << conv / 1000.0
                  << " ms; steady state " << static_cast<double>(b1 - b0) / static_cast<double>(n) / 5.0
                  << " B/s/node sent, " << static_cast<double>(d1 - d0) / static_cast<double>(n) / 5.0
                  << " datagrams/s/node (interval 1 s)\n";
        disc::counters sum;
        for (auto& a : agents) {
            auto c = a->stats();
            sum.send_errors += c.send_errors;
            sum.answers += c.answers;
            sum.gossip_contacts += c.gossip_contacts;
            sum.stale += c.stale;
            sum.received += c.received;
            sum.sent += c.sent;
        }
        std::cout << "  totals: sent " << sum.sent << ", received " << sum.received << ", answers " << sum.answers
                  << ", gossip contacts " << sum.gossip_contacts << ", stale " << sum.stale << ", send errors "
                  << sum.send_errors << "\n";
    }
    {
        // Seeds only: every node seeds node 0; unicast to every peer each interval.
        const std::size_t n = 20;
        const auto cluster = unique_cluster("seedbench");
        std::vector<std::unique_ptr<recorder>> recs;
        std::vector<std::unique_ptr<disc::agent>> agents;
        for (std::size_t i = 0; i < n; ++i) {
            auto o = options(cluster, 0, "s" + std::to_string(i));
            o.broadcast.clear();
            if (i > 0) o.seeds = {"127.0.0.1:" + std::to_string(agents[0]->port())};
            o.announce.endpoints["rpc"] = "tcp://0.0.0.0:" + std::to_string(20000 + i);
            o.announce.services.push_back({"svc", "1.0.0"});
            recs.push_back(std::make_unique<recorder>());
            agents.push_back(std::make_unique<disc::agent>(o));
            recs.back()->attach(*agents.back());
            if (i == 0) agents[0]->start();
        }
        const auto t0 = clk::now();
        for (std::size_t i = 1; i < n; ++i) agents[i]->start();
        for (auto& r : recs) REQUIRE(r->wait_live(n - 1, 10s));
        const auto conv = duration_cast<us>(clk::now() - t0).count();
        std::uint64_t b0 = 0;
        for (auto& a : agents) b0 += a->stats().sent_bytes;
        std::this_thread::sleep_for(3s);
        std::uint64_t b1 = 0;
        for (auto& a : agents) b1 += a->stats().sent_bytes;
        std::cout << n << " agents, one seed, no broadcast: all converge in " << conv / 1000.0 << " ms; steady "
                  << static_cast<double>(b1 - b0) / static_cast<double>(n) / 3.0 << " B/s/node\n";
    }
}
