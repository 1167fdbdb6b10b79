// The system service "plexus" every node serves: ping, describe, stats, publish.
// Bodies are MessagePack maps with string keys (docs/PROTOCOL.md, "System methods").
// They run inline on the I/O thread: they only read counters and never block.
#include <chrono>

#include "detail/node_impl.hpp"

namespace plexus::detail {

namespace {
using packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(packer& pk, std::string_view s) {
    pk.pack_str(static_cast<std::uint32_t>(s.size()));
    pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}
// A pre-encoded MessagePack value, or nil when there is none.
void pack_raw(msgpack::sbuffer& buf, packer& pk, const std::string& raw) {
    if (raw.empty())
        pk.pack_nil();
    else
        buf.write(raw.data(), raw.size());
}
// One map entry with a str key.
void field(packer& pk, std::string_view key, std::string_view value) {
    pack_str(pk, key);
    pack_str(pk, value);
}
void field(packer& pk, std::string_view key, std::uint64_t value) {
    pack_str(pk, key);
    pk.pack_uint64(value);
}
void field(packer& pk, std::string_view key, double value) {
    pack_str(pk, key);
    pk.pack_double(value);
}
std::string to_string(const msgpack::sbuffer& b) { return std::string(b.data(), b.size()); }
std::uint64_t uptime_ms(clock::time_point since) {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - since).count());
}
} // namespace

void node_impl::install_system_service() {
    auto add = [&](const char* name, std::string (node_impl::*fn)(request&), const char* doc) {
        add_method(std::string(system_service), name, [this, fn](request& r) { return (this->*fn)(r); },
                   method_options{execution::inline_loop, doc}, {}, {});
    };
    add("ping", &node_impl::sys_ping, "liveness: node name, id, wall-clock time, uptime");
    add("describe", &node_impl::sys_describe, "this node's services, methods, topics and endpoints");
    add("stats", &node_impl::sys_stats, "counters of calls, errors and events");
    add("publish", &node_impl::sys_publish, "publish {topic, body} on this node's behalf (when allowed)");
}

std::string node_impl::sys_ping(request&) {
    msgpack::sbuffer buf;
    packer pk(buf);
    pk.pack_map(4);
    field(pk, "node", opts.name);
    field(pk, "id", hex(node_id));
    pack_str(pk, "time_us");
    pk.pack_uint64(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count()));
    field(pk, "uptime_ms", uptime_ms(started_at_));
    return to_string(buf);
}

std::string node_impl::sys_describe(request&) {
    msgpack::sbuffer buf;
    packer pk(buf);
    pk.pack_map(7);
    field(pk, "node", opts.name);
    field(pk, "id", hex(node_id));
    field(pk, "version", "0.1.0");
    pack_str(pk, "protocol");
    pk.pack_uint32(protocol_version);
    pack_str(pk, "endpoints");
    pk.pack_map(2);
    pack_str(pk, "rpc");
    pk.pack_array(static_cast<std::uint32_t>(rpc_endpoints.size()));
    for (auto& e : rpc_endpoints) pack_str(pk, e);
    pack_str(pk, "pub");
    pk.pack_array(static_cast<std::uint32_t>(pub_endpoints_.size()));
    for (auto& e : pub_endpoints_) pack_str(pk, e);

    pack_str(pk, "services");
    std::uint32_t n = 0;
    for (auto& s : services_) n += s->name != system_service;
    pk.pack_array(n);
    for (auto& s : services_) {
        if (s->name == system_service) continue;
        pk.pack_map(3);
        field(pk, "name", s->name);
        field(pk, "doc", s->doc);
        pack_str(pk, "methods");
        pk.pack_array(static_cast<std::uint32_t>(s->methods.size()));
        for (auto& m : s->methods) {
            pk.pack_map(5);
            field(pk, "name", m->name);
            field(pk, "doc", m->opts.doc);
            field(pk, "exec", m->opts.exec == execution::inline_loop ? "inline" : "pool");
            pack_str(pk, "request");
            pack_raw(buf, pk, m->request_shape);
            pack_str(pk, "reply");
            pack_raw(buf, pk, m->reply_shape);
        }
    }
    pack_str(pk, "topics");
    std::lock_guard lk(pub_mu_);
    pk.pack_array(static_cast<std::uint32_t>(topics_decl_.size()));
    for (auto& t : topics_decl_) {
        pk.pack_map(3);
        field(pk, "name", t.name);
        field(pk, "doc", t.doc);
        pack_str(pk, "shape");
        pack_raw(buf, pk, t.shape);
    }
    return to_string(buf);
}

std::string node_impl::sys_stats(request&) {
    const node_stats s = stats();
    msgpack::sbuffer buf;
    packer pk(buf);
    pk.pack_map(9);
    field(pk, "node", opts.name);
    field(pk, "uptime_ms", uptime_ms(started_at_));
    pack_str(pk, "methods");
    pk.pack_array(static_cast<std::uint32_t>(s.methods.size()));
    for (auto& m : s.methods) {
        pk.pack_map(9);
        field(pk, "service", m.service);
        field(pk, "method", m.method);
        field(pk, "calls", m.calls);
        field(pk, "errors", m.errors);
        field(pk, "in_flight", m.in_flight);
        pack_str(pk, "errors_by_code");
        pk.pack_map(static_cast<std::uint32_t>(m.errors_by_code.size()));
        for (auto& [c, n] : m.errors_by_code) {
            pack_str(pk, plexus::to_string(c));
            pk.pack_uint64(n);
        }
        field(pk, "p50_us", m.p50_us);
        field(pk, "p90_us", m.p90_us);
        field(pk, "p99_us", m.p99_us);
    }
    pack_str(pk, "topics");
    pk.pack_array(static_cast<std::uint32_t>(s.topics.size()));
    for (auto& t : s.topics) {
        pk.pack_map(5);
        field(pk, "topic", t.topic);
        field(pk, "published", t.published);
        field(pk, "dropped", t.dropped);
        field(pk, "received", t.received);
        field(pk, "gaps", t.gaps);
    }
    field(pk, "malformed", s.malformed);
    field(pk, "unsupported_version", s.unsupported_version);
    field(pk, "calls_sent", s.calls_sent);
    field(pk, "call_errors", s.call_errors);
    field(pk, "peer_connections", s.peer_connections);
    return to_string(buf);
}

std::string node_impl::sys_publish(request& rq) {
    if (!opts.remote_publish)
        throw error(code::permission_denied, "remote publish is disabled on node '" + opts.name +
                                                 "' (start it with --allow-publish / node_options::remote_publish)");
    if (!pub_) throw error(code::failed_precondition, "node '" + opts.name + "' has no event endpoint (pub_bind is empty)");
    std::string topic, body;
    try {
        auto oh = msgpack::unpack(rq.body.data(), rq.body.size());
        auto m = oh.get().as<std::map<std::string, msgpack::object>>();
        auto t = m.find("topic");
        if (t == m.end()) throw error(code::invalid_argument, "publish needs a \"topic\" string");
        topic = t->second.as<std::string>();
        if (auto b = m.find("body"); b != m.end()) {
            msgpack::sbuffer bb;
            msgpack::pack(bb, b->second);
            body.assign(bb.data(), bb.size());
        }
    } catch (const error&) {
        throw;
    } catch (const std::exception& e) {
        throw error(code::invalid_argument, std::string("publish body must be a map {topic: str, body: any}: ") + e.what());
    }
    if (topic.empty()) throw error(code::invalid_argument, "publish needs a non-empty topic");
    const auto seq = publish_seq(topic, std::move(body), {});
    if (seq == 0) throw error(code::resource_exhausted, "event on '" + topic + "' dropped: publish queue full");
    msgpack::sbuffer buf;
    packer pk(buf);
    pk.pack_map(1);
    field(pk, "seq", seq);
    return to_string(buf);
}

} // namespace plexus::detail
