// Publish-subscribe: events leave through the I/O thread's PUB; the SUB side tracks
// per-publisher sequence numbers to count gaps, and dispatches to subscribers.
#include "detail/node_impl.hpp"

namespace plexus::detail {

received_counters& node_impl::received_of(std::string_view topic) {
    if (auto it = received_.find(topic); it != received_.end()) return *it->second;
    std::lock_guard lk(received_mu_); // only for stats(), which iterates the map
    return *received_.emplace(std::string(topic), std::make_unique<received_counters>()).first->second;
}

topic_counters& node_impl::counters_of(std::string_view topic) {
    auto it = topics_.find(topic);
    if (it == topics_.end()) it = topics_.emplace(std::string(topic), topic_counters{}).first;
    return it->second;
}

std::uint64_t node_impl::publish_seq(std::string_view topic, std::string_view body, const headers& extra) {
    if (!running_ || !pub_) return 0;
    thread_local envelope_view e;
    e.clear();
    e.kind = kind::event;
    e.id = next_id_.fetch_add(1, std::memory_order_relaxed);
    e.topic = topic;
    e.body = body;
    e.source = node_id;
    per_thread<headers, struct publish_headers> scratch;
    headers& h = scratch.get();
    outgoing_headers(extra, h);
    {
        event_info info{topic, h, nullptr};
        std::size_t ran = 0;
        if (auto pre = run_before(chain_, ran, [&](interceptor& i) { return i.before_publish(info); }); !pre.ok()) {
            log.write(log_level::warn, "event rejected", kv("topic", topic) + kv("error", pre.message));
            std::lock_guard lk(pub_mu_);
            counters_of(topic).dropped++;
            return 0;
        }
    }
    for (auto& [k, v] : h) e.headers.emplace_back(k, v);

    const auto limit = static_cast<std::size_t>(std::max(1, opts.send_hwm));
    std::unique_lock lk(pub_mu_);
    auto& tc = counters_of(topic);
    if (pub_queued_ >= limit) {
        // The I/O thread cannot wait for itself: it drops.
        if (opts.publish_overflow == overflow::drop || tl_io_owner == this) {
            ++tc.dropped;
            return 0;
        }
        auto deadline = clock::now() + opts.default_timeout;
        if (auto* c = context::current(); c && c->deadline && *c->deadline < deadline) deadline = *c->deadline;
        pub_space_.wait_until(lk, deadline, [&] { return pub_queued_ < limit || !running_; });
        if (pub_queued_ >= limit || !running_) {
            ++tc.dropped;
            return 0;
        }
    }
    // A topic published for the first time is announced, so subscribers find us; not
    // when an announced topic or declared prefix covers it already ("delivery." covers
    // "delivery.D-1"): beacons stay small however many topics are published.
    const bool new_topic = agent() && tc.seq == 0 &&
                           std::none_of(announced_topics_.begin(), announced_topics_.end(),
                                        [&](const std::string& t) { return topic.compare(0, t.size(), t) == 0; });
    if (new_topic) announced_topics_.emplace_back(topic);
    e.seq = ++tc.seq;
    zmq::message_t env = encode_message(e);
    if (static_cast<std::int64_t>(env.size() + topic.size()) > opts.max_message_size) {
        --tc.seq;
        ++tc.dropped;
        lk.unlock();
        log.write(log_level::warn, "event over the maximum message size dropped", kv("topic", topic) + kv("bytes", env.size()));
        return 0;
    }
    pubq_.push_back(pub_item{std::string(topic), std::move(env)});
    pubq_work_.set();
    ++pub_queued_;
    ++tc.published;
    const auto seq = e.seq;
    lk.unlock();
    wake_.notify();
    if (new_topic) announce();
    return seq;
}

void node_impl::flush_publications() {
    if (!pub_ || (!pubq_work_.get() && pub_head_ == pub_backlog_.size())) return;
    {
        std::lock_guard lk(pub_mu_);
        if (pub_head_ == pub_backlog_.size()) {
            // All sent: take the queue whole (a swap; both vectors keep their capacity).
            pub_backlog_.clear();
            pub_head_ = 0;
            pub_backlog_.swap(pubq_);
        } else {
            for (auto& item : pubq_) pub_backlog_.push_back(std::move(item));
            pubq_.clear();
        }
        pubq_work_.clear();
    }
    std::size_t done = 0;
    std::vector<std::string> dropped;
    try {
        for (; pub_head_ < pub_backlog_.size(); ++pub_head_, ++done) {
            auto& item = pub_backlog_[pub_head_];
            // ZMQ_XPUB_NODROP: EAGAIN when a subscriber's queue is full.
            if (!pub_->send(zmq::buffer(item.topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
                if (opts.publish_overflow == overflow::block && !io_stopping_) break; // retried on the next turn
                dropped.push_back(std::move(item.topic));
            } else {
                // The rest of a multipart message is accepted once its first part is.
                (void)pub_->send(item.envelope, zmq::send_flags::none);
            }
        }
    } catch (const zmq::error_t& e) {
        if (e.num() != ETERM) log.write(log_level::error, "publish failed", kv("error", e.what()));
    }
    if (pub_head_ == pub_backlog_.size()) {
        pub_backlog_.clear();
        pub_head_ = 0;
    }
    if (done == 0) return;
    std::lock_guard lk(pub_mu_);
    pub_queued_ -= std::min(pub_queued_, done);
    for (auto& t : dropped) counters_of(t).dropped++;
    pub_space_.notify_all();
}

std::uint64_t node_impl::subscribe(std::string prefix, event_handler fn, execution exec) {
    if (!fn) throw error(code::invalid_argument, "subscribe: empty handler");
    if (!running_) throw error(code::failed_precondition, "subscribe() needs a started node");
    const auto id = next_sub_id_.fetch_add(1);
    {
        std::lock_guard lk(subs_mu_);
        subscribers_.emplace(id, subscriber_entry{id, prefix, std::move(fn), exec});
        subs_version_.fetch_add(1, std::memory_order_release);
    }
    commands_.push(subscribe_cmd{id, prefix, true});
    connect_matching_publishers(prefix);
    return id;
}

void node_impl::unsubscribe(std::uint64_t id) {
    std::string prefix;
    {
        std::lock_guard lk(subs_mu_);
        auto it = subscribers_.find(id);
        if (it == subscribers_.end()) return;
        prefix = std::move(it->second.prefix);
        subscribers_.erase(it);
        subs_version_.fetch_add(1, std::memory_order_release);
    }
    if (running_) commands_.push(subscribe_cmd{id, std::move(prefix), false});
}

std::size_t node_impl::handle_sub() {
    std::size_t n = 0;
    for (; n < 256; ++n) {
        zmq::message_t topic_frame, env_frame;
        const auto got = recv_two(*sub_, topic_frame, env_frame);
        if (got == two_frames::none) return n;
        const bool ok_shape = got == two_frames::ok;
        const std::string_view topic(static_cast<const char*>(topic_frame.data()), topic_frame.size());
        envelope_view& v = view_;
        v.clear();
        status st = ok_shape ? decode(std::string_view(static_cast<const char*>(env_frame.data()), env_frame.size()), v)
                             : status{code::invalid_argument, "an event is two frames [topic, envelope]"};
        if (st.ok() && (v.kind != kind::event || v.topic != topic))
            st = {code::invalid_argument, "not an event envelope for topic frame '" + std::string(topic) + "'"};
        if (!st.ok()) {
            const auto n = st.code == code::unsupported_version ? ++unsupported_version_ : ++malformed_;
            if (n == 1 || n % 1000 == 0) log.write(log_level::warn, "dropped an undecodable event", kv("error", st.message));
            continue;
        }
        std::uint64_t gap = 0;
        received_counters* counters;
        if (v.seq != 0) {
            // One lookup per event: source + '\0' + topic, built in a reused string, finds
            // the last sequence number and the topic's counters.
            seq_key_.assign(v.source);
            seq_key_ += '\0';
            seq_key_ += topic;
            auto it = last_seq_.find(std::string_view(seq_key_));
            if (it == last_seq_.end()) {
                it = last_seq_.emplace(seq_key_, seq_state{v.seq, &received_of(topic)}).first;
            } else {
                if (v.seq > it->second.last + 1) gap = v.seq - it->second.last - 1;
                it->second.last = v.seq;
            }
            counters = it->second.counters;
        } else {
            counters = &received_of(topic);
        }
        counters->received.fetch_add(1, std::memory_order_relaxed);
        if (gap) counters->gaps.fetch_add(gap, std::memory_order_relaxed);
        if (gap) log.write(log_level::debug, "events lost", kv("topic", topic) + kv("missing", gap));

        refresh_subscribers();
        bool filled = false;
        std::shared_ptr<const event> shared; // for the handlers that run on workers
        for (auto& s : subscribers_io_) {
            if (topic.substr(0, s.prefix.size()) != s.prefix) continue;
            if (!filled) {
                // The I/O thread's event, refilled per event so its strings keep their storage.
                event& ev = io_event_;
                ev.topic.assign(topic);
                ev.body.assign(v.body);
                ev.seq = v.seq;
                ev.source.assign(v.source);
                ev.headers.assign(v.headers);
                for (auto& [k, val] : v.headers)
                    if (policy_->rejected_inbound(k)) ev.headers.erase(k);
                filled = true;
            }
            if (s.exec == execution::inline_loop) {
                deliver(io_event_, s.fn);
            } else {
                if (!shared) shared = std::make_shared<const event>(io_event_);
                post_ordered(s.order, [this, fn = s.fn, ev = shared] { deliver(*ev, fn); });
            }
        }
    }
    return n;
}

void node_impl::refresh_subscribers() {
    const auto version = subs_version_.load(std::memory_order_acquire);
    if (version == subs_io_version_) return;
    std::lock_guard lk(subs_mu_);
    subscribers_io_.clear();
    for (auto& [id, s] : subscribers_) subscribers_io_.push_back(s);
    subs_io_version_ = subs_version_.load(std::memory_order_relaxed);
}

void node_impl::deliver(const event& ev, const event_handler& fn) {
    per_thread<context, struct delivery_context> scratch;
    context& ctx = scratch.get();
    ctx.headers.assign(ev.headers);
    ctx.deadline.reset();
    ctx.set_parent_span_id({});
    context_scope scope(ctx);
    event_info info{ev.topic, ctx.headers, &ctx};
    std::size_t ran = 0;
    // Only the application's interceptors want the duration (no built-in times events).
    const auto t0 = app_interceptors_ ? clock::now() : clock::time_point{};
    status st;
    try {
        st = run_before(chain_, ran, [&](interceptor& i) { return i.before_deliver(info); });
        // The event as it arrived; what interceptors change (this hop's trace span, ...)
        // is in the context, which is what travels on.
        if (st.ok()) fn(ev);
    } catch (const error& e) {
        st = e.to_status();
    } catch (const std::exception& e) {
        st = {code::internal, e.what()};
        log.write(log_level::warn, "event handler threw", kv("topic", ev.topic) + kv("error", e.what()));
    } catch (...) {
        st = {code::internal, "non-standard exception"};
        log.write(log_level::warn, "event handler threw", kv("topic", ev.topic));
    }
    const auto elapsed = app_interceptors_ ? clock::now() - t0 : clock::duration{};
    run_after(chain_, ran, [&](interceptor& i) {
        try {
            i.after_deliver(info, st, elapsed);
        } catch (...) {
        }
    });
}

} // namespace plexus::detail
