#include "metrics_http.hpp"

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include <sys/socket.h>

#include <httplib.h>

namespace plexus::nodes {

namespace {
constexpr const char* prometheus_type = "text/plain; version=0.0.4; charset=utf-8";
constexpr std::chrono::milliseconds listen_bound{5000};
// How long stop() waits for the connections in progress. Well-behaved ones end within
// the 1 s I/O and keep-alive timeouts; one that trickles bytes could hold httplib's
// pool for much longer, and is abandoned instead.
constexpr std::chrono::milliseconds drain_bound{2000};
} // namespace

struct metrics_http::impl {
    httplib::Server server;
    std::thread thread;

    std::mutex mutex;
    std::condition_variable cv;
    bool listen_returned = false; // guarded by mutex

    // What /metrics serves; emptied by stop(), after which the handler no longer
    // touches it (so an abandoned connection cannot reach a destroyed node).
    std::shared_mutex source_mutex;
    std::function<std::string()> metrics;

    bool returned() {
        std::lock_guard lock(mutex);
        return listen_returned;
    }

    impl* next_abandoned = nullptr;
};

metrics_http::metrics_http(std::string address, std::uint16_t port, std::function<std::string()> metrics)
    : impl_(std::make_unique<impl>()), address_(std::move(address)) {
    impl* const i = impl_.get();
    auto& s = i->server;
    i->metrics = std::move(metrics);

    // httplib's default sets SO_REUSEPORT, which lets a second process bind the same
    // port and take half the scrapes. SO_REUSEADDR alone still allows a restart while
    // the old connections sit in TIME_WAIT.
    s.set_socket_options([](int sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    s.new_task_queue = [] { return new httplib::ThreadPool(2); };
    s.set_read_timeout(1, 0);
    s.set_write_timeout(1, 0);
    s.set_keep_alive_timeout(1);
    s.set_payload_max_length(64 * 1024);

    s.Get("/metrics", [i](const httplib::Request&, httplib::Response& res) {
        std::shared_lock lock(i->source_mutex);
        if (!i->metrics) {
            res.status = 503;
            res.set_content("stopping", "text/plain");
            return;
        }
        res.set_content(i->metrics(), prometheus_type);
    });
    s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok", "text/plain"); });
    s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        res.status = 500;
        res.set_content("internal error", "text/plain");
    });

    if (port == 0) {
        const int got = s.bind_to_any_port(address_);
        if (got <= 0) throw std::runtime_error("cannot bind HTTP to " + address_ + " on a free port");
        port_ = static_cast<std::uint16_t>(got);
    } else {
        if (!s.bind_to_port(address_, port))
            throw std::runtime_error("cannot bind HTTP to " + address_ + " port " + std::to_string(port));
        port_ = port;
    }

    i->thread = std::thread([i] {
        i->server.listen_after_bind();
        {
            std::lock_guard lock(i->mutex);
            i->listen_returned = true;
        }
        i->cv.notify_all();
    });
    // The port is bound and listening already (connections queue); wait until the
    // accept loop runs too, so that a failure to start is reported here.
    wait_running(listen_bound);
    if (i->returned()) {
        i->thread.join();
        throw std::runtime_error("HTTP server on " + address_ + " port " + std::to_string(port_) + " stopped at once");
    }
}

// httplib 0.11's stop() does nothing until listen_after_bind() has marked the server
// running (wait_until_ready() came in 0.12), and offers no event for it: poll.
void metrics_http::wait_running(std::chrono::milliseconds bound) const {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    std::unique_lock lock(impl_->mutex);
    while (!impl_->server.is_running() && !impl_->listen_returned && std::chrono::steady_clock::now() < deadline)
        impl_->cv.wait_for(lock, std::chrono::milliseconds(1));
}

metrics_http::~metrics_http() { (void)stop(); }

bool metrics_http::stop() {
    if (!impl_ || !impl_->thread.joinable()) return true;
    // Until the accept loop runs, a stop() would be lost.
    while (!impl_->server.is_running() && !impl_->returned()) wait_running(listen_bound);
    impl_->server.stop();
    bool returned = false;
    {
        std::unique_lock lock(impl_->mutex);
        returned = impl_->cv.wait_for(lock, drain_bound, [&] { return impl_->listen_returned; });
    }
    {
        std::unique_lock lock(impl_->source_mutex);
        impl_->metrics = nullptr;
    }
    if (returned) {
        impl_->thread.join();
        impl_.reset();
        return true;
    }
    // A connection still holds the server's pool. The thread and the server it runs
    // are left to the process' exit; they no longer reach the metrics source.
    impl_->thread.detach();
    // Kept reachable from here, so that leak checkers (LeakSanitizer) see it held on purpose.
    static std::atomic<impl*> abandoned{nullptr};
    impl* const i = impl_.release();
    i->next_abandoned = abandoned.load();
    while (!abandoned.compare_exchange_weak(i->next_abandoned, i)) {
    }
    return false;
}

std::string metrics_http::url() const {
    std::string host = address_;
    if (host.empty() || host == "0.0.0.0")
        host = "127.0.0.1";
    else if (host == "::")
        host = "[::1]";
    else if (host.find(':') != std::string::npos && host.front() != '[')
        host = "[" + host + "]";
    return "http://" + host + ":" + std::to_string(port_) + "/metrics";
}

} // namespace plexus::nodes
