// Plexus status codes and the one error type of the framework.
//
// The numeric values are part of the wire protocol (docs/PROTOCOL.md, "Status
// codes"): a reply envelope carries them as an unsigned integer. They follow the
// gRPC numbering so that users and gateways can map them one to one; code 17 is
// Plexus' own. Values are stable: never renumber, only append.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace plexus {

enum class code : std::uint8_t {
    ok = 0,
    cancelled = 1,            // the caller or the node gave up (node shutting down)
    unknown = 2,              // a status this node does not know
    invalid_argument = 3,     // malformed request: bad MessagePack, bad body, bad envelope
    deadline_exceeded = 4,    // the deadline passed before an answer came
    not_found = 5,            // no such service or method
    already_exists = 6,
    permission_denied = 7,
    resource_exhausted = 8,   // over a size limit, a queue is full
    failed_precondition = 9,  // the call is not allowed in this state (e.g. blocking on the I/O thread)
    aborted = 10,
    out_of_range = 11,
    unimplemented = 12,
    internal = 13,            // a handler threw, or a bug of ours
    unavailable = 14,         // no instance reachable, connection lost
    data_loss = 15,
    unauthenticated = 16,
    unsupported_version = 17, // the envelope's protocol version is not spoken here
};

// "OK", "DEADLINE_EXCEEDED", ... ; "UNKNOWN" for a value outside the table.
[[nodiscard]] std::string_view to_string(code c) noexcept;
// Inverse of to_string (case-insensitive, accepts "deadline-exceeded" too).
[[nodiscard]] bool from_string(std::string_view s, code& out) noexcept;
// Maps a wire value to a code; values outside the table become code::unknown.
[[nodiscard]] code code_from_wire(std::uint64_t v) noexcept;

// The outcome of an operation as a value: for non-throwing forms.
struct status {
    plexus::code code = code::ok;
    std::string message;

    [[nodiscard]] bool ok() const noexcept { return code == code::ok; }
    explicit operator bool() const noexcept { return ok(); }
};

// The single exception type of Plexus. what() is "CODE: message".
class error : public std::runtime_error {
public:
    error(plexus::code c, const std::string& message);
    explicit error(const status& s) : error(s.code, s.message) {}

    [[nodiscard]] plexus::code code() const noexcept { return code_; }
    // The human message without the "CODE: " prefix.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }
    [[nodiscard]] plexus::status to_status() const { return {code_, message_}; }

private:
    plexus::code code_;
    std::string message_;
};

} // namespace plexus
