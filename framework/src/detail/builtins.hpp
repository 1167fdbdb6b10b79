// The node's built-in interceptors: metrics, header policy, tracing, logging.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <plexus/interceptor.hpp>
#include <plexus/node.hpp>

#include "util.hpp"

namespace plexus::detail {

// Latency histogram with fixed buckets (upper bounds in microseconds); lock-free.
class histogram {
public:
    static constexpr std::array<std::uint64_t, 17> bounds_us{50,     100,    250,    500,     1000,    2500,
                                                              5000,   10000,  25000,  50000,   100000,  250000,
                                                              500000, 1000000, 2500000, 5000000, 10000000};
    void record(std::chrono::nanoseconds d) noexcept;
    // Counts per bucket (bounds_us.size() + 1, the last is +Inf), and the sum.
    [[nodiscard]] std::vector<std::uint64_t> counts() const;
    [[nodiscard]] double sum_seconds() const noexcept { return static_cast<double>(sum_ns_.load()) / 1e9; }
    // Quantile q in (0, 1], interpolated within its bucket; microseconds.
    [[nodiscard]] double quantile_us(double q) const;

private:
    std::array<std::atomic<std::uint64_t>, bounds_us.size() + 1> buckets_{};
    std::atomic<std::uint64_t> sum_ns_{0};
};

struct method_metrics {
    std::string service, method;
    std::atomic<std::uint64_t> calls{0}, in_flight{0};
    std::array<std::atomic<std::uint64_t>, 18> by_code{}; // index = code value; unknown -> 2
    histogram latency;
    [[nodiscard]] std::uint64_t errors() const noexcept;
};

// Per-method counters for the calls a node handles (server side) and makes (client
// side). Server methods are registered at start and read without locks; client
// targets are created on first use.
class metrics_interceptor final : public interceptor {
public:
    void add_server_method(std::string service, std::string method);
    method_metrics* server(std::string_view service, std::string_view method) const noexcept;
    method_metrics& client(std::string_view service, std::string_view method);
    // Counts a call answered without reaching the interceptors (expired on arrival).
    void record_early(std::string_view service, std::string_view method, code c);

    status before_handle(call_info& c) override;
    void after_handle(const call_info& c, const status& s, std::chrono::nanoseconds d) override;
    void after_call(const call_info& c, const status& s, std::chrono::nanoseconds d) override;

    [[nodiscard]] std::vector<const method_metrics*> server_methods() const;
    [[nodiscard]] std::vector<const method_metrics*> client_methods() const;

private:
    // Tells instances apart in the per-thread caches (an address may be reused).
    static inline std::atomic<std::uint64_t> next_id_{1};
    const std::uint64_t id_ = next_id_.fetch_add(1);
    std::vector<std::unique_ptr<method_metrics>> server_;
    mutable std::mutex client_mu_;
    std::map<std::string, std::unique_ptr<method_metrics>, std::less<>> client_;
};

class policy_interceptor final : public interceptor {
public:
    explicit policy_interceptor(header_policy p) : p_(std::move(p)) {}
    status before_handle(call_info& c) override;
    status before_call(call_info& c) override;
    status before_publish(event_info& e) override;
    status before_deliver(event_info& e) override;
    // Whether a key of a handler's context stays behind when it calls or publishes.
    [[nodiscard]] bool hop_by_hop(std::string_view key) const noexcept;
    // Whether a key is removed from what arrives (header_policy::reject_inbound).
    [[nodiscard]] bool rejected_inbound(std::string_view key) const noexcept {
        return std::find(p_.reject_inbound.begin(), p_.reject_inbound.end(), key) != p_.reject_inbound.end();
    }

private:
    [[nodiscard]] status check_size(const headers& h, std::string_view what) const;
    header_policy p_;
};

class tracing_interceptor final : public interceptor {
public:
    tracing_interceptor(trace_mode mode, std::size_t max_chain) : mode_(mode), max_chain_(max_chain) {}
    status before_handle(call_info& c) override;
    status before_call(call_info& c) override;
    status before_publish(event_info& e) override;
    status before_deliver(event_info& e) override;

private:
    trace_mode mode_;
    std::size_t max_chain_;
};

class logging_interceptor final : public interceptor {
public:
    explicit logging_interceptor(const logger& log) : log_(log) {}
    void after_handle(const call_info& c, const status& s, std::chrono::nanoseconds d) override;

private:
    const logger& log_;
};

// Runs the "before" hooks in order; on rejection returns its status and how many ran.
template <class Hook>
status run_before(const std::vector<std::shared_ptr<interceptor>>& chain, std::size_t& ran, Hook&& hook) {
    ran = 0;
    for (auto& i : chain) {
        status s = hook(*i);
        ++ran;
        if (!s.ok()) return s;
    }
    return {};
}
// Runs the "after" hooks of the first `ran` interceptors in reverse order.
template <class Hook>
void run_after(const std::vector<std::shared_ptr<interceptor>>& chain, std::size_t ran, Hook&& hook) {
    for (std::size_t i = ran; i-- > 0;) hook(*chain[i]);
}

std::string new_traceparent();

} // namespace plexus::detail
