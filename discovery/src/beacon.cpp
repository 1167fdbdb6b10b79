#include <plexus/discovery/beacon.hpp>

#include <random>
#include <stdexcept>

#include <msgpack.hpp>

namespace plexus::discovery {

namespace {

constexpr std::size_t fields_v1 = 12;

void check_size(std::string_view what, const std::string& s, std::size_t max, bool nonempty = false) {
    if (s.size() > max)
        throw std::invalid_argument(std::string(what) + " longer than " + std::to_string(max) + " bytes: " +
                                    s.substr(0, 40) + "...");
    if (nonempty && s.empty()) throw std::invalid_argument(std::string(what) + " is empty");
}

template <class Packer>
void pack_str(Packer& pk, std::string_view s) {
    pk.pack_str(static_cast<std::uint32_t>(s.size()));
    pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

template <class Packer>
void pack_id(Packer& pk, const node_id& id) {
    pk.pack_bin(static_cast<std::uint32_t>(id.size()));
    pk.pack_bin_body(reinterpret_cast<const char*>(id.data()), static_cast<std::uint32_t>(id.size()));
}

template <class Packer>
void pack_payload(Packer& pk, const payload& p) {
    pk.pack_array(3);
    pk.pack_map(static_cast<std::uint32_t>(p.endpoints.size()));
    for (const auto& [k, v] : p.endpoints) {
        pack_str(pk, k);
        pack_str(pk, v);
    }
    pk.pack_array(static_cast<std::uint32_t>(p.services.size()));
    for (const auto& s : p.services) {
        pk.pack_array(2);
        pack_str(pk, s.name);
        pack_str(pk, s.version);
    }
    pk.pack_array(static_cast<std::uint32_t>(p.topics.size()));
    for (const auto& t : p.topics) pack_str(pk, t);
}

// Reader helpers: false means malformed.
bool get_uint(const msgpack::object& o, std::uint64_t& out) {
    if (o.type != msgpack::type::POSITIVE_INTEGER) return false;
    out = o.via.u64;
    return true;
}

bool get_str(const msgpack::object& o, std::size_t max, std::string& out) {
    if (o.type != msgpack::type::STR || o.via.str.size > max) return false;
    out.assign(o.via.str.ptr, o.via.str.size);
    return true;
}

bool get_id(const msgpack::object& o, node_id& out) {
    if (o.type != msgpack::type::BIN || o.via.bin.size != out.size()) return false;
    std::copy_n(reinterpret_cast<const std::uint8_t*>(o.via.bin.ptr), out.size(), out.begin());
    return true;
}

bool get_payload(const msgpack::object& o, payload& out) {
    if (o.type != msgpack::type::ARRAY || o.via.array.size < 3) return false;
    const auto& eps = o.via.array.ptr[0];
    const auto& svcs = o.via.array.ptr[1];
    const auto& tops = o.via.array.ptr[2];
    if (eps.type != msgpack::type::MAP || svcs.type != msgpack::type::ARRAY || tops.type != msgpack::type::ARRAY)
        return false;
    for (std::uint32_t i = 0; i < eps.via.map.size; ++i) {
        std::string k, v;
        if (!get_str(eps.via.map.ptr[i].key, max_item_size, k) || !get_str(eps.via.map.ptr[i].val, max_item_size, v))
            return false;
        if (!out.endpoints.emplace(std::move(k), std::move(v)).second) return false;  // duplicate key
    }
    for (std::uint32_t i = 0; i < svcs.via.array.size; ++i) {
        const auto& s = svcs.via.array.ptr[i];
        if (s.type != msgpack::type::ARRAY || s.via.array.size < 2) return false;
        service sv;
        if (!get_str(s.via.array.ptr[0], max_item_size, sv.name) ||
            !get_str(s.via.array.ptr[1], max_item_size, sv.version) || sv.name.empty())
            return false;
        out.services.push_back(std::move(sv));
    }
    for (std::uint32_t i = 0; i < tops.via.array.size; ++i) {
        std::string t;
        if (!get_str(tops.via.array.ptr[i], max_item_size, t)) return false;
        out.topics.push_back(std::move(t));
    }
    return true;
}

bool get_gossip(const msgpack::object& o, std::vector<gossip_entry>& out) {
    if (o.type != msgpack::type::ARRAY) return false;
    for (std::uint32_t i = 0; i < o.via.array.size; ++i) {
        const auto& g = o.via.array.ptr[i];
        if (g.type != msgpack::type::ARRAY || g.via.array.size < 3) return false;
        gossip_entry e;
        if (!get_id(g.via.array.ptr[0], e.id) || !get_uint(g.via.array.ptr[1], e.incarnation) ||
            !get_str(g.via.array.ptr[2], 64, e.address))
            return false;
        out.push_back(std::move(e));
    }
    return true;
}

} // namespace

std::string to_hex(const node_id& id) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(32);
    for (auto b : id) {
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 15]);
    }
    return s;
}

bool parse_node_id(std::string_view hex, node_id& out) noexcept {
    if (hex.size() != 32) return false;
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    node_id id{};
    for (std::size_t i = 0; i < 16; ++i) {
        int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        id[i] = static_cast<std::uint8_t>(hi << 4 | lo);
    }
    out = id;
    return true;
}

node_id random_node_id() {
    std::random_device rd;
    node_id id{};
    do {
        for (std::size_t i = 0; i < id.size(); i += 4) {
            auto r = rd();
            for (std::size_t j = 0; j < 4; ++j) id[i + j] = static_cast<std::uint8_t>(r >> (8 * j));
        }
    } while (is_nil(id));
    return id;
}

std::string_view to_string(decode_error e) noexcept {
    switch (e) {
    case decode_error::none: return "none";
    case decode_error::oversized: return "oversized";
    case decode_error::malformed: return "malformed";
    case decode_error::wrong_magic: return "wrong magic";
    case decode_error::unsupported_version: return "unsupported version";
    case decode_error::unknown_kind: return "unknown kind";
    }
    return "unknown";
}

void validate(const payload& p) {
    for (const auto& [k, v] : p.endpoints) {
        check_size("endpoint name", k, max_item_size, true);
        check_size("endpoint", v, max_item_size, true);
    }
    for (const auto& s : p.services) {
        check_size("service name", s.name, max_item_size, true);
        check_size("service version", s.version, max_item_size);
    }
    for (const auto& t : p.topics) check_size("topic", t, max_item_size);
}

std::vector<std::uint8_t> encode(const beacon& b) {
    check_size("cluster", b.cluster, max_cluster_size, true);
    check_size("name", b.name, max_name_size);
    validate(b.body);
    if (b.parts == 0 || b.parts > max_parts || b.part >= b.parts)
        throw std::invalid_argument("beacon part out of range");
    msgpack::sbuffer buf(256);
    msgpack::packer<msgpack::sbuffer> pk(buf);
    pk.pack_array(fields_v1);
    pack_str(pk, beacon_magic);
    pk.pack_uint64(beacon_version);
    pk.pack_uint64(static_cast<std::uint64_t>(b.kind));
    pack_str(pk, b.cluster);
    pack_id(pk, b.id);
    pk.pack_uint64(b.incarnation);
    pack_str(pk, b.name);
    pk.pack_uint64(b.interval_ms);
    pk.pack_uint64(b.flags);
    pk.pack_array(3);
    pk.pack_uint64(b.part);
    pk.pack_uint64(b.parts);
    pk.pack_uint64(b.digest);
    pack_payload(pk, b.body);
    pk.pack_array(static_cast<std::uint32_t>(b.gossip.size()));
    for (const auto& g : b.gossip) {
        pk.pack_array(3);
        pack_id(pk, g.id);
        pk.pack_uint64(g.incarnation);
        pack_str(pk, g.address);
    }
    const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
    return {p, p + buf.size()};
}

decode_error decode(std::span<const std::uint8_t> datagram, beacon& out) noexcept {
    if (datagram.size() > max_datagram_size) return decode_error::oversized;
    try {
        std::size_t off = 0;
        // Every count is bounded by the datagram size; depth 4 is the deepest valid nesting.
        const msgpack::unpack_limit limit(max_datagram_size, max_datagram_size, max_datagram_size,
                                          max_datagram_size, 0, 4);
        msgpack::object_handle oh = msgpack::unpack(reinterpret_cast<const char*>(datagram.data()),
                                                    datagram.size(), off, nullptr, nullptr, limit);
        if (off != datagram.size()) return decode_error::malformed;
        const msgpack::object& o = oh.get();
        if (o.type != msgpack::type::ARRAY || o.via.array.size < 1) return decode_error::wrong_magic;
        const msgpack::object* f = o.via.array.ptr;
        if (f[0].type != msgpack::type::STR || std::string_view(f[0].via.str.ptr, f[0].via.str.size) != beacon_magic)
            return decode_error::wrong_magic;
        std::uint64_t version = 0;
        if (o.via.array.size < 2 || !get_uint(f[1], version)) return decode_error::malformed;
        if (version != beacon_version) return decode_error::unsupported_version;
        if (o.via.array.size < fields_v1) return decode_error::malformed;

        beacon b;
        std::uint64_t kind = 0;
        if (!get_uint(f[2], kind)) return decode_error::malformed;
        if (!get_str(f[3], max_cluster_size, b.cluster) || b.cluster.empty()) return decode_error::malformed;
        if (!get_id(f[4], b.id) || !get_uint(f[5], b.incarnation)) return decode_error::malformed;
        if (!get_str(f[6], max_name_size, b.name)) return decode_error::malformed;
        if (!get_uint(f[7], b.interval_ms) || !get_uint(f[8], b.flags)) return decode_error::malformed;
        if (f[9].type != msgpack::type::ARRAY || f[9].via.array.size < 3) return decode_error::malformed;
        const msgpack::object* part = f[9].via.array.ptr;
        if (!get_uint(part[0], b.part) || !get_uint(part[1], b.parts) || !get_uint(part[2], b.digest))
            return decode_error::malformed;
        if (b.parts == 0 || b.parts > max_parts || b.part >= b.parts) return decode_error::malformed;
        if (b.interval_ms == 0 || b.interval_ms > 3'600'000) return decode_error::malformed;
        if (!get_payload(f[10], b.body) || !get_gossip(f[11], b.gossip)) return decode_error::malformed;
        if (kind > static_cast<std::uint64_t>(beacon_kind::leave)) return decode_error::unknown_kind;
        b.kind = static_cast<beacon_kind>(kind);
        out = std::move(b);
        return decode_error::none;
    } catch (...) {
        // msgpack::unpack_error and its kin (truncated input, limits), std::bad_alloc.
        return decode_error::malformed;
    }
}

std::uint64_t payload_digest(const payload& p) {
    msgpack::sbuffer buf(256);
    msgpack::packer<msgpack::sbuffer> pk(buf);
    pack_payload(pk, p);
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::size_t i = 0; i < buf.size(); ++i) {
        h ^= static_cast<unsigned char>(buf.data()[i]);
        h *= 0x100000001b3ULL;
    }
    return h;
}

} // namespace plexus::discovery
