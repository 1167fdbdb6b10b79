// Helpers around Boost.Program_options shared by plexus-node and plexus.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/program_options.hpp>

namespace plexus::nodes {

// Maps PLEXUS_PUB_BIND to "pub-bind" when `desc` has such a long option (for
// po::parse_environment); other variables map to "" and are ignored. Variables named
// in `skip` (e.g. "config", read separately) are ignored too.
[[nodiscard]] std::function<std::string(std::string)> env_name_mapper(const boost::program_options::options_description& desc,
                                                                      std::vector<std::string> skip = {});

// "pub-bind" -> "PLEXUS_PUB_BIND".
[[nodiscard]] std::string env_name(std::string_view option);

// Splits every element on commas, trims blanks, drops empty pieces: list options may
// be repeated or comma-separated (the only way to give a list in one variable).
[[nodiscard]] std::vector<std::string> split_list(const std::vector<std::string>& in);

// Whether s starts with a ZeroMQ transport scheme Plexus accepts (tcp://, ipc://, inproc://).
[[nodiscard]] bool is_endpoint(std::string_view s) noexcept;

} // namespace plexus::nodes
