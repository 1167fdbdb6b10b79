// The node runtime. See docs/THREADING.md for the model; in short:
//  - io thread: owns router_, pub_, sub_ and the DEALERs of async calls (async_socks_);
//    runs inline handlers and system methods; sends replies and events.
//  - workers: run pool handlers, event handlers and async callbacks; hand replies back
//    through replies_ (eventfd-signalled batch queue).
//  - any thread: sync calls over its own DEALER (a `channel`), publish through pubq_.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include <zmq.hpp>

#include <plexus/envelope.hpp>
#include <plexus/node.hpp>

#include "builtins.hpp"
#include "util.hpp"

namespace plexus::detail {

struct method_entry {
    std::string service;
    std::string name;
    raw_handler fn;
    method_options opts;
    std::string request_shape, reply_shape;
};

struct service_entry {
    std::string name;
    std::string doc;
    std::vector<std::unique_ptr<method_entry>> methods;
};

struct topic_decl {
    std::string name, doc, shape;
};

// A thread's client connections to peers for synchronous calls: one DEALER per
// endpoint, used only by the thread that created it. The node keeps the channel
// alive and closes its sockets at stop() (under `mu`, which the owner holds during a
// call, so the hand-over is a full memory barrier as ZeroMQ requires).
struct channel {
    std::mutex mu;
    bool closed = false;
    std::atomic<bool> abandoned{false}; // owner thread exited
    std::unordered_map<std::string, zmq::socket_t> socks;
};

// Work handed from the io thread to a worker for a pool handler. `view` points into
// the last frame: moving the vector moves its buffer, not the messages.
struct request_job {
    std::vector<zmq::message_t> frames; // routing frames + delimiter + envelope (last)
    std::size_t route_len = 0;          // routing frames + delimiter
    envelope_view view;
    clock::time_point received;
    method_entry* method = nullptr;
};

// A reply ready to leave on the io thread: the request's frames, of which the first
// route_len (routing frames + delimiter) go back in front of the envelope.
struct outgoing_reply {
    std::vector<zmq::message_t> frames;
    std::size_t route_len = 0;
    zmq::message_t envelope;
};

// What a node knows of one peer RPC endpoint; shared by every thread calling it, and
// what a call holds instead of a copy of the endpoint's name. When the peer is seen to
// go away the state is marked down and replaced in node_impl::endpoint_states_: the
// calls that still hold it fail at once, new calls get the fresh state.
struct endpoint_state {
    explicit endpoint_state(std::string ep)
        : endpoint(std::move(ep)), down_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
    ~endpoint_state() {
        if (down_fd >= 0) ::close(down_fd);
    }
    endpoint_state(const endpoint_state&) = delete;
    endpoint_state& operator=(const endpoint_state&) = delete;

    // Wakes every synchronous call waiting on down_fd; the fd stays readable for good.
    void mark_down() noexcept {
        is_down.store(true);
        if (down_fd >= 0) {
            std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(down_fd, &one, sizeof one);
        }
    }

    const std::string endpoint;
    const int down_fd; // readable once down (-1 if no eventfd could be made: then polled)
    std::atomic<bool> is_down{false};
    std::atomic<bool> watched{false}; // the I/O thread has been asked to monitor it
    std::atomic<int> in_flight{0};    // for balance_policy::least_in_flight
    std::optional<discovery::node_id> peer; // under routes_mu_
    zmq::socket_t* io_sock = nullptr;       // its DEALER in async_socks_; I/O thread only
};

// The shared state of a call_future: the reply and whether it is there. Completion
// costs an atomic exchange, and a futex wake only when a thread waits.
struct reply_slot {
    // 0: pending; 1: pending and a thread waits (or is about to); 2: ready
    std::atomic<std::uint32_t> state{0};
    reply value;

    void fulfil(reply r) noexcept; // exactly once
    // Whether it is ready by `until` (no bound: waits for it).
    bool wait_until(const std::optional<clock::time_point>& until) const noexcept;
};

struct pending_call : reply_slot {
    // A call parked until its service is known keeps what is encoded when it is sent.
    std::string parked_body;
    balance_policy policy = balance_policy::round_robin;
    std::uint64_t id = 0;
    // for the interceptors' after_call
    std::string service, method;
    headers sent;
    clock::time_point started;
    std::size_t ran = 0;
    clock::time_point deadline;
    std::shared_ptr<endpoint_state> target;
    bool has_future = false; // the reply goes to the reply_slot this call is
    std::function<void(reply)> callback;   // run on a worker, or on the I/O thread when callback_inline
    bool callback_inline = false;
    std::function<void(reply)> on_io;      // run on the I/O thread (internal calls)
    std::shared_ptr<context> ctx; // current for the callback

    [[nodiscard]] std::string_view endpoint() const noexcept {
        return target ? std::string_view(target->endpoint) : std::string_view();
    }
};

// The request is encoded by the caller, into the message the I/O thread sends.
struct async_call_cmd {
    std::shared_ptr<pending_call> call;
    zmq::message_t envelope;
};
struct subscribe_cmd {
    std::uint64_t id;
    std::string prefix;
    bool add;
};
struct connect_peer_cmd {
    std::string endpoint;
};
struct connect_events_cmd {
    std::string endpoint;
};
struct disconnect_events_cmd {
    std::string endpoint;
};
// Open a monitored connection to an endpoint that synchronous calls use, so that its
// loss is seen (ZMQ_EVENT_DISCONNECTED) while calls are in flight.
struct watch_cmd {
    std::string endpoint;
};
struct endpoint_down_cmd {
    std::string endpoint;
    std::string why;
};
struct stop_cmd {};
using command = std::variant<async_call_cmd, subscribe_cmd, connect_peer_cmd, connect_events_cmd,
                             disconnect_events_cmd, watch_cmd, endpoint_down_cmd, stop_cmd>;

struct pub_item {
    std::string topic;
    zmq::message_t envelope; // encoded by the publishing thread, sent as it is
};

// Lets unordered maps keyed by std::string be searched with a string_view.
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

struct topic_counters { // publishing side, under node_impl::pub_mu_
    std::uint64_t seq = 0;
    std::uint64_t published = 0, dropped = 0;
};
struct received_counters { // receiving side: written by the I/O thread, read by stats()
    std::atomic<std::uint64_t> received{0}, gaps{0};
};
struct seq_state {
    std::uint64_t last = 0;
    received_counters* counters = nullptr;
};

// Runs tasks one at a time, in order, on the worker pool: a subscription's events
// reach its handler in the order they arrived, without holding the I/O thread.
struct strand {
    std::mutex mu;
    std::deque<task> q;
    bool scheduled = false;
};

struct subscriber_entry {
    std::uint64_t id;
    std::string prefix;
    event_handler fn;
    execution exec;
    std::shared_ptr<strand> order = std::make_shared<strand>();
};

struct peer_state {
    std::string endpoint;
    bool described = false;      // its services are in routes_ now
    bool ever_described = false; // counted out of peers_pending_
    clock::time_point next_describe;
    std::uint64_t pending_id = 0;
};

class node_impl;
// The node whose I/O thread is the current thread (nullptr elsewhere).
extern thread_local const node_impl* tl_io_owner;

class node_impl : public std::enable_shared_from_this<node_impl> {
public:
    explicit node_impl(node_options opts);
    ~node_impl();

    // --- lifecycle (node facade) ---
    void start();
    void stop();

    // --- registry (before start) ---
    void add_method(const std::string& service, std::string name, raw_handler fn, method_options opts,
                    std::string request_shape, std::string reply_shape);
    void set_service_doc(const std::string& service, std::string doc);
    void declare_topic(std::string topic, std::string doc, std::string shape);
    service_builder builder(std::string service);

    // --- client ---
    reply call_sync(std::string_view service, std::string_view method, std::string_view body, const call_options& opts);
    // With a callback, or (cb empty) for a call_future: returns its slot.
    std::shared_ptr<reply_slot> call_async(std::string_view service, std::string_view method, std::string_view body,
                                           const call_options& opts, std::function<void(reply)> cb);

    // --- pub/sub ---
    bool publish(std::string_view topic, std::string_view body, const headers& extra) {
        return publish_seq(topic, body, extra) != 0;
    }
    // The event's sequence number, 0 when dropped.
    std::uint64_t publish_seq(std::string_view topic, std::string_view body, const headers& extra);
    std::uint64_t subscribe(std::string prefix, event_handler fn, execution exec);
    void unsubscribe(std::uint64_t id);
    void connect_peer(std::string endpoint);
    void connect_events(std::string endpoint);

    node_stats stats() const;
    std::string metrics_text() const;

    // --- discovery ---
    std::vector<discovery::peer> peers() const;
    std::uint64_t add_peer_handler(std::function<void(const discovery::event&)> fn);
    void remove_peer_handler(std::uint64_t token);
    std::uint16_t discovery_port() const noexcept;
    void set_service_version(const std::string& service, std::string v);

    const node_options opts;
    const std::string node_id;  // 16 random bytes
    const std::uint64_t uid;    // distinguishes node instances in thread-local caches
    std::vector<std::string> rpc_endpoints, pub_endpoints_;
    logger log;

private:
    friend class plexus::service_builder;

    // io thread
    void io_main(std::promise<void> ready);
    void io_bind(); // on io thread, before ready
    // Each handler returns how many messages it took (0: nothing was waiting).
    std::size_t handle_router();
    std::size_t handle_sub();
    void refresh_subscribers(); // I/O thread: subscribers_io_ up to date
    void deliver(const event& ev, const event_handler& fn); // runs one subscriber's handler
    std::size_t handle_async_sock(const std::string& endpoint, zmq::socket_t& s);
    std::size_t handle_commands();
    void flush_publications();
    void expire_calls(clock::time_point now);
    std::optional<clock::time_point> next_deadline(); // of the calls in flight
    void tick_peers(clock::time_point now);
    void dispatch_request(std::vector<zmq::message_t>& frames);
    void send_reply(std::span<zmq::message_t> route, zmq::message_t env);
    void reply_error(std::span<zmq::message_t> route, std::uint64_t id, code c, std::string_view msg);
    zmq::socket_t& async_socket(const std::string& endpoint);
    zmq::socket_t& async_socket(endpoint_state& ep);
    // Ends a call: counters, after_call hooks, then its future, callback (on a worker
    // unless inline or !may_post) or I/O-thread continuation.
    void complete(std::shared_ptr<pending_call> call, reply r, bool may_post = true);
    [[nodiscard]] status request_size_ok(std::size_t bytes) const; // resource_exhausted over max_message_size
    void run_callback(pending_call& call, reply r); // with the caller's context current
    // Registers / removes an outstanding call on the I/O thread (pending_ and deadlines_).
    void add_pending(const std::shared_ptr<pending_call>& call);
    std::shared_ptr<pending_call> take_pending(std::unordered_map<std::uint64_t, std::shared_ptr<pending_call>>::iterator it);
    void on_describe_reply(const std::string& peer, const reply& r);
    void drain_and_close();
    // Completes with CANCELLED the async calls still queued once the I/O thread is gone
    // (their futures would wait for ever otherwise); any thread.
    void cancel_queued_calls();
    void endpoint_down(const std::string& endpoint, const std::string& why);
    void close_dead_endpoints(); // end of an I/O turn: sockets of endpoints gone down
    void close_async_socket(std::map<std::string, zmq::socket_t>::iterator it); // and its monitor
    std::vector<std::string> dead_endpoints_;
    void watch(const std::string& endpoint);
    std::size_t handle_monitor(const std::string& endpoint, zmq::socket_t& pair);
    // discovery
    void start_discovery();
    void on_discovery_event(const discovery::event& e); // discovery thread
    void announce();                                    // re-announce services and topics
    void connect_matching_publishers(const std::string& prefix);

    // any thread
    std::string run_handler(method_entry& m, const envelope_view& env, clock::time_point received, code& status,
                            std::string& error);
    zmq::message_t encode_reply(std::uint64_t id, code c, std::string_view error, std::string_view body);
    method_entry* find_method(std::string_view service, std::string_view method) const;
    // An instance of the service, now, or null; `learning`: none may be known yet
    // (peers not described, discovery's first interval), so one may still come.
    std::shared_ptr<endpoint_state> resolve_now(std::string_view service, balance_policy policy, bool& learning);
    // An instance of the service, waiting until the deadline for one to be known.
    std::shared_ptr<endpoint_state> resolve(std::string_view service, clock::time_point deadline, status& why,
                                            balance_policy policy);
    std::shared_ptr<endpoint_state> state_of(const std::string& endpoint); // locks routes_mu_
    zmq::message_t encode_request(std::uint64_t id, std::string_view service, std::string_view method,
                                  std::string_view body, const headers& h, clock::time_point deadline);
    std::shared_ptr<endpoint_state>& state_locked(const std::string& endpoint); // under routes_mu_
    // The current context's headers that travel on (hop-by-hop ones left behind),
    // overridden by `extra`.
    void outgoing_headers(const headers& extra, headers& out) const;
    clock::time_point deadline_for(const call_options& opts, clock::time_point now) const;
    std::shared_ptr<channel> my_channel();
    void post_task(task t);
    void post_ordered(const std::shared_ptr<strand>& s, task t);
    void worker_main();
    void install_system_service();

    // system methods (io thread)
    std::string sys_ping(request&);
    std::string sys_describe(request&);
    std::string sys_stats(request&);
    std::string sys_publish(request&);

    zmq::context_t ctx_;
    std::atomic<bool> running_{false};
    std::atomic<bool> stopping_{false};
    std::atomic<bool> io_exited_{false}; // the I/O thread has left its loop for good
    std::once_flag stop_once_;
    clock::time_point started_at_;
    std::atomic<std::uint64_t> next_id_;

    // registry: written before start, read-only afterwards
    std::vector<std::unique_ptr<service_entry>> services_;
    std::vector<topic_decl> topics_decl_;

    // io thread state
    std::thread io_;
    wakeup wake_;
    batch_queue<command> commands_{wake_};
    batch_queue<outgoing_reply> replies_{wake_};
    std::optional<zmq::socket_t> router_, pub_, sub_;
    std::map<std::string, zmq::socket_t> async_socks_;
    std::atomic<std::size_t> async_socks_count_{0}; // async_socks_.size(), for stats()
    std::unordered_map<std::uint64_t, std::shared_ptr<pending_call>> pending_;
    std::vector<std::pair<clock::time_point, std::uint64_t>> deadlines_; // heap, see add_pending
    std::vector<peer_state> peers_;
    std::unordered_set<std::string> event_endpoints_;
    std::vector<subscriber_entry> subscribers_io_; // copy of subscribers_ at subs_io_version_
    std::uint64_t subs_io_version_ = 0;
    event io_event_;                               // the event being delivered (scratch)
    std::string seq_key_;                          // scratch
    std::unordered_map<std::string, seq_state, string_hash, std::equal_to<>> last_seq_; // source + '\0' + topic
    // Per topic received: the I/O thread looks up without a lock (it alone inserts, under
    // received_mu_, which stats() takes to read).
    std::unordered_map<std::string, std::unique_ptr<received_counters>, string_hash, std::equal_to<>> received_;
    mutable std::mutex received_mu_;
    received_counters& received_of(std::string_view topic);
    std::vector<pub_item> pub_backlog_; // taken from pubq_; sent from pub_head_ on
    std::size_t pub_head_ = 0;
    std::vector<outgoing_reply> reply_batch_; // scratch
    std::vector<command> command_batch_;      // scratch
    std::vector<zmq::message_t> frames_;  // scratch
    envelope_view view_;                  // scratch
    std::atomic<std::uint64_t> pool_jobs_in_flight_{0};
    bool io_stopping_ = false;

    // subscriptions: registered from any thread, used on io thread
    std::mutex subs_mu_;
    std::unordered_map<std::uint64_t, subscriber_entry> subscribers_;
    std::atomic<std::uint64_t> subs_version_{1}; // bumped on every change of subscribers_
    std::atomic<std::uint64_t> next_sub_id_{1};

    // publishing
    mutable std::mutex pub_mu_;
    std::condition_variable pub_space_;
    std::vector<pub_item> pubq_;
    work_flag pubq_work_; // pubq_ not empty
    std::size_t pub_queued_ = 0; // pubq_ + pub_backlog_, under pub_mu_
    std::unordered_map<std::string, topic_counters, string_hash, std::equal_to<>> topics_;
    // The counters of a topic, found without building a string; under pub_mu_.
    topic_counters& counters_of(std::string_view topic);

    // routes learnt from peers' describe: service -> endpoints
    mutable std::mutex routes_mu_;
    std::condition_variable routes_cv_;
    struct service_route {
        std::vector<std::shared_ptr<endpoint_state>> instances;
        std::uint64_t next = 0; // round-robin position
        void add(std::shared_ptr<endpoint_state> st) {
            for (auto& i : instances)
                if (i->endpoint == st->endpoint) return;
            instances.push_back(std::move(st));
        }
        void remove(std::string_view endpoint) {
            std::erase_if(instances, [&](const auto& i) { return i->endpoint == endpoint; });
        }
    };
    std::unordered_map<std::string, service_route, string_hash, std::equal_to<>> routes_; // under routes_mu_
    std::shared_ptr<endpoint_state> pick_locked(service_route& r, balance_policy policy); // under routes_mu_
    [[nodiscard]] bool learning_locked() const;                                           // under routes_mu_
    // Async calls waiting for an instance of their service to be known (I/O thread):
    // retried when routes change (routes_changed_) and failed by their deadline.
    std::vector<std::shared_ptr<pending_call>> parked_;
    clock::time_point parked_wake_{}; // when to look at them again without a route change
    work_flag routes_changed_;
    void retry_parked(clock::time_point now);
    void send_async(std::shared_ptr<pending_call> call, zmq::message_t env); // I/O thread
    std::size_t peers_pending_ = 0; // peers not described yet, under routes_mu_

    // sync-call channels, one per calling thread
    std::mutex channels_mu_;
    std::vector<std::shared_ptr<channel>> channels_;

    // workers
    std::mutex work_mu_;
    std::condition_variable work_cv_;
    std::deque<task> work_;
    bool work_stop_ = false;
    std::vector<std::thread> workers_;
    std::atomic<unsigned> workers_running_{0};

    // monitored connections (io thread): endpoint -> PAIR receiving its socket's events
    std::map<std::string, zmq::socket_t> monitors_;
    std::uint64_t next_monitor_ = 0;

    // discovery
    std::unique_ptr<discovery::agent> agent_; // owner; set once in start()
    // What other threads read: published once the agent is set up (requests may be
    // handled, and events published, while start() is still running).
    std::atomic<discovery::agent*> agent_live_{nullptr};
    discovery::agent* agent() const noexcept { return agent_live_.load(std::memory_order_acquire); }
    std::mutex peer_handlers_mu_;
    std::vector<std::pair<std::uint64_t, std::function<void(const discovery::event&)>>> early_peer_handlers_;
    std::uint64_t next_peer_handler_ = std::uint64_t{1} << 63; // apart from the agent's tokens
    std::map<std::uint64_t, std::uint64_t> peer_token_map_;
    std::unordered_map<std::string, std::shared_ptr<endpoint_state>> endpoint_states_; // under routes_mu_
    clock::time_point discovery_warm_until_{};
    std::map<std::string, std::string> service_versions_;
    std::vector<std::string> announced_topics_; // under pub_mu_

    // interceptors: built-ins first, then node_options::interceptors
    std::shared_ptr<metrics_interceptor> metrics_;
    std::shared_ptr<policy_interceptor> policy_;
    std::vector<std::shared_ptr<interceptor>> chain_;
    bool app_interceptors_ = false; // node_options::interceptors is not empty

    // counters
    std::atomic<std::uint64_t> malformed_{0}, unsupported_version_{0}, calls_sent_{0}, call_errors_{0};
};

} // namespace plexus::detail
