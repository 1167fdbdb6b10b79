// Log levels and the logfmt line format every Plexus component writes:
//   ts=2026-11-23T12:00:00.123Z level=info node=orders msg="started" rpc=tcp://127.0.0.1:5555
// One implementation, shared by the framework, the node executables and the examples.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace plexus {

enum class log_level : std::uint8_t { trace, debug, info, warn, error, off };

// "trace" ... "off".
[[nodiscard]] std::string_view to_string(log_level l) noexcept;
// Inverse of to_string, case-insensitive, "warning" accepted for warn.
[[nodiscard]] bool from_string(std::string_view s, log_level& out) noexcept;

// Appends `key=value` to a logfmt line (a space first unless the line is empty),
// quoting and escaping the value when it is empty or holds spaces, '=', quotes,
// backslashes or control characters (always, with always_quote).
void append_logfmt(std::string& line, std::string_view key, std::string_view value, bool always_quote = false);

// UTC wall-clock time with milliseconds: "2026-11-23T12:00:00.123Z".
[[nodiscard]] std::string utc_timestamp();

} // namespace plexus
