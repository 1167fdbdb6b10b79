// The framework on top of plexus::discovery: announce this node, keep the route table
// (service -> endpoints) from the peers seen, connect the SUB to publishers of topics
// we subscribe to, and fail calls fast when a peer leaves.
#include <algorithm>

#include "detail/node_impl.hpp"

namespace plexus::detail {

namespace {
// An announced topic may be a whole topic ("drone.7.position") or a prefix a publisher
// declares for a family ("delivery."): a subscription wants the publisher when either
// is a prefix of the other.
bool topic_matches(const std::vector<std::string>& topics, const std::string& prefix) {
    return std::any_of(topics.begin(), topics.end(), [&](const std::string& t) {
        return t.compare(0, prefix.size(), prefix) == 0 || prefix.compare(0, t.size(), t) == 0;
    });
}
} // namespace

void node_impl::set_service_version(const std::string& service, std::string v) {
    if (running_ || stopping_) throw error(code::failed_precondition, "services must be declared before start()");
    service_versions_[service] = std::move(v);
}

void node_impl::start_discovery() {
    if (!opts.discovery) return;
    discovery::beacon_options bo = *opts.discovery;
    if (bo.name.empty()) bo.name = opts.name;
    std::copy_n(reinterpret_cast<const std::uint8_t*>(node_id.data()), bo.id.size(), bo.id.begin());
    bo.announce = {};
    if (!rpc_endpoints.empty()) bo.announce.endpoints["rpc"] = rpc_endpoints.front();
    if (!pub_endpoints_.empty()) bo.announce.endpoints["pub"] = pub_endpoints_.front();
    for (auto& s : services_) {
        if (s->name == system_service) continue;
        auto v = service_versions_.find(s->name);
        bo.announce.services.push_back({s->name, v == service_versions_.end() ? std::string() : v->second});
    }
    {
        std::lock_guard lk(pub_mu_);
        for (auto& t : topics_decl_) announced_topics_.push_back(t.name);
        bo.announce.topics = announced_topics_;
    }
    try {
        // Peers answer a new node's first beacon at once; until one interval has passed,
        // a service not found yet may still appear, so resolution waits that long.
        discovery_warm_until_ = clock::now() + opts.discovery->interval + std::chrono::milliseconds(100);
        agent_ = std::make_unique<discovery::agent>(std::move(bo));
        agent_->on_event([this](const discovery::event& e) { on_discovery_event(e); });
        {
            std::lock_guard lk(peer_handlers_mu_);
            for (auto& [token, fn] : early_peer_handlers_) peer_token_map_[token] = agent_->on_event(std::move(fn));
            early_peer_handlers_.clear();
            agent_live_.store(agent_.get(), std::memory_order_release);
        }
        agent_->start();
    } catch (const std::exception& e) {
        // The agent stays (unstarted) until the node goes: other threads may hold it.
        throw error(code::unavailable, std::string("discovery failed to start: ") + e.what());
    }
    log.write(log_level::info, "discovery started",
              kv("cluster", opts.discovery->cluster) + kv("port", static_cast<std::uint64_t>(agent_->port())));
}

void node_impl::on_discovery_event(const discovery::event& e) {
    const auto& p = e.node;
    auto rpc = p.endpoints.find("rpc");
    auto pub = p.endpoints.find("pub");
    const std::string rpc_ep = rpc == p.endpoints.end() ? std::string() : rpc->second;
    if (e.kind == discovery::event_kind::leave) {
        if (!rpc_ep.empty()) {
            {
                std::lock_guard lk(routes_mu_);
                for (auto& [name, r] : routes_) r.remove(rpc_ep);
                routes_cv_.notify_all();
            }
            commands_.push(endpoint_down_cmd{rpc_ep, "peer " + p.name + " left (" +
                                                         std::string(discovery::to_string(e.reason)) + ")"});
        }
        if (pub != p.endpoints.end()) commands_.push(disconnect_events_cmd{pub->second});
        log.write(log_level::info, "peer left",
                  kv("peer", p.name) + kv("id", discovery::to_hex(p.id)) + kv("reason", discovery::to_string(e.reason)));
        return;
    }
    if (!rpc_ep.empty()) {
        std::lock_guard lk(routes_mu_);
        // An update may change the services; an instance keeps its place in the lists of
        // the services it still offers, so that round-robin stays even.
        for (auto& [name, r] : routes_)
            if (!p.find_service(name)) r.remove(rpc_ep);
        auto& st = state_locked(rpc_ep);
        st->peer = p.id;
        for (auto& s : p.services) routes_[s.name].add(st);
        routes_cv_.notify_all();
        routes_changed_.set(); // async calls parked for a name retry (I/O thread)
    }
    wake_.notify();
    if (pub != p.endpoints.end()) {
        std::lock_guard lk(subs_mu_);
        for (auto& [id, s] : subscribers_)
            if (topic_matches(p.topics, s.prefix)) {
                commands_.push(connect_events_cmd{pub->second});
                break;
            }
    }
    if (e.kind == discovery::event_kind::join)
        log.write(log_level::info, "peer joined",
                  kv("peer", p.name) + kv("id", discovery::to_hex(p.id)) + kv("rpc", rpc_ep) +
                      kv("services", p.services.size()));
}

void node_impl::connect_matching_publishers(const std::string& prefix) {
    auto* a = agent();
    if (!a) return;
    for (auto& p : a->peers()) {
        auto pub = p.endpoints.find("pub");
        if (pub != p.endpoints.end() && topic_matches(p.topics, prefix)) commands_.push(connect_events_cmd{pub->second});
    }
}

void node_impl::announce() {
    auto* a = agent();
    if (!a) return;
    discovery::payload pl = a->current_payload();
    {
        std::lock_guard lk(pub_mu_);
        pl.topics = announced_topics_;
    }
    try {
        a->update_payload(std::move(pl));
    } catch (const std::exception& e) {
        log.write(log_level::warn, "cannot announce topics", kv("error", e.what()));
    }
}

std::vector<discovery::peer> node_impl::peers() const { auto* a = agent();
    return a ? a->peers() : std::vector<discovery::peer>{}; }

std::uint64_t node_impl::add_peer_handler(std::function<void(const discovery::event&)> fn) {
    std::lock_guard lk(peer_handlers_mu_);
    if (auto* a = agent()) return a->on_event(std::move(fn));
    const auto token = next_peer_handler_++;
    early_peer_handlers_.emplace_back(token, std::move(fn));
    return token;
}

void node_impl::remove_peer_handler(std::uint64_t token) {
    std::lock_guard lk(peer_handlers_mu_);
    if (auto* a = agent()) {
        auto it = peer_token_map_.find(token);
        a->remove_handler(it == peer_token_map_.end() ? token : it->second);
        return;
    }
    std::erase_if(early_peer_handlers_, [&](auto& h) { return h.first == token; });
}

std::uint16_t node_impl::discovery_port() const noexcept { auto* a = agent();
    return a ? a->port() : 0; }

} // namespace plexus::detail

namespace plexus {
service_builder& service_builder::version(std::string v) {
    impl_->set_service_version(service_, std::move(v));
    return *this;
}
std::vector<discovery::peer> node::peers() const { return impl_->peers(); }
std::uint64_t node::on_peer_event(std::function<void(const discovery::event&)> fn) {
    return impl_->add_peer_handler(std::move(fn));
}
void node::remove_peer_handler(std::uint64_t token) { impl_->remove_peer_handler(token); }
std::uint16_t node::discovery_port() const noexcept { return impl_->discovery_port(); }
} // namespace plexus
