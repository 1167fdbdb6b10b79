// plexus::node: a service host, RPC client, publisher and subscriber in one object.
//
//   plexus::node n({.name = "calc"});
//   n.serve("calc").method("add", [](const add_req& r) { return add_rep{r.a + r.b}; });
//   n.start();                                      // binds, ready to serve
//   auto rep = other.call<add_rep>("calc", "add", add_req{1, 2});
//
// Threading model (docs/THREADING.md):
//  - Every ZeroMQ socket belongs to exactly one thread.
//  - The node's I/O thread owns the ROUTER (server), PUB, SUB and the DEALERs used
//    by asynchronous calls. Handlers declared execution::inline_loop run there.
//  - Handlers declared execution::pool (the default) run on a worker pool; their
//    replies return to the I/O thread through an eventfd-signalled queue.
//  - A synchronous call runs on the calling thread, over a DEALER that thread owns
//    (one per thread and peer, created on first use): no hop through the I/O thread.
//  - Every public member function is safe to call from any thread, except that a
//    synchronous call from the I/O thread (an inline handler) fails at once with
//    failed_precondition rather than deadlock.
//  - start() and stop() are synchronous and bounded by node_options::shutdown_timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <plexus/codec.hpp>
#include <plexus/discovery/agent.hpp>
#include <plexus/context.hpp>
#include <plexus/error.hpp>
#include <plexus/headers.hpp>
#include <plexus/interceptor.hpp>
#include <plexus/log.hpp>

namespace plexus {

namespace detail {
class node_impl;

template <class F>
struct first_arg : first_arg<decltype(&F::operator())> {};
template <class R, class A, class... Rest>
struct first_arg<R (*)(A, Rest...)> {
    using type = std::remove_cvref_t<A>;
};
template <class C, class R, class A, class... Rest>
struct first_arg<R (C::*)(A, Rest...) const> {
    using type = std::remove_cvref_t<A>;
};
template <class C, class R, class A, class... Rest>
struct first_arg<R (C::*)(A, Rest...)> {
    using type = std::remove_cvref_t<A>;
};
} // namespace detail

// Reserved service served by every node: methods "ping", "describe", "stats".
inline constexpr std::string_view system_service = "plexus";

enum class execution : std::uint8_t {
    inline_loop, // on the I/O thread: fastest; must not block and must not make synchronous calls
    pool,        // on a worker thread: may block and call other services
};

enum class overflow : std::uint8_t {
    block, // publish() waits for room (ZMQ_XPUB_NODROP back-pressure), bounded by the call's timeout
    drop,  // publish() returns false and the drop is counted
};

// How a call picks one of the live instances of a service.
enum class balance_policy : std::uint8_t {
    round_robin,     // in turn
    least_in_flight, // power of two choices: of two random instances, the one with fewer calls in flight
};

// What the built-in tracing does (W3C Trace Context in the "traceparent" header, and
// the "call-chain" header; docs/PROTOCOL.md s.10).
enum class trace_mode : std::uint8_t {
    off,       // nothing: headers travel as they are, no span per hop
    propagate, // a trace that arrives gets a new span per hop and the call chain grows;
               // calls and events made outside any trace carry none
    start,     // as propagate, and a call or event made outside any trace starts one
};

// What context headers travel where (docs/PROTOCOL.md, "Context headers").
struct header_policy {
    // Keys never carried from a handler's context into the calls and events it makes
    // (besides keys starting with "hop-", which never are).
    std::vector<std::string> hop_by_hop{};
    // Keys removed from every call to one service, e.g. {"billing", {"authorization"}}.
    std::vector<std::pair<std::string, std::vector<std::string>>> strip_for{};
    // Keys removed from incoming requests and events before anything sees them
    // (e.g. a role header only inner services may set).
    std::vector<std::string> reject_inbound{};
    // Cap on the sum of key and value lengths of one envelope's headers: a call or event
    // over it fails with resource_exhausted; a request over it is answered so.
    std::size_t max_header_bytes = 16 * 1024;
    // Hops kept in the "call-chain" header (the last ones).
    std::size_t max_call_chain = 10;
};

struct node_options {
    std::string name = "node";
    // RPC (ROUTER) endpoints to bind. "tcp://127.0.0.1:*" picks a free port.
    std::vector<std::string> bind{"tcp://127.0.0.1:*"};
    // Event (PUB) endpoints to bind. Empty: this node does not publish.
    std::vector<std::string> pub_bind{"tcp://127.0.0.1:*"};
    // Peers' RPC endpoints. The node asks each for `describe` to learn the services
    // it offers and its event endpoints (retrying until the peer answers).
    std::vector<std::string> connect{};
    // Event endpoints of publishers to subscribe to directly (e.g. a plain PUB).
    std::vector<std::string> subscribe_to{};
    // Threads running execution::pool handlers and async-call callbacks.
    unsigned workers = 4;
    // Largest message accepted (ZMQ_MAXMSGSIZE) and sent; larger ones fail with
    // resource_exhausted before they leave.
    std::int64_t max_message_size = 4 * 1024 * 1024;
    // Timeout of a call whose call_options leave it at zero.
    std::chrono::milliseconds default_timeout{5000};
    // Bound on stop(): running handlers finish and queued replies and events flush
    // within it; what is still pending after it is failed with `cancelled`.
    std::chrono::milliseconds shutdown_timeout{2000};
    // Publisher's policy when a subscriber is slower than the publisher.
    plexus::overflow publish_overflow = overflow::block;
    // High-water marks (messages) of every socket.
    int send_hwm = 10000;
    int recv_hwm = 10000;
    // Discovery: when set, the node announces its endpoints, services and topics with
    // UDP beacons (plexus::discovery::agent) and resolves services by name through the
    // peers it sees; `name`, `id` and `announce` are filled in by the node. Unset: peers
    // come from `connect` only. Tests must give each their own port and cluster.
    std::optional<discovery::beacon_options> discovery{};
    // Default instance choice of calls by name (call_options may override it).
    balance_policy balance = balance_policy::round_robin;
    // Context header propagation rules.
    header_policy propagation{};
    // Built-in tracing. `propagate` saves the ~70-byte traceparent (and its cost) on
    // calls and events that start outside any trace.
    trace_mode tracing = trace_mode::start;
    // Interceptors after the built-in ones, in this order (see interceptor.hpp).
    std::vector<std::shared_ptr<interceptor>> interceptors{};
    // Whether the system method plexus.publish may publish on this node's behalf
    // (used by `plexus pub`). Off by default: it lets any caller emit events.
    bool remote_publish = false;
    log_level log = log_level::info;
    // Where log lines go (one logfmt line each, no newline). Default: stderr.
    std::function<void(log_level, std::string_view)> log_sink{};
};

// What a handler receives. Views valid while the handler runs.
struct request {
    std::string_view service;
    std::string_view method;
    std::string_view body;
    std::uint64_t id = 0;
    // The handler's context: the request's headers and deadline. Calls and publishes
    // made while handling carry it on (see context.hpp).
    plexus::context& context;
};

struct call_options {
    // 0: node_options::default_timeout. The effective deadline is the earlier of this
    // and the current context's deadline.
    std::chrono::milliseconds timeout{0};
    // Set on top of the propagated context headers for this call only.
    plexus::headers headers{};
    // Send to this RPC endpoint instead of resolving the service by name.
    std::string endpoint{};
    // Instance choice for this call; unset: node_options::balance.
    std::optional<balance_policy> balance{};
    // Where the callback of call_async(..., on_done) runs: a worker (pool), or the I/O
    // thread as the reply is read (inline_loop: no thread hand-off; the callback must
    // not block, and a call that fails before it is sent completes on the caller).
    execution callback_exec = execution::pool;
};

struct reply {
    plexus::status status;
    std::string body;

    [[nodiscard]] bool ok() const noexcept { return status.ok(); }
    // Throws plexus::error(status) when not ok.
    void check() const {
        if (!status.ok()) throw plexus::error(status);
    }
    template <class T>
    [[nodiscard]] T as() const {
        check();
        return plexus::unpack<T>(body);
    }
};

struct event {
    std::string topic;
    std::string body;
    // As they arrived (less the keys the node rejects inbound). The handler's context,
    // context::current(), holds them as they travel on, with this hop's trace span.
    plexus::headers headers;
    std::uint64_t seq = 0;
    std::string source; // publishing node's id, 16 bytes (may be empty for plain publishers)

    template <class T>
    [[nodiscard]] T as() const {
        return plexus::unpack<T>(body);
    }
};

struct method_options {
    execution exec = execution::pool;
    std::string doc{};
};

using raw_handler = std::function<std::string(request&)>;
using event_handler = std::function<void(const event&)>;

class service_builder {
public:
    service_builder& doc(std::string text);
    // Version announced with the service through discovery (free text, e.g. "1.4.2").
    service_builder& version(std::string v);

    // Handler over raw bytes: returns the reply body. Throwing plexus::error replies
    // with its code and message; any other exception replies `internal`.
    service_builder& raw_method(std::string name, raw_handler fn, method_options opts = {},
                                std::string request_shape = {}, std::string reply_shape = {});

    // Typed handler: F is callable as Rep(const Req&) or Rep(const Req&, request&),
    // with Req deduced from F's (non-generic) call operator. Req and Rep travel through
    // msgpack-c adaptors; a body that does not decode as Req is answered
    // invalid_argument without calling F.
    template <class F>
    service_builder& method(std::string name, F fn, method_options opts = {}) {
        using Req = typename detail::first_arg<F>::type;
        using Rep = std::conditional_t<std::is_invocable_v<F, const Req&, request&>,
                                       std::invoke_result<F, const Req&, request&>,
                                       std::invoke_result<F, const Req&>>;
        using R = typename Rep::type;
        raw_handler h = [fn = std::move(fn)](request& rq) -> std::string {
            Req in = plexus::unpack<Req>(rq.body);
            if constexpr (std::is_invocable_v<F, const Req&, request&>) {
                if constexpr (std::is_void_v<R>) {
                    fn(in, rq);
                    return std::string(1, '\xc0');
                } else {
                    return plexus::pack(fn(in, rq));
                }
            } else {
                if constexpr (std::is_void_v<R>) {
                    fn(in);
                    return std::string(1, '\xc0');
                } else {
                    return plexus::pack(fn(in));
                }
            }
        };
        return raw_method(std::move(name), std::move(h), std::move(opts), shape_of<Req>(), shape_of<R>());
    }

private:
    friend class detail::node_impl;
    service_builder(detail::node_impl& impl, std::string service) : impl_(&impl), service_(std::move(service)) {}
    detail::node_impl* impl_;
    std::string service_;
};

class node;

// Receives events while it lives; unsubscribes when destroyed or cancelled.
class subscription {
public:
    subscription() = default;
    subscription(subscription&&) noexcept;
    subscription& operator=(subscription&&) noexcept;
    subscription(const subscription&) = delete;
    subscription& operator=(const subscription&) = delete;
    ~subscription();
    void cancel() noexcept;
    [[nodiscard]] bool active() const noexcept { return id_ != 0; }

private:
    friend class node;
    subscription(std::weak_ptr<detail::node_impl> impl, std::uint64_t id) : impl_(std::move(impl)), id_(id) {}
    std::weak_ptr<detail::node_impl> impl_;
    std::uint64_t id_ = 0;
};

struct topic_stats {
    std::string topic;
    std::uint64_t published = 0, dropped = 0, received = 0, gaps = 0;
};
struct method_stats {
    std::string service, method;
    std::uint64_t calls = 0, errors = 0, in_flight = 0;
    std::vector<std::pair<code, std::uint64_t>> errors_by_code{};
    // Latency estimated from the histogram, microseconds (0 without calls).
    double p50_us = 0, p90_us = 0, p99_us = 0;
};
struct node_stats {
    std::vector<method_stats> methods;
    std::vector<topic_stats> topics;
    std::uint64_t malformed = 0;           // undecodable envelopes received
    std::uint64_t unsupported_version = 0; // envelopes of another protocol version
    std::uint64_t calls_sent = 0, call_errors = 0;
    // Connections the I/O thread holds to peers' RPC endpoints (async calls, and the
    // watch on endpoints that sync calls use); one that goes down is closed.
    std::uint64_t peer_connections = 0;
};

namespace detail {
struct reply_slot;
} // namespace detail

// The result of node::call_async: ready by the call's deadline. Used like
// std::future<reply> (get() once; wait, wait_for, wait_until giving
// std::future_status), without what std::promise costs per call (two allocations and
// a futex system call on completion: libstdc++ completes through std::call_once).
// Any thread may wait; one calls get().
class call_future {
public:
    call_future() = default;
    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(slot_); }
    // Waits for the reply and hands it over; valid() is false afterwards. Throws
    // std::future_error (no_state) when not valid.
    reply get();
    void wait() const;
    [[nodiscard]] std::future_status wait_until(clock::time_point t) const;
    template <class Rep, class Period>
    [[nodiscard]] std::future_status wait_for(const std::chrono::duration<Rep, Period>& d) const {
        return wait_until(clock::now() + std::chrono::ceil<clock::duration>(d));
    }
    [[nodiscard]] bool ready() const noexcept;

private:
    friend class node;
    explicit call_future(std::shared_ptr<detail::reply_slot> s) : slot_(std::move(s)) {}
    std::shared_ptr<detail::reply_slot> slot_;
};

class node {
public:
    explicit node(node_options opts = {});
    ~node(); // stop(), then releases everything
    node(const node&) = delete;
    node& operator=(const node&) = delete;

    // Declares a service; before start() only. Throws failed_precondition afterwards,
    // invalid_argument for the reserved name "plexus" or an empty name.
    service_builder serve(std::string service);
    // Declares a topic this node publishes, for `describe` and discovery. Optional, but
    // with discovery it lets subscribers connect before the first event: a name ending
    // in '.' declares a family ("delivery." for "delivery.<id>"). Undeclared topics are
    // announced when first published, unless a declared one covers them.
    void declare_topic(std::string topic, std::string doc = {}, std::string shape = {});
    template <class T>
    void declare_topic(std::string topic, std::string doc = {}) {
        declare_topic(std::move(topic), std::move(doc), shape_of<T>());
    }

    // Binds and starts the I/O and worker threads; returns when ready to serve.
    // Throws plexus::error (e.g. unavailable when an endpoint cannot be bound).
    void start();
    // Idempotent and bounded (node_options::shutdown_timeout). Calls in flight fail
    // with `cancelled`.
    void stop();

    [[nodiscard]] const std::string& name() const noexcept;
    [[nodiscard]] std::string id_hex() const;
    // Endpoints actually bound (ports resolved), valid after start().
    [[nodiscard]] std::vector<std::string> endpoints() const;
    [[nodiscard]] std::vector<std::string> pub_endpoints() const;

    // Adds a peer's RPC endpoint at run time (same as node_options::connect).
    void connect(std::string endpoint);
    // Subscribes the event socket to a publisher's endpoint directly.
    void connect_events(std::string endpoint);

    // --- discovery (node_options::discovery) ---
    // The peers seen now; empty without discovery.
    [[nodiscard]] std::vector<discovery::peer> peers() const;
    // Join, update and leave events of peers. Runs on the discovery thread: be quick and
    // do not call blocking node functions from it. Registered before start(), it sees
    // every event. Returns a token for remove_peer_handler().
    std::uint64_t on_peer_event(std::function<void(const discovery::event&)> fn);
    void remove_peer_handler(std::uint64_t token);
    // The UDP port discovery listens on (resolved when it was 0); 0 without discovery.
    [[nodiscard]] std::uint16_t discovery_port() const noexcept;

    // --- request-response ---
    // Non-throwing: every failure is in reply::status (deadline_exceeded, unavailable, ...).
    [[nodiscard]] reply call_raw(std::string_view service, std::string_view method, std::string_view body,
                                 const call_options& opts = {});
    // Typed and throwing.
    template <class Rep, class Req>
    Rep call(std::string_view service, std::string_view method, const Req& req, const call_options& opts = {}) {
        reply r = call_raw(service, method, plexus::pack(req), opts);
        if constexpr (std::is_void_v<Rep>) {
            r.check();
        } else {
            return r.as<Rep>();
        }
    }
    // Asynchronous: sent through the I/O thread, many in flight on one connection.
    // Never blocks; the future always becomes ready by the call's deadline. A call by
    // name made while the node is still learning its peers (discovery's first beacon
    // interval, `connect` peers not yet described) waits on the I/O thread for an
    // instance to be known, up to its deadline (then UNAVAILABLE), as a synchronous
    // call would wait on its caller's thread.
    [[nodiscard]] call_future call_async(std::string_view service, std::string_view method, std::string_view body,
                                                const call_options& opts = {});
    // The callback runs with the caller's context current, on a worker thread or, with
    // call_options::callback_exec = inline_loop, on the I/O thread.
    void call_async(std::string_view service, std::string_view method, std::string_view body, const call_options& opts,
                    std::function<void(reply)> on_done);

    // --- publish-subscribe ---
    // Returns false when the event was dropped (overflow::drop and no room, or the
    // node is stopped). Headers of the current context travel with the event.
    bool publish_raw(std::string_view topic, std::string_view body, const plexus::headers& extra = {});
    template <class T>
    bool publish(std::string_view topic, const T& value, const plexus::headers& extra = {}) {
        return publish_raw(topic, plexus::pack(value), extra);
    }
    // Delivers every event whose topic starts with `prefix` (empty: all).
    [[nodiscard]] subscription subscribe(std::string prefix, event_handler fn, execution exec = execution::pool);

    [[nodiscard]] node_stats stats() const;
    // The metrics in Prometheus text exposition format (version 0.0.4).
    [[nodiscard]] std::string metrics_text() const;

    // Writes a logfmt line through the node's log sink, with the node name and, while
    // handling, the trace id and span id of the current context.
    void log(log_level level, std::string_view message, const plexus::headers& fields = {}) const;

private:
    std::shared_ptr<detail::node_impl> impl_;
};

} // namespace plexus
