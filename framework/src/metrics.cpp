// Prometheus text exposition (format 0.0.4) of a node's metrics.
#include <cstdio>

#include "detail/node_impl.hpp"

namespace plexus::detail {

namespace {
// Label values escape backslash, double quote and newline.
std::string label(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string num(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

void methods_block(std::string& out, const std::string& node, const char* prefix, const char* side,
                   const std::vector<const method_metrics*>& ms) {
    const std::string p(prefix);
    family(out, (p + "_calls_total").c_str(), "counter", (std::string("Calls ") + side + ", by method").c_str());
    for (auto* m : ms)
        out += p + "_calls_total{node=\"" + label(node) + "\",service=\"" + label(m->service) + "\",method=\"" +
               label(m->method) + "\"} " + std::to_string(m->calls.load()) + "\n";
    family(out, (p + "_errors_total").c_str(), "counter", (std::string("Calls ") + side + " that failed, by code").c_str());
    for (auto* m : ms)
        for (std::size_t c = 1; c < m->by_code.size(); ++c)
            if (auto n = m->by_code[c].load())
                out += p + "_errors_total{node=\"" + label(node) + "\",service=\"" + label(m->service) +
                       "\",method=\"" + label(m->method) + "\",code=\"" + std::string(to_string(static_cast<code>(c))) +
                       "\"} " + std::to_string(n) + "\n";
    family(out, (p + "_latency_seconds").c_str(), "histogram", (std::string("Latency of calls ") + side).c_str());
    for (auto* m : ms) {
        const auto counts = m->latency.counts();
        const std::string labels =
            "node=\"" + label(node) + "\",service=\"" + label(m->service) + "\",method=\"" + label(m->method) + "\"";
        std::uint64_t cum = 0;
        for (std::size_t i = 0; i < counts.size(); ++i) {
            cum += counts[i];
            const std::string le =
                i < histogram::bounds_us.size() ? num(static_cast<double>(histogram::bounds_us[i]) / 1e6) : "+Inf";
            out += p + "_latency_seconds_bucket{" + labels + ",le=\"" + le + "\"} " + std::to_string(cum) + "\n";
        }
        out += p + "_latency_seconds_sum{" + labels + "} " + num(m->latency.sum_seconds()) + "\n";
        out += p + "_latency_seconds_count{" + labels + "} " + std::to_string(cum) + "\n";
    }
}
} // namespace

std::string node_impl::metrics_text() const {
    std::string out;
    out.reserve(4096);
    const auto servers = metrics_->server_methods();
    methods_block(out, opts.name, "plexus_server", "handled", servers);
    family(out, "plexus_server_in_flight", "gauge", "Calls being handled now");
    for (auto* m : servers)
        out += "plexus_server_in_flight{node=\"" + label(opts.name) + "\",service=\"" + label(m->service) +
               "\",method=\"" + label(m->method) + "\"} " + std::to_string(m->in_flight.load()) + "\n";
    methods_block(out, opts.name, "plexus_client", "made", metrics_->client_methods());

    const node_stats s = stats();
    const char* topic_families[][3] = {{"plexus_events_published_total", "Events published, by topic", "p"},
                                       {"plexus_events_dropped_total", "Events dropped by the publisher, by topic", "d"},
                                       {"plexus_events_received_total", "Events received, by topic", "r"},
                                       {"plexus_events_gaps_total", "Events missing from publishers' sequences, by topic", "g"}};
    for (auto& f : topic_families) {
        family(out, f[0], "counter", f[1]);
        for (auto& t : s.topics) {
            std::uint64_t v = f[2][0] == 'p' ? t.published : f[2][0] == 'd' ? t.dropped : f[2][0] == 'r' ? t.received : t.gaps;
            out += std::string(f[0]) + "{node=\"" + label(opts.name) + "\",topic=\"" + label(t.topic) + "\"} " +
                   std::to_string(v) + "\n";
        }
    }
    family(out, "plexus_malformed_total", "counter", "Undecodable messages received");
    out += "plexus_malformed_total{node=\"" + label(opts.name) + "\"} " + std::to_string(s.malformed) + "\n";
    family(out, "plexus_unsupported_version_total", "counter", "Messages of another protocol version received");
    out += "plexus_unsupported_version_total{node=\"" + label(opts.name) + "\"} " + std::to_string(s.unsupported_version) + "\n";
    family(out, "plexus_peer_connections", "gauge", "Connections held to peers' RPC endpoints");
    out += "plexus_peer_connections{node=\"" + label(opts.name) + "\"} " + std::to_string(s.peer_connections) + "\n";
    family(out, "plexus_uptime_seconds", "gauge", "Time since the node started");
    out += "plexus_uptime_seconds{node=\"" + label(opts.name) + "\"} " +
           num(std::chrono::duration<double>(clock::now() - started_at_).count()) + "\n";
    return out;
}

} // namespace plexus::detail

namespace plexus {

std::string node::metrics_text() const { return impl_->metrics_text(); }

void node::log(log_level level, std::string_view message, const plexus::headers& fields) const {
    if (!impl_->log.enabled(level)) return;
    std::string kvs;
    for (auto& [k, v] : fields) kvs += detail::kv(k, v);
    impl_->log.write(level, message, kvs);
}

} // namespace plexus
