// Node lifecycle, the I/O thread's poll loop and the server side of request-response.
#include <plexus/node.hpp>

#include <algorithm>
#include <cstring>
#include <random>

#include "detail/node_impl.hpp"

namespace plexus {
namespace detail {

namespace {
std::atomic<std::uint64_t> next_uid{1};

std::string random_bytes(std::size_t n) {
    std::random_device rd;
    std::string out(n, '\0');
    for (auto& c : out) c = static_cast<char>(rd() & 0xff);
    return out;
}

std::uint64_t random_u64() {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}
} // namespace

// The node whose I/O thread is the current thread (nullptr elsewhere).
thread_local const node_impl* tl_io_owner = nullptr;

node_impl::node_impl(node_options o)
    : opts(std::move(o)), node_id(random_bytes(16)), uid(next_uid.fetch_add(1)),
      log(opts.name, opts.log, opts.log_sink), ctx_(1), next_id_(random_u64() >> 1) {
    install_system_service();
    metrics_ = std::make_shared<metrics_interceptor>();
    policy_ = std::make_shared<policy_interceptor>(opts.propagation);
    chain_ = {metrics_, policy_};
    if (opts.tracing != trace_mode::off)
        chain_.push_back(std::make_shared<tracing_interceptor>(opts.tracing, opts.propagation.max_call_chain));
    chain_.push_back(std::make_shared<logging_interceptor>(log));
    for (auto& i : opts.interceptors)
        if (i) {
            chain_.push_back(i);
            app_interceptors_ = true;
        }
}

node_impl::~node_impl() {
    stop();
}

service_builder node_impl::builder(std::string service) { return service_builder(*this, std::move(service)); }

void node_impl::add_method(const std::string& service, std::string name, raw_handler fn, method_options mo,
                           std::string request_shape, std::string reply_shape) {
    if (running_ || stopping_) throw error(code::failed_precondition, "services must be declared before start()");
    if (service.empty() || name.empty()) throw error(code::invalid_argument, "service and method names must not be empty");
    if (!fn) throw error(code::invalid_argument, "handler of " + service + "." + name + " is empty");
    auto it = std::find_if(services_.begin(), services_.end(), [&](auto& s) { return s->name == service; });
    if (it == services_.end()) {
        services_.push_back(std::make_unique<service_entry>());
        services_.back()->name = service;
        it = std::prev(services_.end());
    }
    for (auto& m : (*it)->methods)
        if (m->name == name) throw error(code::already_exists, "method " + service + "." + name + " declared twice");
    auto m = std::make_unique<method_entry>();
    m->service = service;
    m->name = std::move(name);
    m->fn = std::move(fn);
    m->opts = std::move(mo);
    m->request_shape = std::move(request_shape);
    m->reply_shape = std::move(reply_shape);
    (*it)->methods.push_back(std::move(m));
}

void node_impl::set_service_doc(const std::string& service, std::string doc) {
    if (running_ || stopping_) throw error(code::failed_precondition, "services must be declared before start()");
    for (auto& s : services_)
        if (s->name == service) {
            s->doc = std::move(doc);
            return;
        }
    services_.push_back(std::make_unique<service_entry>());
    services_.back()->name = service;
    services_.back()->doc = std::move(doc);
}

void node_impl::declare_topic(std::string topic, std::string doc, std::string shape) {
    std::lock_guard lk(pub_mu_);
    for (auto& t : topics_decl_)
        if (t.name == topic) {
            t.doc = std::move(doc);
            t.shape = std::move(shape);
            return;
        }
    topics_decl_.push_back({std::move(topic), std::move(doc), std::move(shape)});
}

method_entry* node_impl::find_method(std::string_view service, std::string_view method) const {
    for (auto& s : services_)
        if (s->name == service) {
            for (auto& m : s->methods)
                if (m->name == method) return m.get();
            return nullptr;
        }
    return nullptr;
}

void node_impl::start() {
    if (running_ || stopping_) throw error(code::failed_precondition, "node already started");
    if (opts.max_message_size <= 0) throw error(code::invalid_argument, "max_message_size must be positive");
    started_at_ = clock::now();
    for (auto& s : services_)
        for (auto& m : s->methods) metrics_->add_server_method(m->service, m->name);
    std::promise<void> ready;
    auto fut = ready.get_future();
    io_ = std::thread([this, p = std::move(ready)]() mutable { io_main(std::move(p)); });
    try {
        fut.get();
    } catch (...) {
        io_.join();
        throw;
    }
    const unsigned n = std::max(1u, opts.workers);
    workers_running_ = n;
    for (unsigned i = 0; i < n; ++i) workers_.emplace_back([self = shared_from_this()] { self->worker_main(); });
    running_ = true;
    try {
        start_discovery();
    } catch (...) {
        stop();
        throw;
    }
    std::string kvs;
    for (auto& e : rpc_endpoints) kvs += kv("rpc", e);
    for (auto& e : pub_endpoints_) kvs += kv("pub", e);
    log.write(log_level::info, "started", kvs + kv("workers", n));
}

void node_impl::stop() {
    std::call_once(stop_once_, [this] {
        const bool was_running = running_.exchange(false);
        stopping_ = true;
        if (!was_running && !io_.joinable()) return;
        const auto deadline = clock::now() + opts.shutdown_timeout;
        if (auto* a = agent()) a->stop(); // leave beacon: peers drop us at once
        {
            std::lock_guard lk(pub_mu_);
            pub_space_.notify_all();
        }
        {
            std::lock_guard lk(routes_mu_);
            routes_cv_.notify_all();
        }
        commands_.push(stop_cmd{});
        if (io_.joinable()) io_.join();
        io_exited_.store(true); // also when the I/O thread never ran
        cancel_queued_calls();  // queued after the I/O thread's last look

        {
            std::lock_guard lk(work_mu_);
            work_stop_ = true;
        }
        work_cv_.notify_all();
        // Unblocks synchronous calls in progress on any thread (they return cancelled).
        ctx_.shutdown();
        {
            std::lock_guard lk(channels_mu_);
            for (auto& ch : channels_) {
                std::lock_guard cl(ch->mu);
                ch->socks.clear();
                ch->closed = true;
            }
            channels_.clear();
        }
        {
            std::unique_lock lk(work_mu_);
            work_cv_.wait_until(lk, deadline, [&] { return workers_running_ == 0; });
        }
        const bool all_done = workers_running_ == 0;
        for (auto& t : workers_) {
            if (all_done)
                t.join();
            else
                t.detach(); // a handler outlived the bound; it finishes on its own and finds the node stopped
        }
        workers_.clear();
        if (!all_done) log.write(log_level::warn, "stop: handlers still running after the shutdown bound; left behind");
        ctx_.close();
        log.write(log_level::info, "stopped");
    });
}

// ---------------------------------------------------------------- workers

void node_impl::post_task(task t) {
    {
        std::lock_guard lk(work_mu_);
        work_.push_back(std::move(t));
    }
    work_cv_.notify_one();
}

void node_impl::post_ordered(const std::shared_ptr<strand>& s, task t) {
    {
        std::lock_guard lk(s->mu);
        s->q.push_back(std::move(t));
        if (s->scheduled) return;
        s->scheduled = true;
    }
    post_task([s] {
        for (;;) {
            task next;
            {
                std::lock_guard lk(s->mu);
                if (s->q.empty()) {
                    s->scheduled = false;
                    return;
                }
                next = std::move(s->q.front());
                s->q.pop_front();
            }
            next(); // delivery tasks catch their own exceptions
        }
    });
}

void node_impl::worker_main() {
    for (;;) {
        task t;
        {
            std::unique_lock lk(work_mu_);
            work_cv_.wait(lk, [&] { return work_stop_ || !work_.empty(); });
            if (work_.empty()) break; // stopping and nothing left
            t = std::move(work_.front());
            work_.pop_front();
        }
        try {
            t();
        } catch (const std::exception& e) {
            log.write(log_level::error, "worker task threw", kv("error", e.what()));
        } catch (...) {
            log.write(log_level::error, "worker task threw a non-standard exception");
        }
    }
    std::lock_guard lk(work_mu_);
    if (--workers_running_ == 0) work_cv_.notify_all();
}

// ---------------------------------------------------------------- I/O thread

void node_impl::io_bind() {
    auto set_common = [&](zmq::socket_t& s) {
        s.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(opts.max_message_size));
        s.set(zmq::sockopt::sndhwm, opts.send_hwm);
        s.set(zmq::sockopt::rcvhwm, opts.recv_hwm);
        s.set(zmq::sockopt::linger, 0);
    };
    auto bind_all = [&](zmq::socket_t& s, const std::vector<std::string>& eps, std::vector<std::string>& out) {
        for (auto& ep : eps) {
            try {
                s.bind(ep);
            } catch (const zmq::error_t& e) {
                throw error(code::unavailable, "cannot bind " + ep + ": " + e.what());
            }
            out.push_back(s.get(zmq::sockopt::last_endpoint));
        }
    };
    try {
        if (!opts.bind.empty()) {
            router_.emplace(ctx_, zmq::socket_type::router);
            set_common(*router_);
            bind_all(*router_, opts.bind, rpc_endpoints);
        }
        if (!opts.pub_bind.empty()) {
            pub_.emplace(ctx_, zmq::socket_type::pub);
            set_common(*pub_);
            pub_->set(zmq::sockopt::xpub_nodrop, 1);
            bind_all(*pub_, opts.pub_bind, pub_endpoints_);
        }
        sub_.emplace(ctx_, zmq::socket_type::sub);
        set_common(*sub_);
    } catch (const zmq::error_t& e) {
        router_.reset();
        pub_.reset();
        sub_.reset();
        throw error(code::internal, std::string("socket setup failed: ") + e.what());
    } catch (...) {
        router_.reset();
        pub_.reset();
        sub_.reset();
        throw;
    }
    // Own services resolve to this node.
    if (!rpc_endpoints.empty()) {
        std::lock_guard lk(routes_mu_);
        for (auto& s : services_)
            if (s->name != system_service) routes_[s->name].add(state_locked(rpc_endpoints.front()));
    }
    for (auto& ep : opts.subscribe_to) {
        if (event_endpoints_.insert(ep).second) sub_->connect(ep);
    }
    for (auto& ep : opts.connect) {
        peers_.push_back({ep, false, false, clock::now(), 0});
        std::lock_guard lk(routes_mu_);
        ++peers_pending_;
    }
}

void node_impl::io_main(std::promise<void> ready) {
    tl_io_owner = this;
    try {
        io_bind();
    } catch (...) {
        ready.set_exception(std::current_exception());
        return;
    }
    ready.set_value();

    std::vector<zmq::pollitem_t> items;
    std::vector<zmq::socket_t*> async_items;
    std::vector<const std::string*> async_names;
    std::vector<zmq::socket_t*> mon_items;
    std::vector<const std::string*> mon_names;
    clock::time_point stop_deadline{};
    // A turn that found work is followed by one that looks again without zmq_poll (the
    // handlers read with ZMQ_DONTWAIT, the queues have flags): under load the loop
    // drains its sockets back to back and sleeps in poll only once a turn finds nothing.
    bool hot = false;
    for (;;) {
        const auto now = clock::now();
        if (io_stopping_) {
            std::size_t queued;
            {
                std::lock_guard lk(pub_mu_);
                queued = pub_queued_;
            }
            if ((pool_jobs_in_flight_ == 0 && queued == 0) || now >= stop_deadline) break;
        }
        expire_calls(now);
        if (!parked_.empty() && (routes_changed_.get() || now >= parked_wake_)) retry_parked(now);
        if (!io_stopping_) tick_peers(now);

        items.clear();
        async_items.clear();
        async_names.clear();
        items.push_back({nullptr, wake_.fd(), ZMQ_POLLIN, 0});
        const std::size_t router_i = items.size();
        if (router_ && !io_stopping_) items.push_back({router_->handle(), 0, ZMQ_POLLIN, 0});
        const std::size_t sub_i = items.size();
        if (sub_ && !io_stopping_) items.push_back({sub_->handle(), 0, ZMQ_POLLIN, 0});
        const std::size_t async_i = items.size();
        for (auto& [ep, s] : async_socks_) {
            items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
            async_items.push_back(&s);
            async_names.push_back(&ep);
        }
        const std::size_t mon_i = items.size();
        mon_items.clear();
        mon_names.clear();
        for (auto& [ep, s] : monitors_) {
            items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
            mon_items.push_back(&s);
            mon_names.push_back(&ep);
        }

        if (hot) {
            // As if every socket were readable; the eventfd is left for the next poll.
            for (auto& it : items) it.revents = it.socket ? ZMQ_POLLIN : 0;
        } else {
            long timeout = -1;
            auto consider = [&](clock::time_point t) {
                auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
                if (ms < 0) ms = 0;
                if (timeout < 0 || ms < timeout) timeout = static_cast<long>(ms);
            };
            if (auto d = next_deadline()) consider(*d);
            for (auto& p : peers_)
                if (p.pending_id == 0) consider(p.next_describe);
            if (pub_head_ < pub_backlog_.size()) consider(now + std::chrono::milliseconds(1));
            if (io_stopping_) consider(std::min(stop_deadline, now + std::chrono::milliseconds(5)));
            // Parked calls: woken by routes_changed_ when an instance may have come,
            // else by the first deadline or the end of discovery's first interval.
            if (!parked_.empty()) consider(parked_wake_);
            wake_.arm(); // from here producers write the eventfd (see wakeup)
            if (commands_.has_work() || replies_.has_work() || pubq_work_.get() || (!parked_.empty() && routes_changed_.get()))
                timeout = 0;
            try {
                zmq::poll(items.data(), items.size(), std::chrono::milliseconds(timeout));
            } catch (const zmq::error_t& e) {
                wake_.disarm();
                if (e.num() == ETERM) break;
                if (e.num() != EINTR) log.write(log_level::error, "poll failed", kv("error", e.what()));
                continue;
            }
            wake_.disarm();
            if (items[0].revents & ZMQ_POLLIN) wake_.drain();
        }

        std::size_t work = 0;
        if (commands_.has_work()) {
            work += handle_commands();
            if (io_stopping_ && stop_deadline == clock::time_point{}) stop_deadline = clock::now() + opts.shutdown_timeout;
        }
        if (replies_.has_work()) {
            replies_.take(reply_batch_);
            for (auto& r : reply_batch_) send_reply({r.frames.data(), r.route_len}, std::move(r.envelope));
            work += reply_batch_.size();
            reply_batch_.clear();
        }
        if (router_i < items.size() && items[router_i].socket == (router_ ? router_->handle() : nullptr) &&
            (items[router_i].revents & ZMQ_POLLIN))
            work += handle_router();
        if (sub_i < items.size() && sub_ && items[sub_i].socket == sub_->handle() && (items[sub_i].revents & ZMQ_POLLIN))
            work += handle_sub();
        for (std::size_t i = 0; i < async_items.size(); ++i)
            if (items[async_i + i].revents & ZMQ_POLLIN) work += handle_async_sock(*async_names[i], *async_items[i]);
        for (std::size_t i = 0; i < mon_items.size(); ++i)
            if (items[mon_i + i].revents & ZMQ_POLLIN) work += handle_monitor(*mon_names[i], *mon_items[i]);
        flush_publications();
        hot = work > 0 && !io_stopping_;
        if (!dead_endpoints_.empty()) close_dead_endpoints();
    }
    drain_and_close();
    tl_io_owner = nullptr;
    io_exited_.store(true);
}

void node_impl::cancel_queued_calls() {
    std::vector<command> left;
    commands_.take(left);
    for (auto& c : left)
        if (auto* cmd = std::get_if<async_call_cmd>(&c)) // no worker may be left to run a callback
            complete(cmd->call, reply{{code::cancelled, "node stopped before the call was sent"}, {}}, false);
}

void node_impl::drain_and_close() {
    // Last replies handed back by workers, then the queued events.
    std::vector<outgoing_reply> outs;
    replies_.take(outs);
    for (auto& r : outs) send_reply({r.frames.data(), r.route_len}, std::move(r.envelope));
    flush_publications();
    for (auto& [id, call] : pending_)
        complete(call, reply{{code::cancelled, "node stopped before the reply came"}, {}});
    for (auto& call : parked_) complete(call, reply{{code::cancelled, "node stopped before an instance was known"}, {}});
    parked_.clear();
    pending_.clear();
    deadlines_.clear();
    {
        std::lock_guard lk(pub_mu_);
        for (std::size_t i = pub_head_; i < pub_backlog_.size(); ++i) counters_of(pub_backlog_[i].topic).dropped++;
        pub_head_ = 0;
        pub_queued_ = 0;
        pub_backlog_.clear();
        pubq_.clear();
        pub_space_.notify_all();
    }
    // A bounded linger flushes what is still queued in the sockets (a zero linger
    // would throw it away); ctx_.close() in stop() waits for it.
    const int linger = static_cast<int>(std::min<std::int64_t>(opts.shutdown_timeout.count(), 1000));
    for (auto* s : {&router_, &pub_}) {
        if (*s) {
            (*s)->set(zmq::sockopt::linger, linger);
            s->reset();
        }
    }
    sub_.reset();
    {
        std::lock_guard lk(routes_mu_);
        for (auto& [ep, st] : endpoint_states_) st->io_sock = nullptr;
    }
    while (!async_socks_.empty()) close_async_socket(async_socks_.begin());
    monitors_.clear();
    async_socks_count_ = 0;
}

std::size_t node_impl::handle_commands() {
    auto& cmds = command_batch_;
    commands_.take(cmds);
    struct clear_after {
        std::vector<command>& v;
        ~clear_after() { v.clear(); }
    } done{cmds};
    const std::size_t n = cmds.size();
    for (auto& c : cmds) {
        std::visit(
            [&](auto& cmd) {
                using T = std::decay_t<decltype(cmd)>;
                if constexpr (std::is_same_v<T, stop_cmd>) {
                    io_stopping_ = true;
                } else if constexpr (std::is_same_v<T, async_call_cmd>) {
                    if (io_stopping_) {
                        complete(cmd.call, reply{{code::cancelled, "node is stopping"}, {}});
                        return;
                    }
                    if (!cmd.call->target) { // parked: its service is not known yet
                        parked_.push_back(std::move(cmd.call));
                        parked_wake_ = clock::time_point{}; // look at once: routes may have changed since
                        return;
                    }
                    send_async(std::move(cmd.call), std::move(cmd.envelope));
                } else if constexpr (std::is_same_v<T, subscribe_cmd>) {
                    if (!sub_) return;
                    if (cmd.add)
                        sub_->set(zmq::sockopt::subscribe, cmd.prefix);
                    else
                        sub_->set(zmq::sockopt::unsubscribe, cmd.prefix);
                } else if constexpr (std::is_same_v<T, connect_peer_cmd>) {
                    for (auto& p : peers_)
                        if (p.endpoint == cmd.endpoint) {
                            std::lock_guard lk(routes_mu_);
                            --peers_pending_; // counted by connect_peer(); this peer is known already
                            routes_cv_.notify_all();
                            return;
                        }
                    peers_.push_back({cmd.endpoint, false, false, clock::now(), 0});
                } else if constexpr (std::is_same_v<T, disconnect_events_cmd>) {
                    if (sub_ && event_endpoints_.erase(cmd.endpoint)) {
                        try {
                            sub_->disconnect(cmd.endpoint);
                        } catch (const zmq::error_t&) {
                        }
                    }
                } else if constexpr (std::is_same_v<T, watch_cmd>) {
                    if (!io_stopping_) watch(cmd.endpoint);
                } else if constexpr (std::is_same_v<T, endpoint_down_cmd>) {
                    endpoint_down(cmd.endpoint, cmd.why);
                } else if constexpr (std::is_same_v<T, connect_events_cmd>) {
                    if (sub_ && event_endpoints_.insert(cmd.endpoint).second) {
                        try {
                            sub_->connect(cmd.endpoint);
                        } catch (const zmq::error_t& e) {
                            event_endpoints_.erase(cmd.endpoint);
                            log.write(log_level::warn, "cannot connect events", kv("endpoint", cmd.endpoint) + kv("error", e.what()));
                        }
                    }
                }
            },
            c);
    }
    return n;
}

void node_impl::send_async(std::shared_ptr<pending_call> call, zmq::message_t env) {
    if (call->target->is_down) { // went down since the call chose it
        complete(call, reply{{code::unavailable, "the instance chosen went away before the call was sent"}, {}});
        return;
    }
    try {
        auto& s = async_socket(*call->target);
        add_pending(call);
        zmq::message_t delim;
        if (!s.send(delim, zmq::send_flags::sndmore | zmq::send_flags::dontwait) ||
            !s.send(env, zmq::send_flags::dontwait)) {
            if (auto it = pending_.find(call->id); it != pending_.end()) take_pending(it);
            complete(call, reply{{code::unavailable, "send queue to " + call->target->endpoint + " is full"}, {}});
        }
    } catch (const zmq::error_t& e) {
        if (auto it = pending_.find(call->id); it != pending_.end()) take_pending(it);
        complete(call, reply{{code::unavailable, "cannot reach " + call->target->endpoint + ": " + e.what()}, {}});
    }
}

void node_impl::retry_parked(clock::time_point now) {
    routes_changed_.clear();
    std::vector<std::shared_ptr<pending_call>> still;
    parked_wake_ = clock::time_point::max();
    for (auto& call : parked_) {
        bool learning = false;
        call->target = resolve_now(call->service, call->policy, learning);
        if (call->target) {
            call->target->in_flight.fetch_add(1, std::memory_order_relaxed);
            auto env = encode_request(call->id, call->service, call->method, call->parked_body, call->sent, call->deadline);
            call->parked_body = std::string();
            if (auto st = request_size_ok(env.size()); !st.ok())
                complete(call, reply{st, {}});
            else
                send_async(std::move(call), std::move(env));
        } else if (!learning || now >= call->deadline) {
            complete(call, reply{{code::unavailable, learning ? "no instance of service '" + call->service +
                                                                    "' found before the deadline"
                                                              : "no live instance of service '" + call->service + "'"},
                                 {}});
        } else {
            parked_wake_ = std::min(parked_wake_, call->deadline);
            still.push_back(std::move(call));
        }
    }
    parked_.swap(still);
    if (!parked_.empty()) {
        std::lock_guard lk(routes_mu_);
        if (discovery_warm_until_ > now) parked_wake_ = std::min(parked_wake_, discovery_warm_until_);
    }
}

zmq::socket_t& node_impl::async_socket(endpoint_state& ep) {
    if (!ep.io_sock) ep.io_sock = &async_socket(ep.endpoint); // async_socks_ keeps its sockets until the end
    return *ep.io_sock;
}

zmq::socket_t& node_impl::async_socket(const std::string& endpoint) {
    auto it = async_socks_.find(endpoint);
    if (it != async_socks_.end()) return it->second;
    zmq::socket_t s(ctx_, zmq::socket_type::dealer);
    s.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(opts.max_message_size));
    s.set(zmq::sockopt::sndhwm, opts.send_hwm);
    s.set(zmq::sockopt::rcvhwm, opts.recv_hwm);
    s.set(zmq::sockopt::linger, 0);
    // Watch the connection: a peer that dies (its TCP connection breaks) is seen within
    // milliseconds, and the calls in flight to it fail fast (endpoint_down).
    const std::string mon_addr = "inproc://plexus-mon-" + std::to_string(uid) + "-" + std::to_string(next_monitor_++);
    if (zmq_socket_monitor(s.handle(), mon_addr.c_str(), ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECTED) == 0) {
        zmq::socket_t pair(ctx_, zmq::socket_type::pair);
        pair.set(zmq::sockopt::linger, 0);
        pair.connect(mon_addr);
        monitors_.emplace(endpoint, std::move(pair));
    }
    s.connect(endpoint);
    auto& placed = async_socks_.emplace(endpoint, std::move(s)).first->second;
    async_socks_count_ = async_socks_.size();
    return placed;
}

void node_impl::watch(const std::string& endpoint) {
    try {
        (void)async_socket(endpoint);
    } catch (const zmq::error_t& e) {
        log.write(log_level::warn, "cannot watch endpoint", kv("endpoint", endpoint) + kv("error", e.what()));
    }
}

std::size_t node_impl::handle_monitor(const std::string& endpoint, zmq::socket_t& pair) {
    std::size_t n = 0;
    for (; n < 64; ++n) {
        zmq::message_t ev, addr;
        if (!pair.recv(ev, zmq::recv_flags::dontwait)) return n;
        if (ev.more()) (void)pair.recv(addr);
        if (ev.size() < 6) continue;
        std::uint16_t id;
        std::memcpy(&id, ev.data(), sizeof id);
        if (id == ZMQ_EVENT_DISCONNECTED) endpoint_down(endpoint, "connection to " + endpoint + " lost");
    }
    return n;
}

void node_impl::endpoint_down(const std::string& endpoint, const std::string& why) {
    std::optional<discovery::node_id> peer;
    std::shared_ptr<endpoint_state> gone;
    {
        std::lock_guard lk(routes_mu_);
        if (auto it = endpoint_states_.find(endpoint); it != endpoint_states_.end()) {
            gone = std::move(it->second);
            endpoint_states_.erase(it);
            peer = gone->peer;
        }
        // A peer known through discovery comes back through discovery (a new
        // incarnation); one given by `connect` through its next describe.
        for (auto& [name, r] : routes_) r.remove(endpoint);
        routes_cv_.notify_all();
    }
    if (gone) {
        gone->io_sock = nullptr; // its socket closes at the end of this turn
        gone->mark_down();       // sync calls to it wake and fail now
    }
    for (auto& p : peers_)
        if (p.endpoint == endpoint) {
            p.described = false;
            if (p.pending_id == 0) p.next_describe = clock::now() + std::chrono::milliseconds(100);
        }
    std::vector<std::shared_ptr<pending_call>> failed;
    for (auto it = pending_.begin(); it != pending_.end();) {
        auto next = std::next(it);
        if (it->second->endpoint() == endpoint && !it->second->on_io) failed.push_back(take_pending(it));
        it = next;
    }
    for (auto& c : failed) complete(c, reply{{code::unavailable, why + " while the call was in flight"}, {}});
    if (auto* a = agent(); peer && a) a->mark_dead(*peer);
    // Its DEALER and monitor go (a peer that comes back gets new ones): an instance that
    // dies leaves no socket behind. Not now: the loop may still hold them this turn.
    if (async_socks_.contains(endpoint)) dead_endpoints_.push_back(endpoint);
    if (gone || !failed.empty())
        log.write(log_level::info, "endpoint down", kv("endpoint", endpoint) + kv("why", why) + kv("failed_calls", failed.size()));
}

void node_impl::close_async_socket(std::map<std::string, zmq::socket_t>::iterator it) {
    // The monitor first: libzmq sends monitor events from its I/O thread with a blocking
    // send, so an event for a reader already closed would stall that thread - and with
    // it every socket of the context - for good.
    (void)zmq_socket_monitor(it->second.handle(), nullptr, 0);
    monitors_.erase(it->first);
    async_socks_.erase(it);
}

void node_impl::close_dead_endpoints() {
    for (auto& ep : dead_endpoints_) {
        auto it = async_socks_.find(ep);
        if (it == async_socks_.end()) continue;
        {
            // A state made for the endpoint since it went down may point at this socket.
            std::lock_guard lk(routes_mu_);
            if (auto st = endpoint_states_.find(ep); st != endpoint_states_.end() && st->second->io_sock == &it->second)
                st->second->io_sock = nullptr;
        }
        close_async_socket(it);
    }
    dead_endpoints_.clear();
    async_socks_count_ = async_socks_.size();
}

// ---------------------------------------------------------------- server side

zmq::message_t node_impl::encode_reply(std::uint64_t id, code c, std::string_view err, std::string_view body) {
    envelope_view e;
    e.kind = kind::reply;
    e.id = id;
    e.status = c;
    e.error = err;
    e.body = body;
    return encode_message(e);
}

void node_impl::send_reply(std::span<zmq::message_t> route, zmq::message_t env) {
    if (!router_) return;
    try {
        for (auto& f : route)
            if (!router_->send(f, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return;
        (void)router_->send(env, zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
        log.write(log_level::warn, "reply not sent", kv("error", e.what()));
    }
}

void node_impl::reply_error(std::span<zmq::message_t> route, std::uint64_t id, code c, std::string_view msg) {
    send_reply(route, encode_reply(id, c, msg, {}));
}

namespace {
// Logs the first occurrence and then every 1000th, so a flood cannot fill the log.
bool log_this(std::uint64_t count) { return count == 1 || count % 1000 == 0; }
} // namespace

std::size_t node_impl::handle_router() {
    std::size_t n = 0;
    for (; n < 256; ++n) {
        frames_.clear();
        bool more = true;
        try {
            while (more) {
                zmq::message_t m;
                if (!router_->recv(m, zmq::recv_flags::dontwait)) {
                    if (frames_.empty()) return n;
                    break;
                }
                more = m.more();
                frames_.push_back(std::move(m));
            }
        } catch (const zmq::error_t& e) {
            if (e.num() == ETERM) return n;
            throw;
        }
        dispatch_request(frames_);
    }
    return n;
}

void node_impl::dispatch_request(std::vector<zmq::message_t>& frames) {
    // [routing frames..., "", envelope]: echo every frame up to the delimiter.
    std::size_t d = 1;
    while (d < frames.size() && frames[d].size() != 0) ++d;
    if (d >= frames.size() || d + 2 != frames.size()) {
        const auto n = ++malformed_;
        if (log_this(n))
            log.write(log_level::warn, "dropped a request without the envelope framing [routing..., \"\", envelope]",
                      kv("frames", frames.size()) + kv("count", n));
        return;
    }
    const std::span<zmq::message_t> route(frames.data(), d + 1);
    const zmq::message_t& body_frame = frames.back();
    const std::string_view bytes(static_cast<const char*>(body_frame.data()), body_frame.size());
    const auto received = clock::now();
    view_.clear();
    status st = decode(bytes, view_);
    if (!st.ok()) {
        if (st.code == code::unsupported_version) {
            const auto n = ++unsupported_version_;
            if (log_this(n)) log.write(log_level::warn, "request of another protocol version", kv("error", st.message) + kv("count", n));
            reply_error(route, view_.id, code::unsupported_version, st.message);
        } else {
            const auto n = ++malformed_;
            if (log_this(n)) log.write(log_level::warn, "malformed request", kv("error", st.message) + kv("count", n));
            reply_error(route, view_.id, code::invalid_argument, "malformed envelope: " + st.message);
        }
        return;
    }
    if (view_.kind != kind::request) {
        ++malformed_;
        reply_error(route, view_.id, code::invalid_argument,
                    "expected a request (kind 0) on the RPC socket, got " + std::string(to_string(view_.kind)));
        return;
    }
    method_entry* m = find_method(view_.service, view_.method);
    if (!m) {
        const bool known_service = std::any_of(services_.begin(), services_.end(), [&](auto& s) { return s->name == view_.service; });
        reply_error(route, view_.id, code::not_found,
                    known_service ? "no method '" + std::string(view_.method) + "' on service '" + std::string(view_.service) + "'"
                                  : "no service '" + std::string(view_.service) + "' on node '" + opts.name + "'");
        return;
    }
    if (view_.deadline_us && *view_.deadline_us == 0) {
        metrics_->record_early(m->service, m->name, code::deadline_exceeded);
        reply_error(route, view_.id, code::deadline_exceeded, "request arrived with no time left before its deadline");
        return;
    }
    if (m->opts.exec == execution::inline_loop) {
        code c = code::ok;
        std::string err;
        std::string body = run_handler(*m, view_, received, c, err);
        send_reply(route, encode_reply(view_.id, c, err, body));
        return;
    }
    auto job = std::make_unique<request_job>();
    job->frames = std::move(frames);
    frames = std::vector<zmq::message_t>();
    job->route_len = d + 1;
    job->view = std::move(view_);
    view_ = envelope_view{};
    job->received = received;
    job->method = m;
    ++pool_jobs_in_flight_;
    post_task([this, job = std::move(job)] {
        code c = code::ok;
        std::string err;
        std::string body;
        const auto& v = job->view;
        if (v.deadline_us && clock::now() >= job->received + std::chrono::microseconds(*v.deadline_us)) {
            c = code::deadline_exceeded;
            err = "deadline passed while the request waited for a worker";
            metrics_->record_early(job->method->service, job->method->name, c);
        } else {
            body = run_handler(*job->method, v, job->received, c, err);
        }
        replies_.push(outgoing_reply{std::move(job->frames), job->route_len, encode_reply(v.id, c, err, body)});
        --pool_jobs_in_flight_;
    });
}

std::string node_impl::run_handler(method_entry& m, const envelope_view& env, clock::time_point received, code& status,
                                   std::string& err) {
    per_thread<context, struct handler_context> scratch;
    context& ctx = scratch.get();
    ctx.headers.assign(env.headers);
    ctx.deadline.reset();
    ctx.set_parent_span_id({});
    if (env.deadline_us) ctx.deadline = received + std::chrono::microseconds(*env.deadline_us);
    request rq{env.service, env.method, env.body, env.id, ctx};
    context_scope scope(ctx);
    call_info info{m.service, m.name, ctx.headers, ctx.deadline, {}, &ctx};
    std::size_t ran = 0;
    const auto t0 = received; // the latency measured is the server's: from receipt to reply
    std::string body;
    try {
        plexus::status pre = run_before(chain_, ran, [&](interceptor& i) { return i.before_handle(info); });
        if (!pre.ok()) throw error(pre);
        body = m.fn(rq);
        status = code::ok;
    } catch (const error& e) {
        status = e.code();
        err = e.message();
    } catch (const std::exception& e) {
        status = code::internal;
        err = std::string("handler ") + m.service + "." + m.name + " threw: " + e.what();
        log.write(log_level::warn, "handler threw", kv("method", m.service + "." + m.name) + kv("error", e.what()));
    } catch (...) {
        status = code::internal;
        err = "handler " + m.service + "." + m.name + " threw a non-standard exception";
        log.write(log_level::warn, "handler threw", kv("method", m.service + "." + m.name));
    }
    if (status == code::ok && static_cast<std::int64_t>(body.size()) + 64 > opts.max_message_size) {
        status = code::resource_exhausted;
        err = "reply of " + std::to_string(body.size()) + " bytes exceeds the maximum message size of " +
              std::to_string(opts.max_message_size);
        body.clear();
    }
    if (status != code::ok) body.clear();
    const plexus::status final_status{status, err};
    const auto elapsed = clock::now() - t0;
    run_after(chain_, ran, [&](interceptor& i) {
        try {
            i.after_handle(info, final_status, elapsed);
        } catch (...) {
        }
    });
    return body;
}

node_stats node_impl::stats() const {
    node_stats s;
    for (auto* m : metrics_->server_methods()) {
        method_stats ms{m->service, m->method, m->calls.load(), m->errors(), m->in_flight.load()};
        for (std::size_t c = 1; c < m->by_code.size(); ++c)
            if (auto n = m->by_code[c].load()) ms.errors_by_code.emplace_back(static_cast<code>(c), n);
        ms.p50_us = m->latency.quantile_us(0.50);
        ms.p90_us = m->latency.quantile_us(0.90);
        ms.p99_us = m->latency.quantile_us(0.99);
        s.methods.push_back(std::move(ms));
    }
    {
        std::lock_guard lk(pub_mu_);
        for (auto& [name, t] : topics_) s.topics.push_back({name, t.published, t.dropped, 0, 0});
    }
    {
        std::lock_guard lk(received_mu_);
        for (auto& [name, r] : received_) {
            auto it = std::find_if(s.topics.begin(), s.topics.end(), [&](const topic_stats& t) { return t.topic == name; });
            if (it == s.topics.end()) it = s.topics.insert(s.topics.end(), topic_stats{name, 0, 0, 0, 0});
            it->received = r->received.load(std::memory_order_relaxed);
            it->gaps = r->gaps.load(std::memory_order_relaxed);
        }
    }
    std::sort(s.topics.begin(), s.topics.end(), [](auto& a, auto& b) { return a.topic < b.topic; });
    s.malformed = malformed_;
    s.unsupported_version = unsupported_version_;
    s.calls_sent = calls_sent_;
    s.call_errors = call_errors_;
    s.peer_connections = async_socks_count_;
    return s;
}

} // namespace detail

// ---------------------------------------------------------------- public facade

service_builder& service_builder::doc(std::string text) {
    impl_->set_service_doc(service_, std::move(text));
    return *this;
}

service_builder& service_builder::raw_method(std::string name, raw_handler fn, method_options opts,
                                             std::string request_shape, std::string reply_shape) {
    impl_->add_method(service_, std::move(name), std::move(fn), std::move(opts), std::move(request_shape),
                      std::move(reply_shape));
    return *this;
}

subscription::subscription(subscription&& o) noexcept : impl_(std::move(o.impl_)), id_(std::exchange(o.id_, 0)) {}
subscription& subscription::operator=(subscription&& o) noexcept {
    if (this != &o) {
        cancel();
        impl_ = std::move(o.impl_);
        id_ = std::exchange(o.id_, 0);
    }
    return *this;
}
subscription::~subscription() { cancel(); }
void subscription::cancel() noexcept {
    if (id_ == 0) return;
    if (auto p = impl_.lock()) {
        try {
            p->unsubscribe(id_);
        } catch (...) {
        }
    }
    id_ = 0;
}

reply call_future::get() {
    if (!slot_) throw std::future_error(std::future_errc::no_state);
    slot_->wait_until(std::nullopt);
    reply r = std::move(slot_->value);
    slot_.reset();
    return r;
}
void call_future::wait() const {
    if (!slot_) throw std::future_error(std::future_errc::no_state);
    slot_->wait_until(std::nullopt);
}
std::future_status call_future::wait_until(clock::time_point t) const {
    if (!slot_) throw std::future_error(std::future_errc::no_state);
    return slot_->wait_until(t) ? std::future_status::ready : std::future_status::timeout;
}
bool call_future::ready() const noexcept { return slot_ && slot_->state.load(std::memory_order_acquire) == 2; }

node::node(node_options opts) : impl_(std::make_shared<detail::node_impl>(std::move(opts))) {}
node::~node() {
    if (impl_) impl_->stop();
}

service_builder node::serve(std::string service) {
    if (service.empty()) throw error(code::invalid_argument, "service name must not be empty");
    if (service == system_service) throw error(code::invalid_argument, "service name 'plexus' is reserved");
    return impl_->builder(std::move(service));
}
void node::declare_topic(std::string topic, std::string doc, std::string shape) {
    impl_->declare_topic(std::move(topic), std::move(doc), std::move(shape));
}
void node::start() { impl_->start(); }
void node::stop() { impl_->stop(); }
const std::string& node::name() const noexcept { return impl_->opts.name; }
std::string node::id_hex() const { return detail::hex(impl_->node_id); }
std::vector<std::string> node::endpoints() const { return impl_->rpc_endpoints; }
std::vector<std::string> node::pub_endpoints() const { return impl_->pub_endpoints_; }
void node::connect(std::string endpoint) { impl_->connect_peer(std::move(endpoint)); }
void node::connect_events(std::string endpoint) { impl_->connect_events(std::move(endpoint)); }

reply node::call_raw(std::string_view service, std::string_view method, std::string_view body, const call_options& opts) {
    return impl_->call_sync(service, method, body, opts);
}
call_future node::call_async(std::string_view service, std::string_view method, std::string_view body,
                             const call_options& opts) {
    return call_future(impl_->call_async(service, method, body, opts, {}));
}
void node::call_async(std::string_view service, std::string_view method, std::string_view body, const call_options& opts,
                      std::function<void(reply)> on_done) {
    if (!on_done) on_done = [](reply) {}; // fire and forget
    (void)impl_->call_async(service, method, body, opts, std::move(on_done));
}
bool node::publish_raw(std::string_view topic, std::string_view body, const headers& extra) {
    return impl_->publish(topic, body, extra);
}
subscription node::subscribe(std::string prefix, event_handler fn, execution exec) {
    auto id = impl_->subscribe(std::move(prefix), std::move(fn), exec);
    return subscription(impl_, id);
}
node_stats node::stats() const { return impl_->stats(); }

} // namespace plexus
