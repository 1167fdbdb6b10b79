#include "detail/builtins.hpp"
#include "detail/trace.hpp"

#include <algorithm>
#include <random>

namespace plexus::detail {

// ---------------------------------------------------------------- histogram

void histogram::record(std::chrono::nanoseconds d) noexcept {
    const auto us = static_cast<std::uint64_t>(std::max<std::int64_t>(d.count(), 0) / 1000);
    std::size_t i = 0;
    while (i < bounds_us.size() && us > bounds_us[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(d.count(), 0)), std::memory_order_relaxed);
}

std::vector<std::uint64_t> histogram::counts() const {
    std::vector<std::uint64_t> out;
    out.reserve(buckets_.size());
    for (auto& b : buckets_) out.push_back(b.load(std::memory_order_relaxed));
    return out;
}

double histogram::quantile_us(double q) const {
    const auto c = counts();
    std::uint64_t total = 0;
    for (auto v : c) total += v;
    if (total == 0) return 0;
    const double rank = q * static_cast<double>(total);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
        if (c[i] == 0) continue;
        if (static_cast<double>(seen + c[i]) >= rank) {
            const double lo = i == 0 ? 0.0 : static_cast<double>(bounds_us[i - 1]);
            const double hi = i < bounds_us.size() ? static_cast<double>(bounds_us[i]) : lo * 2;
            const double within = (rank - static_cast<double>(seen)) / static_cast<double>(c[i]);
            return lo + (hi - lo) * std::clamp(within, 0.0, 1.0);
        }
        seen += c[i];
    }
    return static_cast<double>(bounds_us.back());
}

// ---------------------------------------------------------------- metrics

std::uint64_t method_metrics::errors() const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = 1; i < by_code.size(); ++i) n += by_code[i].load(std::memory_order_relaxed);
    return n;
}

void metrics_interceptor::add_server_method(std::string service, std::string method) {
    auto m = std::make_unique<method_metrics>();
    m->service = std::move(service);
    m->method = std::move(method);
    server_.push_back(std::move(m));
}

method_metrics* metrics_interceptor::server(std::string_view service, std::string_view method) const noexcept {
    // A thread usually handles the same method again: try the last one found first.
    thread_local std::pair<std::uint64_t, method_metrics*> last{0, nullptr};
    if (last.first == id_ && last.second->method == method && last.second->service == service) return last.second;
    for (auto& m : server_)
        if (m->method == method && m->service == service) {
            last = {id_, m.get()};
            return m.get();
        }
    return nullptr;
}

method_metrics& metrics_interceptor::client(std::string_view service, std::string_view method) {
    // Calls from one thread usually go to the same method again: remember the last one
    // (counters are never removed, so the pointer stays valid).
    struct last_seen {
        std::uint64_t owner;
        std::string service, method;
        method_metrics* m;
    };
    thread_local last_seen last{0, {}, {}, nullptr};
    if (last.owner == id_ && last.service == service && last.method == method) return *last.m;
    std::string key(service);
    key += '.';
    key += method;
    method_metrics* found;
    {
        std::lock_guard lk(client_mu_);
        auto it = client_.find(key);
        if (it == client_.end()) {
            auto m = std::make_unique<method_metrics>();
            m->service = service;
            m->method = method;
            it = client_.emplace(std::move(key), std::move(m)).first;
        }
        found = it->second.get();
    }
    last.owner = id_;
    last.service.assign(service);
    last.method.assign(method);
    last.m = found;
    return *found;
}

namespace {
std::size_t code_index(code c) {
    auto i = static_cast<std::size_t>(c);
    return i < 18 ? i : 2;
}
} // namespace

void metrics_interceptor::record_early(std::string_view service, std::string_view method, code c) {
    if (auto* m = server(service, method)) {
        m->calls.fetch_add(1, std::memory_order_relaxed);
        m->by_code[code_index(c)].fetch_add(1, std::memory_order_relaxed);
    }
}

status metrics_interceptor::before_handle(call_info& c) {
    if (auto* m = server(c.service, c.method)) {
        m->calls.fetch_add(1, std::memory_order_relaxed);
        m->in_flight.fetch_add(1, std::memory_order_relaxed);
    }
    return {};
}

void metrics_interceptor::after_handle(const call_info& c, const status& s, std::chrono::nanoseconds d) {
    if (auto* m = server(c.service, c.method)) {
        m->in_flight.fetch_sub(1, std::memory_order_relaxed);
        m->by_code[code_index(s.code)].fetch_add(1, std::memory_order_relaxed);
        m->latency.record(d);
    }
}

void metrics_interceptor::after_call(const call_info& c, const status& s, std::chrono::nanoseconds d) {
    auto& m = client(c.service, c.method);
    m.calls.fetch_add(1, std::memory_order_relaxed);
    m.by_code[code_index(s.code)].fetch_add(1, std::memory_order_relaxed);
    m.latency.record(d);
}

std::vector<const method_metrics*> metrics_interceptor::server_methods() const {
    std::vector<const method_metrics*> out;
    for (auto& m : server_) out.push_back(m.get());
    return out;
}

std::vector<const method_metrics*> metrics_interceptor::client_methods() const {
    std::lock_guard lk(client_mu_);
    std::vector<const method_metrics*> out;
    for (auto& [k, m] : client_) out.push_back(m.get());
    return out;
}

// ---------------------------------------------------------------- header policy

bool policy_interceptor::hop_by_hop(std::string_view key) const noexcept {
    if (key.substr(0, header_key::hop_prefix.size()) == header_key::hop_prefix) return true;
    return std::find(p_.hop_by_hop.begin(), p_.hop_by_hop.end(), key) != p_.hop_by_hop.end();
}

status policy_interceptor::check_size(const headers& h, std::string_view what) const {
    const auto n = h.byte_size();
    if (n <= p_.max_header_bytes) return {};
    return {code::resource_exhausted, std::string(what) + " headers take " + std::to_string(n) +
                                          " bytes, over the cap of " + std::to_string(p_.max_header_bytes)};
}

status policy_interceptor::before_handle(call_info& c) {
    for (auto& k : p_.reject_inbound) c.headers.erase(k);
    return check_size(c.headers, "request");
}

status policy_interceptor::before_call(call_info& c) {
    for (auto& [service, keys] : p_.strip_for)
        if (service == c.service)
            for (auto& k : keys) c.headers.erase(k);
    return check_size(c.headers, "call");
}

status policy_interceptor::before_publish(event_info& e) { return check_size(e.headers, "event"); }

status policy_interceptor::before_deliver(event_info& e) {
    for (auto& k : p_.reject_inbound) e.headers.erase(k);
    return {};
}

// ---------------------------------------------------------------- tracing

namespace {
// xoshiro256** per thread, seeded once from random_device: ids must be unpredictable
// enough not to collide, not secret; a span per message cannot afford more.
class fast_rng {
public:
    fast_rng() {
        std::random_device rd;
        for (auto& w : s_) w = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    std::uint64_t operator()() noexcept {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
    std::uint64_t s_[4];
};

// 16 lower-case hex digits of a random non-zero id (all-zero ids are invalid in W3C
// Trace Context).
void random_hex16(char* out) noexcept {
    thread_local fast_rng rng;
    static constexpr char hexd[] = "0123456789abcdef";
    std::uint64_t bits = 0;
    while (bits == 0) bits = rng();
    for (int i = 0; i < 16; ++i, bits >>= 4) out[i] = hexd[bits & 15];
}

// Opens this hop's span in `h`: a valid incoming traceparent keeps its trace id and
// flags and gets a new span id, in place (the caller's span id goes to `ctx` as the
// parent); without one, a new trace when `start`, else nothing. Whether the hop is in
// a trace now.
bool open_span(headers& h, context* ctx, bool start) {
    std::string* tp = h.find(header_key::traceparent);
    if (tp && valid_traceparent(*tp)) {
        if (ctx) ctx->set_parent_span_id(std::string_view(*tp).substr(36, 16));
        if (tp->size() != 55 || (*tp)[0] != '0' || (*tp)[1] != '0') {
            // a later version: continue its trace as version 00 (ids and flags), dropping
            // the fields 00 lacks
            *tp = "00-" + tp->substr(3, 52);
        }
        random_hex16(tp->data() + 36);
        return true;
    }
    if (ctx) ctx->set_parent_span_id({});
    if (start) {
        h.set(header_key::traceparent, new_traceparent());
        return true;
    }
    if (tp) h.erase(header_key::traceparent); // invalid: not carried on
    return false;
}
} // namespace

std::string new_traceparent() {
    std::string tp = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
    random_hex16(tp.data() + 3);
    random_hex16(tp.data() + 19);
    random_hex16(tp.data() + 36);
    return tp;
}

status tracing_interceptor::before_handle(call_info& c) {
    const bool traced = open_span(c.headers, c.context, mode_ == trace_mode::start);
    // call-chain: the hops so far, this one last, at most max_chain_; grown in place.
    // A request in a trace starts one; outside any trace (propagate) only one that
    // arrived grows.
    std::string* chain = c.headers.find(header_key::call_chain);
    if (!chain) {
        if (!traced) return {};
        c.headers.append(header_key::call_chain, {});
        chain = c.headers.find(header_key::call_chain);
    } else if (!chain->empty()) {
        *chain += ',';
    }
    *chain += c.service;
    *chain += '.';
    *chain += c.method;
    if (max_chain_ > 0) {
        auto hops = static_cast<std::size_t>(std::count(chain->begin(), chain->end(), ',')) + 1;
        std::size_t cut = 0;
        for (; hops > max_chain_; --hops) cut = chain->find(',', cut) + 1;
        if (cut) chain->erase(0, cut);
    }
    return {};
}

status tracing_interceptor::before_call(call_info& c) {
    // Inside a handler the context's traceparent names the handler's span: the callee
    // makes its own span with it as parent. Outside, the call may start a trace.
    if (mode_ != trace_mode::start) return {};
    auto tp = c.headers.get(header_key::traceparent);
    if (!tp || !valid_traceparent(*tp)) c.headers.set(header_key::traceparent, new_traceparent());
    return {};
}

status tracing_interceptor::before_publish(event_info& e) {
    if (mode_ != trace_mode::start) return {};
    auto tp = e.headers.get(header_key::traceparent);
    if (!tp || !valid_traceparent(*tp)) e.headers.set(header_key::traceparent, new_traceparent());
    return {};
}

status tracing_interceptor::before_deliver(event_info& e) {
    open_span(e.headers, e.context, mode_ == trace_mode::start);
    return {};
}

// ---------------------------------------------------------------- logging

void logging_interceptor::after_handle(const call_info& c, const status& s, std::chrono::nanoseconds d) {
    const auto level = s.ok() ? log_level::debug : log_level::info;
    if (!log_.enabled(level)) return;
    std::string kvs = kv("method", std::string(c.service) + "." + std::string(c.method));
    kvs += kv("status", to_string(s.code));
    kvs += kv("duration_us", static_cast<std::uint64_t>(d.count() / 1000));
    if (auto u = c.headers.get(header_key::user_id)) kvs += kv("user_id", *u);
    if (!s.ok()) kvs += kv("error", s.message);
    log_.write(level, "handled", kvs);
}

} // namespace plexus::detail
