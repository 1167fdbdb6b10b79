// The optional HTTP endpoint of plexus-node (--metrics-port), for Prometheus:
//   GET /metrics   200, the node's metrics (text format 0.0.4)
//   GET /healthz   200, "ok"
// Anything else is 404. cpp-httplib serves it on a thread of its own and a pool of
// two; the threads inherit the creating thread's signal mask.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace plexus::nodes {

class metrics_http {
public:
    // Binds address:port (port 0: a free one; no SO_REUSEPORT, so a port another
    // process serves is an error) and serves until stop(). `metrics` is called on the
    // server's threads, concurrently. Throws std::runtime_error when it cannot bind
    // or listen.
    metrics_http(std::string address, std::uint16_t port, std::function<std::string()> metrics);
    ~metrics_http(); // stop()
    metrics_http(const metrics_http&) = delete;
    metrics_http& operator=(const metrics_http&) = delete;

    // Closes the listening socket and waits for the requests being served, 2 s at
    // most: a connection still open then (a client trickling its request) is left to
    // the process' exit, and no longer reaches `metrics`; then it returns false.
    // Idempotent; port() and url() stay valid.
    bool stop();

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    // "http://ADDRESS:PORT/metrics"; a wildcard address (0.0.0.0, ::) is given as
    // loopback, where this host reaches it.
    [[nodiscard]] std::string url() const;

private:
    void wait_running(std::chrono::milliseconds bound) const;

    struct impl;
    std::unique_ptr<impl> impl_;
    std::string address_;
    std::uint16_t port_ = 0;
};

} // namespace plexus::nodes
