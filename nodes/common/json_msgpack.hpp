// JSON <-> MessagePack for the CLI: what a user types becomes a body, what a node
// answers becomes JSON.
//
// MessagePack -> JSON mapping (documented in `plexus --help`):
//   nil, bool, int, float, str, array  -> the JSON value of the same kind
//   map                                -> object; a non-string key becomes its JSON text (1 -> "1")
//   bin                                -> base64 string (RFC 4648, with padding)
//   ext                                -> {"ext": type, "data": base64}
//   empty body (no bytes)              -> null
//   a body that is not exactly one MessagePack value -> base64 string of the bytes
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace plexus::nodes {

[[nodiscard]] std::string to_msgpack(const nlohmann::json& j);

// Never throws for any input (see the mapping above). `exact`, when given, says
// whether the bytes were one well-formed MessagePack value.
[[nodiscard]] nlohmann::json from_msgpack(std::string_view bytes, bool* exact = nullptr);

[[nodiscard]] std::string base64(std::string_view bytes);
[[nodiscard]] std::string hex(std::string_view bytes);

// JSON text; strings that are not valid UTF-8 have the bad bytes replaced (U+FFFD)
// rather than failing. indent < 0: one line.
[[nodiscard]] std::string dump(const nlohmann::json& j, int indent = -1);

} // namespace plexus::nodes
