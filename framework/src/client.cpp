// The client side of request-response: synchronous calls over the calling thread's
// own DEALER, asynchronous calls through the I/O thread, and name resolution from
// what peers' `describe` says.
#include <algorithm>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <limits>

#include "detail/node_impl.hpp"

namespace plexus::detail {

namespace {

struct tl_channel_ref {
    std::uint64_t uid;
    std::weak_ptr<channel> ch;
};
// Marks this thread's channels abandoned when the thread exits, so their node can
// close the sockets (the owner can no longer use them).
struct tl_channels {
    std::vector<tl_channel_ref> refs;
    ~tl_channels() {
        for (auto& r : refs)
            if (auto c = r.ch.lock()) c->abandoned = true;
    }
};
thread_local tl_channels tl_chans;

long ms_until(clock::time_point t) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - clock::now()).count();
    return ms < 0 ? 0 : static_cast<long>(ms);
}

std::string describe_target(std::string_view service, std::string_view method, const std::string& ep) {
    std::string s(service);
    s += '.';
    s += method;
    s += " at ";
    s += ep;
    return s;
}

} // namespace

clock::time_point node_impl::deadline_for(const call_options& o, clock::time_point now) const {
    const auto timeout = o.timeout.count() > 0 ? o.timeout : opts.default_timeout;
    auto d = now + timeout;
    if (auto* c = context::current(); c && c->deadline && *c->deadline < d) d = *c->deadline;
    return d;
}

void node_impl::outgoing_headers(const headers& extra, headers& out) const {
    thread_local std::vector<std::pair<std::string_view, std::string_view>> picked;
    picked.clear();
    if (auto* c = context::current())
        for (auto& [k, v] : c->headers)
            if (!policy_->hop_by_hop(k) && !extra.contains(k)) picked.emplace_back(k, v);
    for (auto& [k, v] : extra) picked.emplace_back(k, v);
    out.assign(picked);
}

zmq::message_t node_impl::encode_request(std::uint64_t id, std::string_view service, std::string_view method,
                                         std::string_view body, const headers& h, clock::time_point deadline) {
    thread_local envelope_view e;
    e.clear();
    e.kind = kind::request;
    e.id = id;
    e.service = service;
    e.method = method;
    e.body = body;
    for (auto& [k, v] : h) e.headers.emplace_back(k, v);
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - clock::now()).count();
    e.deadline_us = static_cast<std::uint64_t>(std::max<std::int64_t>(left, 0));
    return encode_message(e);
}

std::shared_ptr<endpoint_state>& node_impl::state_locked(const std::string& endpoint) {
    auto& st = endpoint_states_[endpoint];
    if (!st) st = std::make_shared<endpoint_state>(endpoint);
    return st;
}

std::shared_ptr<endpoint_state> node_impl::state_of(const std::string& endpoint) {
    std::lock_guard lk(routes_mu_);
    return state_locked(endpoint);
}

std::shared_ptr<endpoint_state> node_impl::pick_locked(service_route& r, balance_policy policy) {
    auto& eps = r.instances;
    if (policy == balance_policy::least_in_flight && eps.size() > 1) {
        // Power of two choices: two distinct random instances, the less busy wins.
        thread_local std::minstd_rand rng{std::random_device{}()};
        const auto a = rng() % eps.size();
        auto b = rng() % (eps.size() - 1);
        if (b >= a) ++b;
        return eps[a]->in_flight.load(std::memory_order_relaxed) <= eps[b]->in_flight.load(std::memory_order_relaxed) ? eps[a]
                                                                                                                    : eps[b];
    }
    return eps[r.next++ % eps.size()];
}

bool node_impl::learning_locked() const {
    return peers_pending_ > 0 || (agent() && clock::now() < discovery_warm_until_);
}

std::shared_ptr<endpoint_state> node_impl::resolve_now(std::string_view service, balance_policy policy, bool& learning) {
    std::lock_guard lk(routes_mu_);
    if (auto it = routes_.find(service); it != routes_.end() && !it->second.instances.empty())
        return pick_locked(it->second, policy);
    learning = learning_locked(); // stopping is the callers' to decide (parked calls are cancelled at stop)
    return nullptr;
}

std::shared_ptr<endpoint_state> node_impl::resolve(std::string_view service, clock::time_point deadline, status& why,
                                                   balance_policy policy) {
    std::unique_lock lk(routes_mu_);
    for (;;) {
        auto it = routes_.find(service);
        if (it != routes_.end() && !it->second.instances.empty()) return pick_locked(it->second, policy);
        if (stopping_) {
            why = {code::cancelled, "node is stopping"};
            return nullptr;
        }
        // Wait while an answer may still come: peers given by `connect` that have not
        // described themselves yet, or discovery's first interval.
        auto wait_until = deadline;
        if (peers_pending_ == 0) {
            if (!agent() || clock::now() >= discovery_warm_until_) {
                why = {code::unavailable, "no live instance of service '" + std::string(service) + "'"};
                return nullptr;
            }
            wait_until = std::min(deadline, discovery_warm_until_);
        }
        if (routes_cv_.wait_until(lk, wait_until) == std::cv_status::timeout) {
            auto again = routes_.find(service);
            if (again != routes_.end() && !again->second.instances.empty()) continue;
            if (wait_until < deadline) continue; // discovery's first interval is over: decide above
            why = {code::unavailable, "no instance of service '" + std::string(service) + "' found before the deadline" +
                                          (peers_pending_ ? " (" + std::to_string(peers_pending_) + " peer(s) not reachable yet)"
                                                          : std::string())};
            return nullptr;
        }
    }
}

std::shared_ptr<channel> node_impl::my_channel() {
    for (auto& r : tl_chans.refs)
        if (r.uid == uid)
            if (auto c = r.ch.lock()) return c;
    std::lock_guard lk(channels_mu_);
    if (stopping_) return nullptr;
    // Reap channels whose threads are gone.
    std::erase_if(channels_, [](const std::shared_ptr<channel>& c) {
        if (!c->abandoned) return false;
        std::lock_guard cl(c->mu);
        c->socks.clear();
        c->closed = true;
        return true;
    });
    std::erase_if(tl_chans.refs, [](const tl_channel_ref& r) { return r.ch.expired(); });
    auto c = std::make_shared<channel>();
    channels_.push_back(c);
    tl_chans.refs.push_back({uid, c});
    return c;
}

reply node_impl::call_sync(std::string_view service, std::string_view method, std::string_view body, const call_options& o) {
    per_thread<headers, struct sync_call_headers> scratch;
    headers& sent = scratch.get();
    outgoing_headers(o.headers, sent);
    call_info info{service, method, sent, std::nullopt, {}, nullptr};
    std::size_t ran = 0;
    const auto started = clock::now();
    auto fail = [&](code c, std::string msg) {
        ++call_errors_;
        reply r{{c, std::move(msg)}, {}};
        run_after(chain_, ran, [&](interceptor& i) { i.after_call(info, r.status, clock::now() - started); });
        return r;
    };
    if (tl_io_owner == this)
        return fail(code::failed_precondition,
                    "synchronous call from the node's I/O thread (an inline handler): declare the handler "
                    "execution::pool or use call_async");
    if (!running_) return fail(stopping_ ? code::cancelled : code::failed_precondition,
                               stopping_ ? "node is stopping" : "node is not started");
    const auto deadline = deadline_for(o, started);
    if (started >= deadline) return fail(code::deadline_exceeded, "deadline expired before the call was made");
    std::shared_ptr<endpoint_state> target;
    if (o.endpoint.empty()) {
        status why;
        target = resolve(service, deadline, why, o.balance.value_or(opts.balance));
        if (!target) return fail(why.code, why.message);
    } else {
        target = state_of(o.endpoint);
    }
    const std::string& endpoint = target->endpoint;
    info.deadline = deadline;
    info.endpoint = endpoint;
    if (auto pre = run_before(chain_, ran, [&](interceptor& i) { return i.before_call(info); }); !pre.ok())
        return fail(pre.code, pre.message);
    const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    zmq::message_t env = encode_request(id, service, method, body, sent, deadline);
    if (auto st = request_size_ok(env.size()); !st.ok()) return fail(st.code, st.message);
    auto ch = my_channel();
    if (!ch) return fail(code::cancelled, "node is stopping");
    std::unique_lock lk(ch->mu);
    if (ch->closed) return fail(code::cancelled, "node is stopping");
    ++calls_sent_;
    target->in_flight.fetch_add(1, std::memory_order_relaxed);
    struct in_flight_guard {
        endpoint_state& s;
        ~in_flight_guard() { s.in_flight.fetch_sub(1, std::memory_order_relaxed); }
    } guard{*target};
    try {
        // The I/O thread watches the connection, so that its loss wakes us (down_fd).
        if (!target->watched.exchange(true)) commands_.push(watch_cmd{endpoint});
        auto it = ch->socks.find(endpoint);
        if (it == ch->socks.end()) {
            zmq::socket_t s(ctx_, zmq::socket_type::dealer);
            s.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(opts.max_message_size));
            s.set(zmq::sockopt::sndhwm, opts.send_hwm);
            s.set(zmq::sockopt::rcvhwm, opts.recv_hwm);
            s.set(zmq::sockopt::linger, 0);
            // Not ZMQ_IMMEDIATE: with it, a reply that has arrived is thrown away when the
            // peer disconnects before we read it (e.g. a reply flushed at the peer's stop).
            s.connect(endpoint);
            it = ch->socks.emplace(endpoint, std::move(s)).first;
        }
        zmq::socket_t& s = it->second;
        // Send [ "", envelope ]; wait for a connected pipe up to the deadline.
        for (;;) {
            zmq::message_t delim;
            if (s.send(delim, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) break;
            zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLOUT, 0};
            if (clock::now() >= deadline || zmq::poll(&item, 1, std::chrono::milliseconds(ms_until(deadline))) == 0)
                return fail(code::unavailable, "send queue to " + endpoint + " stayed full until the deadline");
        }
        (void)s.send(env, zmq::send_flags::none);
        for (;;) {
            zmq::pollitem_t items[2] = {{s.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, target->down_fd, ZMQ_POLLIN, 0}};
            // Without an eventfd, wake up every slice to see whether the peer went away.
            const long wait = target->down_fd >= 0 ? ms_until(deadline) : std::min(ms_until(deadline), 20L);
            const int n = zmq::poll(items, target->down_fd >= 0 ? 2 : 1, std::chrono::milliseconds(wait));
            auto& item = items[0];
            if (!(item.revents & ZMQ_POLLIN) && target->is_down.load()) {
                ch->socks.erase(it);
                return fail(code::unavailable, "the instance at " + endpoint + " went away while " +
                                                   std::string(service) + "." + std::string(method) + " was in flight");
            }
            if (n == 0 && clock::now() >= deadline) {
                // Close the socket (linger 0): a request still queued for a peer that never
                // connected must not reach it later, and a late reply is not wanted either.
                ch->socks.erase(it);
                const auto total = o.timeout.count() > 0 ? o.timeout : opts.default_timeout;
                return fail(code::deadline_exceeded, "no reply for " + describe_target(service, method, endpoint) +
                                                         " within " + std::to_string(total.count()) +
                                                         " ms (is the peer up?)");
            }
            if (!(item.revents & ZMQ_POLLIN)) continue;
            zmq::message_t first, second;
            const auto got = recv_two(s, first, second);
            if (got == two_frames::none) continue;
            if (got != two_frames::ok || first.size() != 0) {
                ++malformed_;
                continue;
            }
            thread_local envelope_view rep; // decoded in place; only body and error are copied
            rep.clear();
            status st = decode(std::string_view(static_cast<const char*>(second.data()), second.size()), rep);
            if (!st.ok()) {
                ++malformed_;
                if (rep.id == id) return fail(st.code, "undecodable reply: " + st.message);
                continue;
            }
            if (rep.kind != kind::reply || rep.id != id) continue; // a late reply to an earlier call
            if (rep.status != code::ok) return fail(rep.status, std::string(rep.error));
            reply r{{rep.status, std::string(rep.error)}, std::string(rep.body)};
            run_after(chain_, ran, [&](interceptor& i) { i.after_call(info, r.status, clock::now() - started); });
            return r;
        }
    } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) {
            ch->socks.clear();
            ch->closed = true;
            return fail(code::cancelled, "node stopped while the call was in flight");
        }
        return fail(code::unavailable, "call to " + endpoint + " failed: " + e.what());
    }
}

std::shared_ptr<reply_slot> node_impl::call_async(std::string_view service, std::string_view method, std::string_view body,
                                                  const call_options& o, std::function<void(reply)> cb) {
    auto call = std::make_shared<pending_call>();
    call->has_future = !cb;
    call->callback = std::move(cb);
    std::shared_ptr<reply_slot> slot;
    if (call->has_future) slot = call; // the caller's handle; freed on its thread when it lets go
    call->callback_inline = o.callback_exec == execution::inline_loop;
    call->service = service;
    call->method = method;
    call->started = clock::now();
    if (auto* c = context::current()) call->ctx = std::make_shared<context>(*c);
    // A call that ends before it is sent; without workers (not started, stopping) its
    // callback runs here.
    auto finish_now = [&](code c, std::string msg) {
        complete(call, reply{{c, std::move(msg)}, {}}, running_);
        return slot;
    };
    if (!running_) return finish_now(stopping_ ? code::cancelled : code::failed_precondition,
                                     stopping_ ? "node is stopping" : "node is not started");
    call->deadline = deadline_for(o, call->started);
    if (call->started >= call->deadline) return finish_now(code::deadline_exceeded, "deadline expired before the call was made");
    bool park = false; // no instance known yet, but one may come: the I/O thread waits for it
    if (o.endpoint.empty()) {
        call->policy = o.balance.value_or(opts.balance);
        call->target = resolve_now(service, call->policy, park);
        if (!call->target && !park)
            return finish_now(stopping_ ? code::cancelled : code::unavailable,
                              stopping_ ? "node is stopping" : "no live instance of service '" + std::string(service) + "'");
    } else {
        call->target = state_of(o.endpoint);
    }
    // A call counts in its instance's in_flight from the moment it has one (complete()
    // takes it off).
    if (call->target) call->target->in_flight.fetch_add(1, std::memory_order_relaxed);
    // The headers sent are kept with the call for the after_call hooks of the
    // application's interceptors and for a parked call; the built-in interceptors need
    // them only until the request is encoded.
    per_thread<headers, struct async_call_headers> scratch;
    headers& sent = app_interceptors_ || park ? call->sent : scratch.get();
    outgoing_headers(o.headers, sent);
    {
        call_info info{call->service, call->method, sent, call->deadline, call->endpoint(), nullptr};
        if (auto pre = run_before(chain_, call->ran, [&](interceptor& i) { return i.before_call(info); }); !pre.ok())
            return finish_now(pre.code, pre.message);
    }
    call->id = next_id_.fetch_add(1, std::memory_order_relaxed);
    // A parked call is encoded when it is sent (its remaining budget is smaller then):
    // it keeps its body, and its size is checked again then.
    zmq::message_t env;
    if (!park) env = encode_request(call->id, service, method, body, sent, call->deadline);
    if (auto st = request_size_ok(park ? body.size() : env.size()); !st.ok()) return finish_now(st.code, st.message);
    if (park) call->parked_body.assign(body);
    ++calls_sent_;
    commands_.push(async_call_cmd{std::move(call), std::move(env)});
    // The node stopped between the check above and the push: nobody else will look.
    if (io_exited_.load()) cancel_queued_calls();
    return slot;
}

namespace {
long futex(std::atomic<std::uint32_t>* addr, int op, std::uint32_t val, const timespec* ts) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), op, val, ts, nullptr, 0);
}
} // namespace

void reply_slot::fulfil(reply r) noexcept {
    value = std::move(r);
    if (state.exchange(2, std::memory_order_acq_rel) == 1)
        futex(&state, FUTEX_WAKE_PRIVATE, std::numeric_limits<int>::max(), nullptr);
}

bool reply_slot::wait_until(const std::optional<clock::time_point>& until) const noexcept {
    auto* st = const_cast<std::atomic<std::uint32_t>*>(&state); // waiting marks it, the value is untouched
    std::uint32_t s = st->load(std::memory_order_acquire);
    while (s != 2) {
        if (s == 0 && !st->compare_exchange_weak(s, 1, std::memory_order_acq_rel, std::memory_order_acquire))
            continue; // s reloaded
        timespec ts{};
        const timespec* tsp = nullptr;
        if (until) {
            const auto left = *until - clock::now();
            if (left <= clock::duration::zero()) return false;
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
            ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
            tsp = &ts;
        }
        futex(st, FUTEX_WAIT_PRIVATE, 1, tsp); // returns at once unless the state is still 1
        s = st->load(std::memory_order_acquire);
    }
    return true;
}

status node_impl::request_size_ok(std::size_t bytes) const {
    if (static_cast<std::int64_t>(bytes) <= opts.max_message_size) return {};
    return {code::resource_exhausted, "request of " + std::to_string(bytes) + " bytes exceeds the maximum message size of " +
                                          std::to_string(opts.max_message_size)};
}

void node_impl::complete(std::shared_ptr<pending_call> call, reply r, bool may_post) {
    if (r.status.code != code::ok) ++call_errors_;
    if (call->target) call->target->in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (call->ran > 0) {
        call_info info{call->service, call->method, call->sent, call->deadline, call->endpoint(), nullptr};
        run_after(chain_, call->ran, [&](interceptor& i) { i.after_call(info, r.status, clock::now() - call->started); });
    }
    if (call->on_io) return call->on_io(r);
    if (call->has_future) return call->fulfil(std::move(r));
    if (!call->callback) return;
    if (call->callback_inline || !may_post) return run_callback(*call, std::move(r));
    post_task([this, call, r = std::move(r)]() mutable { run_callback(*call, std::move(r)); });
}

void node_impl::run_callback(pending_call& call, reply r) {
    std::optional<context_scope> scope;
    if (call.ctx) scope.emplace(*call.ctx);
    try {
        call.callback(std::move(r));
    } catch (const std::exception& e) {
        log.write(log_level::warn, "call callback threw", kv("method", call.service + "." + call.method) + kv("error", e.what()));
    } catch (...) {
        log.write(log_level::warn, "call callback threw", kv("method", call.service + "." + call.method));
    }
}

// deadlines_ is a min-heap of (deadline, id) whose entries are not removed when their
// call completes (that would cost a tree node per call): an entry whose id is no
// longer pending is skipped when it comes to the top, and the heap is rebuilt from
// pending_ when stale entries outnumber live ones, so it stays O(calls in flight).
namespace {
constexpr auto later_first = [](const auto& a, const auto& b) { return a.first > b.first; };
}

void node_impl::add_pending(const std::shared_ptr<pending_call>& call) {
    pending_.emplace(call->id, call);
    if (deadlines_.size() > 2 * pending_.size() + 1024) {
        deadlines_.clear();
        for (auto& [id, c] : pending_) deadlines_.emplace_back(c->deadline, id);
        std::make_heap(deadlines_.begin(), deadlines_.end(), later_first);
        return;
    }
    deadlines_.emplace_back(call->deadline, call->id);
    std::push_heap(deadlines_.begin(), deadlines_.end(), later_first);
}

std::shared_ptr<pending_call> node_impl::take_pending(
    std::unordered_map<std::uint64_t, std::shared_ptr<pending_call>>::iterator it) {
    auto call = std::move(it->second);
    pending_.erase(it);
    return call;
}

void node_impl::expire_calls(clock::time_point now) {
    while (!deadlines_.empty() && deadlines_.front().first <= now) {
        const auto id = deadlines_.front().second;
        std::pop_heap(deadlines_.begin(), deadlines_.end(), later_first);
        deadlines_.pop_back();
        auto it = pending_.find(id);
        if (it == pending_.end()) continue; // completed already
        auto call = take_pending(it);
        complete(call, reply{{code::deadline_exceeded, "no reply from " + std::string(call->endpoint()) + " before the deadline"}, {}});
    }
}

std::optional<clock::time_point> node_impl::next_deadline() {
    // Stale entries at the top would only wake the loop early; drop them first.
    while (!deadlines_.empty() && !pending_.contains(deadlines_.front().second)) {
        std::pop_heap(deadlines_.begin(), deadlines_.end(), later_first);
        deadlines_.pop_back();
    }
    if (deadlines_.empty()) return std::nullopt;
    return deadlines_.front().first;
}

std::size_t node_impl::handle_async_sock(const std::string& endpoint, zmq::socket_t& s) {
    std::size_t n = 0;
    for (; n < 256; ++n) {
        zmq::message_t first, second;
        const auto got = recv_two(s, first, second);
        if (got == two_frames::none) return n;
        if (got != two_frames::ok || first.size() != 0) {
            ++malformed_;
            continue;
        }
        envelope_view v;
        status st = decode(std::string_view(static_cast<const char*>(second.data()), second.size()), v);
        if (!st.ok() || v.kind != kind::reply) {
            const auto n = ++malformed_;
            if (n == 1 || n % 1000 == 0)
                log.write(log_level::warn, "undecodable reply", kv("from", endpoint) + kv("error", st.message));
            continue;
        }
        auto it = pending_.find(v.id);
        if (it == pending_.end()) continue; // late: its caller already had its answer
        auto call = take_pending(it);
        complete(call, reply{{v.status, std::string(v.error)}, std::string(v.body)});
    }
    return n;
}

// ---------------------------------------------------------------- peers

void node_impl::connect_peer(std::string endpoint) {
    if (!running_) {
        throw error(code::failed_precondition, "connect() needs a started node; use node_options::connect before start()");
    }
    {
        std::lock_guard lk(routes_mu_);
        ++peers_pending_;
    }
    commands_.push(connect_peer_cmd{std::move(endpoint)});
}

void node_impl::connect_events(std::string endpoint) {
    if (!running_) throw error(code::failed_precondition, "connect_events() needs a started node; use node_options::subscribe_to");
    commands_.push(connect_events_cmd{std::move(endpoint)});
}

void node_impl::tick_peers(clock::time_point now) {
    for (auto& p : peers_) {
        if (p.pending_id != 0 || now < p.next_describe) continue;
        auto call = std::make_shared<pending_call>();
        call->id = next_id_.fetch_add(1, std::memory_order_relaxed);
        call->deadline = now + std::chrono::milliseconds(1000);
        call->target = state_of(p.endpoint);
        p.pending_id = call->id;
        const std::string ep = p.endpoint;
        call->on_io = [this, ep](const reply& r) { on_describe_reply(ep, r); };
        envelope_view e;
        e.kind = kind::request;
        e.id = call->id;
        e.service = system_service;
        e.method = "describe";
        e.deadline_us = 1000000;
        zmq::message_t env = encode_message(e);
        try {
            auto& s = async_socket(*call->target);
            zmq::message_t delim;
            if (s.send(delim, zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
                s.send(env, zmq::send_flags::dontwait)) {
                call->target->in_flight.fetch_add(1, std::memory_order_relaxed); // complete() takes it off
                add_pending(call);
            } else {
                p.pending_id = 0;
                p.next_describe = now + std::chrono::milliseconds(200);
            }
        } catch (const zmq::error_t& e) {
            p.pending_id = 0;
            p.next_describe = now + std::chrono::seconds(5);
            log.write(log_level::warn, "cannot connect to peer", kv("endpoint", ep) + kv("error", e.what()));
        }
    }
}

namespace {
// "tcp://0.0.0.0:5555" from a peer reached at "tcp://10.0.0.7:4000" -> "tcp://10.0.0.7:5555".
std::string reachable(const std::string& advertised, const std::string& via) {
    auto host_of = [](const std::string& ep, std::size_t& hb, std::size_t& he) {
        hb = ep.find("://");
        if (hb == std::string::npos) return false;
        hb += 3;
        he = ep.rfind(':');
        return he != std::string::npos && he > hb;
    };
    std::size_t ab, ae, vb, ve;
    if (!host_of(advertised, ab, ae) || !host_of(via, vb, ve)) return advertised;
    const auto host = advertised.substr(ab, ae - ab);
    if (host != "0.0.0.0" && host != "*" && host != "[::]") return advertised;
    return advertised.substr(0, ab) + via.substr(vb, ve - vb) + advertised.substr(ae);
}
} // namespace

void node_impl::on_describe_reply(const std::string& peer, const reply& r) {
    auto it = std::find_if(peers_.begin(), peers_.end(), [&](auto& p) { return p.endpoint == peer; });
    if (it == peers_.end()) return;
    it->pending_id = 0;
    const auto now = clock::now();
    if (!r.ok()) {
        it->next_describe = now + (it->described ? std::chrono::milliseconds(5000) : std::chrono::milliseconds(200));
        if (!it->described && r.status.code != code::deadline_exceeded)
            log.write(log_level::warn, "peer describe failed", kv("peer", peer) + kv("error", r.status.message));
        return;
    }
    std::vector<std::string> services, pubs;
    try {
        auto oh = msgpack::unpack(r.body.data(), r.body.size());
        auto root = oh.get().as<std::map<std::string, msgpack::object>>();
        if (auto s = root.find("services"); s != root.end())
            for (auto& svc : s->second.as<std::vector<std::map<std::string, msgpack::object>>>())
                if (auto n = svc.find("name"); n != svc.end()) services.push_back(n->second.as<std::string>());
        if (auto e = root.find("endpoints"); e != root.end()) {
            auto eps = e->second.as<std::map<std::string, msgpack::object>>();
            if (auto p = eps.find("pub"); p != eps.end()) pubs = p->second.as<std::vector<std::string>>();
        }
    } catch (const std::exception& e) {
        log.write(log_level::warn, "peer describe unreadable", kv("peer", peer) + kv("error", e.what()));
        it->next_describe = now + std::chrono::seconds(5);
        return;
    }
    {
        std::lock_guard lk(routes_mu_);
        for (auto& [name, r] : routes_) r.remove(peer);
        for (auto& s : services) routes_[s].add(state_locked(peer));
        if (!it->ever_described) --peers_pending_;
        routes_cv_.notify_all();
        routes_changed_.set();
    }
    if (!it->described)
        log.write(log_level::info, "peer described", kv("peer", peer) + kv("services", services.size()));
    it->described = true;
    it->ever_described = true;
    it->next_describe = now + std::chrono::seconds(5);
    for (auto& p : pubs) {
        auto ep = reachable(p, peer);
        if (sub_ && event_endpoints_.insert(ep).second) {
            try {
                sub_->connect(ep);
            } catch (const zmq::error_t& e) {
                event_endpoints_.erase(ep);
                log.write(log_level::warn, "cannot connect events", kv("endpoint", ep) + kv("error", e.what()));
            }
        }
    }
}

} // namespace plexus::detail
