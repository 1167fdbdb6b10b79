// Shared helpers of the Plexus tests: bounded waits, loopback endpoints, raw sockets.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>

#include <zmq.hpp>

#include <plexus/envelope.hpp>
#include <plexus/node.hpp>

namespace testutil {

using namespace std::chrono_literals;

// Polls `pred` until it holds or `limit` passes; true when it held. For conditions
// that no event announces (counters of another component).
inline bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 5000ms) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(2ms);
    }
    return pred();
}

// A latch with a bounded wait, for conditions a callback announces.
class signal {
public:
    void notify(int n = 1) {
        std::lock_guard lk(mu_);
        count_ += n;
        cv_.notify_all();
    }
    bool wait_for_count(int n, std::chrono::milliseconds limit = 5000ms) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, limit, [&] { return count_ >= n; });
    }
    int count() {
        std::lock_guard lk(mu_);
        return count_;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int count_ = 0;
};

// Publishes "probe" events on `topic` until `seen` counts more than `already`: a
// subscription is asynchronous, and events published before it reaches the publisher
// are lost. False when none arrived after 500 probes (about 5 s).
inline bool await_subscription(plexus::node& pub, const std::string& topic, signal& seen, int already = 0) {
    for (int i = 0; i < 500 && seen.count() <= already; ++i) {
        pub.publish_raw(topic, "probe");
        seen.wait_for_count(already + 1, std::chrono::milliseconds(10));
    }
    return seen.count() > already;
}

// Options for a node on loopback with free ports and quiet logs.
inline plexus::node_options loopback(std::string name) {
    plexus::node_options o;
    o.name = std::move(name);
    o.bind = {"tcp://127.0.0.1:*"};
    o.pub_bind = {"tcp://127.0.0.1:*"};
    // PLEXUS_TEST_DEBUG=1: the nodes' debug lines (each request handled, peers, ...) on stderr.
    o.log = std::getenv("PLEXUS_TEST_DEBUG") ? plexus::log_level::debug : plexus::log_level::error;
    o.default_timeout = 3000ms;
    o.shutdown_timeout = 1000ms;
    return o;
}

// Binds a raw socket to a free loopback port and returns the endpoint.
inline std::string bind_any(zmq::socket_t& s) {
    s.bind("tcp://127.0.0.1:*");
    return s.get(zmq::sockopt::last_endpoint);
}

inline std::string request_bytes(std::uint64_t id, std::string service, std::string method, std::string body = {},
                                 std::optional<std::uint64_t> deadline_us = std::nullopt) {
    plexus::envelope e;
    e.kind = plexus::kind::request;
    e.id = id;
    e.service = std::move(service);
    e.method = std::move(method);
    e.body = std::move(body);
    e.deadline_us = deadline_us;
    return plexus::encode(e);
}

inline std::string str(const zmq::message_t& m) { return std::string(static_cast<const char*>(m.data()), m.size()); }

// Receives one message with a bound; false on timeout.
inline bool recv_within(zmq::socket_t& s, zmq::message_t& m, std::chrono::milliseconds limit = 3000ms) {
    zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, limit) == 0) return false;
    return s.recv(m, zmq::recv_flags::dontwait).has_value();
}

// Receives one whole multipart message with a bound; empty on timeout.
inline std::vector<zmq::message_t> recv_frames(zmq::socket_t& s, std::chrono::milliseconds limit = 3000ms) {
    std::vector<zmq::message_t> frames;
    zmq::message_t m;
    if (!recv_within(s, m, limit)) return frames;
    frames.push_back(std::move(m));
    while (frames.back().more()) {
        zmq::message_t x;
        (void)s.recv(x); // the rest of a multipart message is already there
        frames.push_back(std::move(x));
    }
    return frames;
}

// A UDP port free right now (bound to port 0 and read back), for a test's own
// discovery port; with a cluster name of its own, tests never see each other.
inline std::uint16_t free_udp_port() {
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

inline std::string unique_cluster(const char* what) {
    static std::atomic<int> n{0};
    return std::string("t-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

// Options for a node that finds its peers through discovery on this host.
inline plexus::node_options discovering(std::string name, const std::string& cluster, std::uint16_t port) {
    auto o = loopback(std::move(name));
    plexus::discovery::beacon_options d;
    d.cluster = cluster;
    d.port = port;
    d.interval = std::chrono::milliseconds(200);
    o.discovery = d;
    return o;
}

} // namespace testutil
