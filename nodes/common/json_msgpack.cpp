#include "json_msgpack.hpp"

#include <plexus/codec.hpp> // msgpack-c, configured as the framework uses it

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace plexus::nodes {

using nlohmann::json;

std::string to_msgpack(const json& j) {
    const std::vector<std::uint8_t> bytes = json::to_msgpack(j);
    return std::string(bytes.begin(), bytes.end());
}

namespace {

constexpr int max_depth = 128; // deeper values are shown as base64 rather than recursed into

json convert(const msgpack::object& o, int depth) {
    if (depth > max_depth) throw std::runtime_error("nested too deeply");
    switch (o.type) {
    case msgpack::type::NIL: return nullptr;
    case msgpack::type::BOOLEAN: return o.via.boolean;
    case msgpack::type::POSITIVE_INTEGER: return o.via.u64;
    case msgpack::type::NEGATIVE_INTEGER: return o.via.i64;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return o.via.f64;
    case msgpack::type::STR: return std::string(o.via.str.ptr, o.via.str.size);
    case msgpack::type::BIN: return base64(std::string_view(o.via.bin.ptr, o.via.bin.size));
    case msgpack::type::EXT:
        return json{{"ext", static_cast<int>(o.via.ext.type())},
                    {"data", base64(std::string_view(o.via.ext.data(), o.via.ext.size))}};
    case msgpack::type::ARRAY: {
        json a = json::array();
        for (std::uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(convert(o.via.array.ptr[i], depth + 1));
        return a;
    }
    case msgpack::type::MAP: {
        json m = json::object();
        for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
            const auto& kv = o.via.map.ptr[i];
            std::string k = kv.key.type == msgpack::type::STR ? std::string(kv.key.via.str.ptr, kv.key.via.str.size)
                                                               : dump(convert(kv.key, depth + 1));
            m[k] = convert(kv.val, depth + 1);
        }
        return m;
    }
    }
    return nullptr;
}

} // namespace

json from_msgpack(std::string_view bytes, bool* exact) {
    if (exact) *exact = true;
    if (bytes.empty()) return nullptr;
    try {
        // No count can exceed the byte count: without this limit a 5-byte header
        // announcing 2^32 elements would make msgpack-c allocate for all of them.
        const auto n = static_cast<std::size_t>(bytes.size());
        const msgpack::unpack_limit limit(n, n, n, n, n, max_depth);
        std::size_t offset = 0;
        bool referenced = false;
        msgpack::object_handle oh =
            msgpack::unpack(bytes.data(), bytes.size(), offset, referenced, nullptr, nullptr, limit);
        if (offset != bytes.size()) throw std::runtime_error("trailing bytes");
        return convert(oh.get(), 0);
    } catch (const std::exception&) {
        if (exact) *exact = false;
        return base64(bytes);
    }
}

std::string base64(std::string_view bytes) {
    static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    auto at = [&](std::size_t k) { return static_cast<unsigned>(static_cast<unsigned char>(bytes[k])); };
    for (; i + 3 <= bytes.size(); i += 3) {
        const unsigned v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
        out += table[v >> 18 & 63];
        out += table[v >> 12 & 63];
        out += table[v >> 6 & 63];
        out += table[v & 63];
    }
    if (const std::size_t rest = bytes.size() - i; rest > 0) {
        const unsigned v = at(i) << 16 | (rest == 2 ? at(i + 1) << 8 : 0u);
        out += table[v >> 18 & 63];
        out += table[v >> 12 & 63];
        out += rest == 2 ? table[v >> 6 & 63] : '=';
        out += '=';
    }
    return out;
}

std::string hex(std::string_view bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (char c : bytes) {
        const auto b = static_cast<unsigned char>(c);
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

std::string dump(const json& j, int indent) {
    return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

} // namespace plexus::nodes
