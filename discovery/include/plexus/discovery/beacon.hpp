// The discovery beacon: one UDP datagram in MessagePack (docs/PROTOCOL.md, "Discovery
// beacon"). This header is the wire codec only; plexus::discovery::agent sends and
// receives beacons. Anyone may use it to write a probe or a gateway in another tool.
//
//   plexus::discovery::beacon b;
//   b.cluster = "prod"; b.id = plexus::discovery::random_node_id(); b.name = "accounts";
//   auto bytes = plexus::discovery::encode(b);
//   plexus::discovery::beacon back;
//   if (plexus::discovery::decode(bytes, back) == plexus::discovery::decode_error::none) ...
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace plexus::discovery {

inline constexpr std::string_view beacon_magic = "PLXD";
inline constexpr std::uint64_t beacon_version = 1;
// A receiver drops any datagram larger than this (it would not fit a 1500-byte MTU
// with IP and UDP headers and room for tunnels). Senders stay at or below
// beacon_options::max_datagram, 1200 by default.
inline constexpr std::size_t max_datagram_size = 1400;
inline constexpr std::size_t min_datagram_size = 1000;
inline constexpr std::size_t default_datagram_size = 1200;
// Bounds on fields, enforced by writers (std::invalid_argument) and readers (malformed).
inline constexpr std::size_t max_cluster_size = 64;
inline constexpr std::size_t max_name_size = 128;
inline constexpr std::size_t max_item_size = 255;  // endpoint name/value, service name/version, topic
inline constexpr std::size_t max_parts = 32;

// 16 random bytes naming a node for its whole life (across incarnations, if the
// application keeps it).
using node_id = std::array<std::uint8_t, 16>;

// Lower-case hex, 32 characters.
[[nodiscard]] std::string to_hex(const node_id& id);
// Parses 32 hex characters; false (out unchanged) otherwise.
[[nodiscard]] bool parse_node_id(std::string_view hex, node_id& out) noexcept;
// From std::random_device; never all zero.
[[nodiscard]] node_id random_node_id();
[[nodiscard]] inline bool is_nil(const node_id& id) noexcept {
    for (auto b : id)
        if (b != 0) return false;
    return true;
}

struct service {
    std::string name;
    std::string version;  // free text, e.g. "1.4.2"; may be empty
    bool operator==(const service&) const = default;
};

// What a node announces. An endpoint whose host is a wildcard ("tcp://0.0.0.0:5555",
// "tcp://*:5555") is rewritten by receivers to the source address of the beacon.
struct payload {
    std::map<std::string, std::string> endpoints;  // e.g. "rpc" -> "tcp://127.0.0.1:5555"
    std::vector<service> services;
    std::vector<std::string> topics;
    bool operator==(const payload&) const = default;
    [[nodiscard]] bool empty() const noexcept { return endpoints.empty() && services.empty() && topics.empty(); }
};

enum class beacon_kind : std::uint8_t { hello = 0, leave = 1 };

// beacon::flags bits.
inline constexpr std::uint64_t flag_broadcast = 1;  // sent to a broadcast or multicast address

// A peer the sender knows, passed on so that nodes converge without broadcast.
struct gossip_entry {
    node_id id{};
    std::uint64_t incarnation = 0;
    std::string address;  // "ip:port" the entry's beacons come from, as the sender sees it
    bool operator==(const gossip_entry&) const = default;
};

// One datagram. A payload too large for one datagram is split into `parts` datagrams
// (part = 0..parts-1) that share `digest`; `body` holds this part's share.
struct beacon {
    beacon_kind kind = beacon_kind::hello;
    std::string cluster;
    node_id id{};
    std::uint64_t incarnation = 0;
    std::string name;
    std::uint64_t interval_ms = 1000;
    std::uint64_t flags = 0;
    std::uint64_t part = 0;
    std::uint64_t parts = 1;
    std::uint64_t digest = 0;  // payload_digest() of the whole payload
    payload body;
    std::vector<gossip_entry> gossip;
    bool operator==(const beacon&) const = default;
};

enum class decode_error : std::uint8_t {
    none = 0,
    oversized,            // larger than max_datagram_size
    malformed,            // not MessagePack, wrong types, out-of-bound fields, trailing bytes
    wrong_magic,          // MessagePack, but not a Plexus beacon
    unsupported_version,  // a Plexus beacon of another version
    unknown_kind,         // a kind this version does not know
};
[[nodiscard]] std::string_view to_string(decode_error e) noexcept;

// Strict writer: shortest MessagePack forms, fields in the order of the spec.
// Throws std::invalid_argument when a field is out of bounds.
[[nodiscard]] std::vector<std::uint8_t> encode(const beacon& b);
// Tolerant reader: ignores array elements past the ones it knows. Never throws;
// `out` is only meaningful when the result is decode_error::none.
[[nodiscard]] decode_error decode(std::span<const std::uint8_t> datagram, beacon& out) noexcept;

// FNV-1a 64 of the MessagePack encoding of the whole payload (the digest field).
[[nodiscard]] std::uint64_t payload_digest(const payload& p);
// Throws std::invalid_argument naming the first item out of bounds.
void validate(const payload& p);

} // namespace plexus::discovery
