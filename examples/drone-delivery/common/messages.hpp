// The bodies the drone-delivery services exchange: plain structs that travel as
// MessagePack maps (MSGPACK_DEFINE_MAP), so `plexus call` and `plexus sub` show them
// as JSON with field names.
//
// Services and methods (request -> reply):
//   scheduler.schedule       schedule_request -> schedule_reply
//   scheduler.cancel|status|reschedule  delivery_ref -> delivery_status
//   accounts.check           account_ref      -> account_info
//   package.create           package_request  -> package_info
//   package.cancel           package_ref      -> package_info
//   delivery.create          create_delivery  -> delivery_info
//   delivery.get|cancel      delivery_ref     -> delivery_info
//   delivery.info            (any body)       -> instance_info
//   drone-management.assign  assign_request   -> assignment
//   drone-management.recall  delivery_ref     -> assignment
//   delivery-history.history delivery_ref     -> history_reply
//   delivery-history.sources (any body)       -> sources_reply
//
// Topics:
//   drone.<drone>.position  drone_position   a few times a second while flying
//   drone.<drone>.battery   drone_battery    idem
//   drone.<drone>.status    drone_status     taking-off, en-route, delivered, recalled
//   drone.fleet             fleet_status     every heartbeat (the fleet at a glance)
//   delivery.<delivery-id>  delivery_event   Created, Rescheduled, InTransit, DeliveryComplete, Cancelled
//   delivery.heartbeat      instance_info    every heartbeat, from each delivery instance
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <plexus/node.hpp>

namespace demo {

// ---- scheduler ----
struct schedule_request {
    std::string account;     // who pays: "acct-..." is in good standing, "bad-..." is not
    std::string description; // what the package is
    double weight_kg = 0;
    std::string dropoff;
    double distance_km = 0;  // sets how long the drone flies
    MSGPACK_DEFINE_MAP(account, description, weight_kg, dropoff, distance_km)
};

struct schedule_reply {
    std::string delivery_id;
    std::string package_id;
    std::string owner;       // the delivery instance that owns the delivery
    std::string drone;
    std::string trace_id;    // the trace id the scheduler saw (one per delivery)
    std::vector<std::string> steps; // who called whom, for the transcript
    MSGPACK_DEFINE_MAP(delivery_id, package_id, owner, drone, trace_id, steps)
};

struct delivery_ref {
    std::string delivery_id;
    MSGPACK_DEFINE_MAP(delivery_id)
};

struct delivery_status {
    std::string delivery_id;
    std::string state;  // a delivery state (below), or "OwnerLost" when its owner is gone
    std::string owner;
    std::string drone;
    std::string detail;
    MSGPACK_DEFINE_MAP(delivery_id, state, owner, drone, detail)
};

// ---- accounts ----
struct account_ref {
    std::string account;
    MSGPACK_DEFINE_MAP(account)
};
struct account_info {
    std::string account;
    std::string standing;
    MSGPACK_DEFINE_MAP(account, standing)
};

// ---- package ----
struct package_request {
    std::string account;
    std::string description;
    double weight_kg = 0;
    MSGPACK_DEFINE_MAP(account, description, weight_kg)
};
struct package_ref {
    std::string package_id;
    MSGPACK_DEFINE_MAP(package_id)
};
struct package_info {
    std::string package_id;
    std::string account;
    std::string description;
    double weight_kg = 0;
    std::string state; // "registered", "cancelled"
    MSGPACK_DEFINE_MAP(package_id, account, description, weight_kg, state)
};

// ---- delivery ----
// Delivery states, also the kinds of delivery events.
namespace state {
inline constexpr std::string_view created = "Created";
inline constexpr std::string_view rescheduled = "Rescheduled";
inline constexpr std::string_view in_transit = "InTransit";
inline constexpr std::string_view complete = "DeliveryComplete";
inline constexpr std::string_view cancelled = "Cancelled";
inline constexpr std::string_view owner_lost = "OwnerLost"; // scheduler.status only
} // namespace state

[[nodiscard]] inline bool is_final(std::string_view s) { return s == state::complete || s == state::cancelled; }

struct create_delivery {
    std::string delivery_id;
    std::string package_id;
    std::string account;
    std::string dropoff;
    double distance_km = 0;
    bool reschedule = false; // taking over a delivery whose owner is gone
    MSGPACK_DEFINE_MAP(delivery_id, package_id, account, dropoff, distance_km, reschedule)
};

struct delivery_info {
    std::string delivery_id;
    std::string state;
    std::string owner;          // instance name
    std::string owner_endpoint; // its RPC endpoint: the scheduler calls the owner there
    std::string drone;
    std::string assign_chain;   // the call-chain drone-management saw for assign
    MSGPACK_DEFINE_MAP(delivery_id, state, owner, owner_endpoint, drone, assign_chain)
};

struct instance_info {
    std::string instance;
    std::string endpoint;
    std::uint32_t owned = 0;  // deliveries owned, any state
    std::uint32_t active = 0; // not final yet
    bool drone_feed = false;  // drone events reach this instance
    MSGPACK_DEFINE_MAP(instance, endpoint, owned, active, drone_feed)
};

struct delivery_event {
    std::string delivery_id;
    std::string kind; // a delivery state
    std::string owner;
    std::string drone;
    std::string detail;
    MSGPACK_DEFINE_MAP(delivery_id, kind, owner, drone, detail)
};

// ---- drone-management ----
struct assign_request {
    std::string delivery_id;
    double distance_km = 0;
    MSGPACK_DEFINE_MAP(delivery_id, distance_km)
};
struct assignment {
    std::string delivery_id;
    std::string drone;
    std::string flight; // "in-flight", "delivered", "recalled"
    std::uint32_t flight_ms = 0;
    std::string call_chain; // as seen by drone-management
    MSGPACK_DEFINE_MAP(delivery_id, drone, flight, flight_ms, call_chain)
};

struct drone_position {
    std::string drone;
    std::string delivery_id;
    double lat = 0, lon = 0, altitude_m = 0;
    double progress = 0; // 0..1 of the way to the drop-off
    MSGPACK_DEFINE_MAP(drone, delivery_id, lat, lon, altitude_m, progress)
};
struct drone_battery {
    std::string drone;
    std::string delivery_id;
    double percent = 0;
    MSGPACK_DEFINE_MAP(drone, delivery_id, percent)
};
struct drone_status {
    std::string drone;
    std::string delivery_id;
    std::string status; // "taking-off", "en-route", "delivered", "recalled"
    MSGPACK_DEFINE_MAP(drone, delivery_id, status)
};
struct drone_summary {
    std::string drone;
    std::string status; // "idle" or "flying"
    double battery = 0;
    MSGPACK_DEFINE_MAP(drone, status, battery)
};
struct fleet_status {
    std::vector<drone_summary> drones;
    MSGPACK_DEFINE_MAP(drones)
};

// ---- delivery-history ----
struct history_entry {
    std::string kind;
    std::string owner;
    std::string drone;
    std::string detail;
    std::string user_id;  // from the event's context
    std::string trace_id; // idem
    std::uint64_t at_ms = 0; // wall clock, ms since the epoch, when recorded
    MSGPACK_DEFINE_MAP(kind, owner, drone, detail, user_id, trace_id, at_ms)
};
struct history_reply {
    std::string delivery_id;
    std::vector<history_entry> events;
    MSGPACK_DEFINE_MAP(delivery_id, events)
};
struct sources_reply {
    std::vector<std::string> instances; // delivery instances heard from
    MSGPACK_DEFINE_MAP(instances)
};

inline constexpr std::string_view heartbeat_topic = "delivery.heartbeat";
inline constexpr std::string_view fleet_topic = "drone.fleet";

} // namespace demo
