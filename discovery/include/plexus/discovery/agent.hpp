// plexus::discovery::agent: announces this node over UDP beacons and keeps a live table
// of the peers of the same cluster. Knows nothing of RPC; the framework builds on it,
// and anyone can use it alone.
//
//   plexus::discovery::beacon_options o;
//   o.cluster = "prod";
//   o.name = "accounts-1";
//   o.announce.endpoints["rpc"] = "tcp://0.0.0.0:5555";   // peers see tcp://<our address>:5555
//   o.announce.services.push_back({"accounts", "1.2.0"});
//   plexus::discovery::agent a(o);
//   a.on_event([](const plexus::discovery::event& e) { ... });   // before start: sees every event
//   a.start();
//   for (auto& p : a.find_service("accounts")) connect(p.endpoints.at("rpc"));
//
// Threading:
//  - One thread per agent owns both UDP sockets and runs a poll loop; the public member
//    functions only take a short lock or queue a command and wake that thread, so they
//    are safe from any thread and never wait on the network.
//  - start() and stop() are synchronous: when start() returns the first beacon has been
//    sent; when stop() returns the thread has ended and the leave beacon is out.
//  - Event handlers run on the agent thread, one at a time, in the order the events
//    happened. They must be quick (a slow handler delays beacons and could make this
//    node look dead). They may call any member function except start(), stop(), halt()
//    and the destructor (those throw std::logic_error from a handler); peers(),
//    update_payload(), mark_dead() etc. are fine.
//
// Scope, safe by default: the default beacon target is 127.255.255.255 (this host
// only). Announcing on a LAN is an explicit choice: list the interface's broadcast
// address in `broadcast`, or set `multicast`. Where broadcast is blocked, list `seeds`.
//
// Sockets: a listener bound to 0.0.0.0:port with SO_REUSEADDR and SO_REUSEPORT, shared
// with every other agent on the host, receives broadcasts and seed beacons; a second,
// per-agent socket on an ephemeral port sends every beacon and receives the unicast
// answers, so that a peer's answer reaches this agent and no other on the host.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <plexus/discovery/beacon.hpp>

namespace plexus::discovery {

namespace detail {
class agent_impl;
}

inline constexpr std::uint16_t default_port = 5690;

struct multicast_options {
    std::string group;                  // e.g. "239.255.80.88"
    std::string interface = "127.0.0.1";  // IPv4 address of the interface to send on and join on
    int ttl = 0;                        // 0: this host only; 1: the local link
};

struct beacon_options {
    std::string cluster = "plexus";  // nodes of another cluster are ignored (counted)
    std::string name;                // human name, not unique; empty: "node-<id prefix>"
    node_id id{};                    // all zero: random
    std::uint64_t incarnation = 0;   // 0: microseconds since the epoch at construction
    std::uint16_t port = default_port;  // shared UDP port; 0 picks a free one (read port())
    std::chrono::milliseconds interval{1000};
    unsigned missed = 3;             // a peer silent for missed x its interval is dropped
    // IPv4 broadcast addresses to beacon to. Default: this host only. A LAN: the
    // interface's directed broadcast, e.g. "10.200.0.255". Empty: no broadcast.
    std::vector<std::string> broadcast{"127.255.255.255"};
    std::optional<multicast_options> multicast;
    // "host:port" of well-known agents; each gets a unicast beacon every interval.
    std::vector<std::string> seeds;
    // Host that replaces a wildcard host in our endpoints before sending. Empty: peers
    // use the source address of our beacons.
    std::string advertise;
    payload announce;                // what this node announces; see update_payload()
    std::size_t max_datagram = default_datagram_size;  // [min_datagram_size, max_datagram_size]
    // Gossip entries in a unicast beacon that introduces nodes (answer, seed, push);
    // periodic beacons to peers reached only by unicast carry at most 2.
    std::size_t gossip_max = 8;
    std::size_t max_peers = 4096;    // beacons from further new peers are dropped (counted)
};

struct peer {
    node_id id{};
    std::string name;
    std::uint64_t incarnation = 0;
    std::map<std::string, std::string> endpoints;  // wildcard hosts already rewritten
    std::vector<service> services;
    std::vector<std::string> topics;
    std::string address;  // "ip:port" its beacons come from (unicast answers go there)
    std::string host;     // the ip of `address`
    std::chrono::milliseconds interval{0};  // the interval it announces
    std::chrono::steady_clock::time_point first_seen{};
    std::chrono::steady_clock::time_point last_seen{};

    [[nodiscard]] std::chrono::milliseconds age() const;
    [[nodiscard]] const service* find_service(std::string_view name) const noexcept;
};

enum class event_kind : std::uint8_t { join, update, leave };
enum class leave_reason : std::uint8_t {
    none,       // join and update events
    graceful,   // it sent a leave beacon
    expired,    // no beacon for missed x interval
    dead,       // mark_dead()
    forgotten,  // forget()
    replaced,   // a beacon of a newer incarnation arrived; a join of the new one follows
};
[[nodiscard]] std::string_view to_string(event_kind k) noexcept;
[[nodiscard]] std::string_view to_string(leave_reason r) noexcept;

struct event {
    event_kind kind = event_kind::join;
    leave_reason reason = leave_reason::none;
    peer node;  // for leave: the entry as it was last known
};

// Monotonic counters since start(); every datagram received lands in exactly one of
// the ignored_* / accepted buckets.
struct counters {
    std::uint64_t sent = 0, sent_bytes = 0, send_errors = 0;
    std::uint64_t received = 0, received_bytes = 0;
    std::uint64_t accepted = 0;        // beacons of our cluster from another node
    std::uint64_t self = 0;            // our own broadcasts coming back
    std::uint64_t oversized = 0, malformed = 0, wrong_magic = 0, unsupported_version = 0,
                  unknown_kind = 0, foreign_cluster = 0;
    std::uint64_t out_of_scope = 0;    // non-loopback source while every target is loopback
    std::uint64_t stale = 0;           // an older incarnation, or one marked dead / left
    std::uint64_t table_full = 0;      // a new peer beyond max_peers
    std::uint64_t answers = 0;         // unicast answers to new peers
    std::uint64_t gossip_contacts = 0; // unicast hellos to peers learned from gossip
    [[nodiscard]] std::uint64_t ignored() const noexcept {
        return oversized + malformed + wrong_magic + unsupported_version + unknown_kind + foreign_cluster +
               out_of_scope;
    }
};

class agent {
public:
    using handler = std::function<void(const event&)>;

    // Validates the options (std::invalid_argument); opens nothing yet.
    explicit agent(beacon_options options);
    ~agent();  // stop()
    agent(const agent&) = delete;
    agent& operator=(const agent&) = delete;

    // Binds both sockets (std::system_error on failure), starts the thread, sends the
    // first beacon. Throws std::logic_error if already started.
    void start();
    // Sends a leave beacon (peers drop this node at once), ends the thread, empties the
    // table (no leave events for it). Idempotent. An agent starts once: to rejoin,
    // make a new agent (a new incarnation).
    void stop();
    // Ends the thread without a leave beacon, as if the process had died: peers drop
    // this node only by expiry. For tests and crash drills.
    void halt();
    [[nodiscard]] bool running() const noexcept;

    [[nodiscard]] const node_id& id() const noexcept;
    [[nodiscard]] std::uint64_t incarnation() const noexcept;
    [[nodiscard]] const std::string& name() const noexcept;
    [[nodiscard]] const std::string& cluster() const noexcept;
    // The shared listening port (resolved when options.port was 0); valid after start().
    [[nodiscard]] std::uint16_t port() const noexcept;

    // Registers a handler; the token removes it. Handlers registered before start()
    // see every event. remove_handler() from inside a handler is allowed.
    std::uint64_t on_event(handler h);
    void remove_handler(std::uint64_t token);

    // Snapshots of the table: peers whose payload is complete, sorted by name then id.
    [[nodiscard]] std::vector<peer> peers() const;
    [[nodiscard]] std::optional<peer> find(const node_id& id) const;
    // Every live peer offering `service`, any version.
    [[nodiscard]] std::vector<peer> find_service(std::string_view service) const;

    // Replaces what this node announces and re-announces at once. Throws
    // std::invalid_argument if an item is out of bounds or it needs more than max_parts.
    void update_payload(payload p);
    [[nodiscard]] payload current_payload() const;

    // The framework saw the peer's connection break: drop it now (leave, reason dead)
    // and ignore further beacons of that incarnation for missed x its interval, so a
    // beacon still in flight does not resurrect it. A new incarnation is accepted.
    void mark_dead(const node_id& id);
    // Drop the peer now (leave, reason forgotten); its next beacon adds it again.
    void forget(const node_id& id);

    [[nodiscard]] counters stats() const;

private:
    std::unique_ptr<detail::agent_impl> impl_;
};

} // namespace plexus::discovery
