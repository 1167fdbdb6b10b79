// The discovery options shared by plexus-node and plexus: one description, one parser,
// so that both read `--cluster` / PLEXUS_CLUSTER, `--discovery-port` /
// PLEXUS_DISCOVERY_PORT and the rest the same way.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <boost/program_options.hpp>

#include <plexus/discovery/agent.hpp>

namespace plexus::nodes {

// --discovery on|off, --cluster, --discovery-port, --discovery-interval,
// --discovery-missed, --broadcast (repeatable), --no-broadcast, --multicast,
// --seed (repeatable), --advertise. `what_on_means` completes the help of --discovery
// ("announce this node and ..." for the node, "resolve names ..." for the CLI).
[[nodiscard]] boost::program_options::options_description discovery_options(std::string_view what_on_means);

// The beacon options the parsed values describe; nullopt for --discovery off.
// Throws std::invalid_argument with a message fit for a usage error (a bad address, a
// seed that does not resolve, --broadcast with --no-broadcast, ...): the options are
// checked by constructing (not starting) a discovery::agent, so whatever the agent
// would refuse at start is refused here.
[[nodiscard]] std::optional<plexus::discovery::beacon_options>
discovery_from(const boost::program_options::variables_map& vm);

// Whether every target of `o` (broadcast addresses, seeds, multicast) stays on this
// host: then peers elsewhere neither hear us nor reach a 127.0.0.1 endpoint.
[[nodiscard]] bool host_local(const plexus::discovery::beacon_options& o);

// "host" of "tcp://host:port" ("" for other schemes).
[[nodiscard]] std::string endpoint_host(std::string_view endpoint);

} // namespace plexus::nodes
