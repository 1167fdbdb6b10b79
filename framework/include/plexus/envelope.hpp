// The Plexus envelope: one MessagePack map per message, specified in
// docs/PROTOCOL.md ("Envelope"). This is the codec; it knows nothing of sockets.
//
// Two shapes:
//  - envelope:      owns its strings; what the public API hands out.
//  - envelope_view: string_views into the encoded buffer; what the hot path decodes
//                   into with no allocation beyond the reused header vector. A view
//                   is valid only while the buffer it was decoded from lives.
//
// Reader: tolerant (unknown keys are skipped, missing optional keys take their
// defaults), strict about types, bounds and the protocol version.
// Writer: strict (keys in ascending order, smallest integer forms, default-valued
// optional keys left out), so that the same envelope always encodes to the same bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <plexus/error.hpp>
#include <plexus/headers.hpp>

namespace plexus {

// The protocol version this build writes and the only one it reads.
inline constexpr std::uint32_t protocol_version = 1;

enum class kind : std::uint8_t { request = 0, reply = 1, event = 2 };

[[nodiscard]] std::string_view to_string(kind k) noexcept;

// Map keys on the wire (docs/PROTOCOL.md, "Envelope keys"). Stable: append only.
namespace key {
inline constexpr std::uint8_t version = 0;
inline constexpr std::uint8_t kind = 1;
inline constexpr std::uint8_t id = 2;
inline constexpr std::uint8_t service = 3;
inline constexpr std::uint8_t method = 4;
inline constexpr std::uint8_t topic = 5;
inline constexpr std::uint8_t headers = 6;
inline constexpr std::uint8_t deadline = 7; // remaining budget, microseconds
inline constexpr std::uint8_t status = 8;
inline constexpr std::uint8_t error = 9;
inline constexpr std::uint8_t body = 10;
inline constexpr std::uint8_t seq = 11;
inline constexpr std::uint8_t source = 12;
} // namespace key

struct envelope {
    std::uint32_t version = protocol_version;
    plexus::kind kind = kind::request;
    std::uint64_t id = 0;
    std::string service;                          // request
    std::string method;                           // request
    std::string topic;                            // event
    plexus::headers headers;                      // any
    std::optional<std::uint64_t> deadline_us;     // request: remaining budget; none = no deadline
    plexus::code status = code::ok;               // reply
    std::string error;                            // reply, when status != ok
    std::string body;                             // any: opaque bytes (MessagePack by convention)
    std::uint64_t seq = 0;                        // event: per publisher and topic, from 1
    std::string source;                           // optional: sending node's id (16 bytes)

    friend bool operator==(const envelope&, const envelope&) = default;
};

struct envelope_view {
    std::uint32_t version = protocol_version;
    plexus::kind kind = kind::request;
    std::uint64_t id = 0;
    std::string_view service;
    std::string_view method;
    std::string_view topic;
    std::vector<std::pair<std::string_view, std::string_view>> headers;
    std::optional<std::uint64_t> deadline_us;
    plexus::code status = code::ok;
    std::string_view error;
    std::string_view body;
    std::uint64_t seq = 0;
    std::string_view source;

    // Resets every field but keeps the header vector's capacity.
    void clear() noexcept;
    [[nodiscard]] envelope to_owned() const;
    [[nodiscard]] std::optional<std::string_view> header(std::string_view key) const noexcept;
};

// Appends the encoding of e to out (out is not cleared, so a caller can reuse one
// buffer). Throws plexus::error(invalid_argument) when a field cannot be written
// (e.g. kind out of range); never for sizes that fit in memory.
void encode(const envelope& e, std::string& out);
void encode(const envelope_view& e, std::string& out);
[[nodiscard]] std::string encode(const envelope& e);

// Decodes one envelope that must span all of `bytes`. Non-throwing: returns
//  - ok,
//  - invalid_argument with a message saying what is wrong (not MessagePack, not a
//    map, a required key missing, a wrong type, trailing bytes, ...),
//  - unsupported_version when the version key holds another value.
// On unsupported_version, out.id and out.kind are filled when they could be read, so
// that a server can still answer the right request.
[[nodiscard]] status decode(std::string_view bytes, envelope_view& out) noexcept;
[[nodiscard]] status decode(std::string_view bytes, envelope& out);
// Throwing form.
[[nodiscard]] envelope decode(std::string_view bytes);

} // namespace plexus
