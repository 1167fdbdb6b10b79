#include "discovery_options.hpp"

#include <stdexcept>
#include <vector>

#include "options.hpp"

namespace plexus::nodes {

namespace po = boost::program_options;
namespace disc = plexus::discovery;

po::options_description discovery_options(std::string_view what_on_means) {
    po::options_description d("Discovery (UDP beacons; docs/PROTOCOL.md section 13)");
    const std::string on_help = "on|off: " + std::string(what_on_means);
    // clang-format off
    d.add_options()
        ("discovery", po::value<std::string>()->default_value("on")->value_name("on|off"), on_help.c_str())
        ("cluster", po::value<std::string>()->default_value("plexus")->value_name("NAME"),
            "cluster name (1..64 bytes): nodes of another cluster are ignored, even on the same host and port")
        ("discovery-port", po::value<unsigned>()->default_value(disc::default_port)->value_name("PORT"),
            "UDP port every node of the cluster beacons to and listens on (shared by the nodes of a host)")
        ("discovery-interval", po::value<unsigned>()->default_value(1000)->value_name("MS"),
            "beacon interval (10..3600000)")
        ("discovery-missed", po::value<unsigned>()->default_value(3)->value_name("N"),
            "a peer silent for N intervals is dropped (a broken connection or a leave beacon drops it at once)")
        ("broadcast", po::value<std::vector<std::string>>()->value_name("ADDR"),
            "IPv4 broadcast address to beacon to (repeatable or comma-separated), e.g. the LAN's 10.200.0.255; "
            "replaces the default 127.255.255.255 (this host only)")
        ("no-broadcast", po::bool_switch(), "send no broadcast beacons (then use --seed or --multicast)")
        ("multicast", po::value<std::string>()->value_name("GROUP[@IF[:TTL]]"),
            "also beacon to multicast GROUP on the interface with IPv4 address IF (default 127.0.0.1) with TTL "
            "(default 0: this host only)")
        ("seed", po::value<std::vector<std::string>>()->value_name("HOST[:PORT]"),
            "well-known node that gets unicast beacons (repeatable or comma-separated; PORT defaults to "
            "--discovery-port); nodes pass on the peers they know, so seeds work where broadcast is blocked")
        ("advertise", po::value<std::string>()->value_name("HOST"),
            "host peers reach this node at, replacing a wildcard host (0.0.0.0, *) in its endpoints; default: "
            "the source address of its beacons as each peer sees it");
    // clang-format on
    return d;
}

namespace {

bool is_loopback_host(std::string_view host) {
    return host.substr(0, 4) == "127." || host == "localhost";
}

std::string host_of(std::string_view host_port) {
    const auto colon = host_port.rfind(':');
    return std::string(colon == std::string_view::npos ? host_port : host_port.substr(0, colon));
}

[[noreturn]] void bad(const std::string& m) { throw std::invalid_argument(m); }

} // namespace

std::optional<disc::beacon_options> discovery_from(const po::variables_map& vm) {
    const auto& mode = vm["discovery"].as<std::string>();
    if (mode == "off" || mode == "0" || mode == "false" || mode == "no") return std::nullopt;
    if (mode != "on" && mode != "1" && mode != "true" && mode != "yes")
        bad("--discovery must be on or off, not '" + mode + "'");

    disc::beacon_options o;
    o.cluster = vm["cluster"].as<std::string>();
    const unsigned port = vm["discovery-port"].as<unsigned>();
    if (port > 65535) bad("--discovery-port must be at most 65535, not " + std::to_string(port));
    o.port = static_cast<std::uint16_t>(port);
    o.interval = std::chrono::milliseconds(vm["discovery-interval"].as<unsigned>());
    o.missed = vm["discovery-missed"].as<unsigned>();

    const bool no_broadcast = vm.count("no-broadcast") && vm["no-broadcast"].as<bool>();
    const auto broadcast = vm.count("broadcast") ? split_list(vm["broadcast"].as<std::vector<std::string>>())
                                                 : std::vector<std::string>{};
    if (no_broadcast && !broadcast.empty()) bad("--broadcast and --no-broadcast exclude each other");
    if (no_broadcast)
        o.broadcast.clear();
    else if (!broadcast.empty())
        o.broadcast = broadcast;

    if (vm.count("multicast")) {
        // GROUP[@IF[:TTL]]
        const std::string spec = vm["multicast"].as<std::string>();
        disc::multicast_options m;
        const auto at = spec.find('@');
        m.group = spec.substr(0, at);
        if (at != std::string::npos) {
            const std::string rest = spec.substr(at + 1);
            const auto colon = rest.find(':');
            m.interface = rest.substr(0, colon);
            if (colon != std::string::npos) {
                const std::string ttl = rest.substr(colon + 1);
                if (ttl.empty() || ttl.size() > 3 || ttl.find_first_not_of("0123456789") != std::string::npos)
                    bad("--multicast TTL must be 0..255, not '" + ttl + "'");
                m.ttl = std::stoi(ttl);
            }
        }
        if (m.group.empty() || m.interface.empty()) bad("--multicast must be GROUP[@IF[:TTL]], not '" + spec + "'");
        o.multicast = m;
    }

    if (vm.count("seed"))
        for (auto& s : split_list(vm["seed"].as<std::vector<std::string>>()))
            o.seeds.push_back(s.find(':') == std::string::npos ? s + ":" + std::to_string(o.port) : s);
    if (vm.count("advertise")) {
        o.advertise = vm["advertise"].as<std::string>();
        if (o.advertise.empty()) bad("--advertise must not be empty");
    }
    // No target at all is allowed: such a node is found by those that name it as a seed,
    // and answers them.

    try {
        disc::agent check(o); // validates (and resolves names); opens nothing
    } catch (const std::invalid_argument& e) {
        std::string what = e.what();
        if (what.rfind("plexus discovery: ", 0) == 0) what = what.substr(18);
        bad("discovery: " + what);
    }
    return o;
}

bool host_local(const disc::beacon_options& o) {
    for (const auto& b : o.broadcast)
        if (!is_loopback_host(b)) return false;
    for (const auto& s : o.seeds)
        if (!is_loopback_host(host_of(s))) return false;
    if (o.multicast && (!is_loopback_host(o.multicast->interface) || o.multicast->ttl > 0)) return false;
    return true;
}

std::string endpoint_host(std::string_view endpoint) {
    constexpr std::string_view scheme = "tcp://";
    if (endpoint.substr(0, scheme.size()) != scheme) return {};
    return host_of(endpoint.substr(scheme.size()));
}

} // namespace plexus::nodes
