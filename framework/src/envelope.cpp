// The envelope codec (docs/PROTOCOL.md, "Envelope").
//
// Hand-written MessagePack on purpose: msgpack-c's object tree costs a map
// allocation per message (~700 ns for a six-header envelope); this reader makes one
// pass over the bytes, allocates nothing beyond the reused header vector of the view,
// and hands out string_views into the input.
//
// Reader errors come in two classes:
//  - structural (not MessagePack, truncated, not a map, trailing bytes, nesting too
//    deep): decoding stops at once; the result is invalid_argument whatever the
//    version says, since nothing after the fault can be trusted.
//  - semantic (wrong type or value for a known key, duplicate key, too many or
//    duplicate headers): the first one is remembered, the value is skipped and
//    decoding goes on, so that an envelope of another protocol version, whose keys
//    may mean other things, is still reported as unsupported_version with its id.
#include <plexus/envelope.hpp>

#include <cstring>
#include <iterator>
#include <limits>
#include <string>

namespace plexus {

std::string_view to_string(kind k) noexcept {
    switch (k) {
    case kind::request: return "request";
    case kind::reply: return "reply";
    case kind::event: return "event";
    }
    return "unknown";
}

void envelope_view::clear() noexcept {
    version = protocol_version;
    kind = kind::request;
    id = 0;
    service = {};
    method = {};
    topic = {};
    headers.clear();
    deadline_us.reset();
    status = code::ok;
    error = {};
    body = {};
    seq = 0;
    source = {};
}

envelope envelope_view::to_owned() const {
    envelope e;
    e.version = version;
    e.kind = kind;
    e.id = id;
    e.service.assign(service);
    e.method.assign(method);
    e.topic.assign(topic);
    e.headers.reserve(headers.size());
    for (const auto& [k, v] : headers) e.headers.append(k, v);
    e.deadline_us = deadline_us;
    e.status = status;
    e.error.assign(error);
    e.body.assign(body);
    e.seq = seq;
    e.source.assign(source);
    return e;
}

std::optional<std::string_view> envelope_view::header(std::string_view k) const noexcept {
    for (const auto& kv : headers)
        if (kv.first == k) return kv.second;
    return std::nullopt;
}

namespace detail {
namespace {

constexpr std::size_t max_headers = 256;
constexpr int max_depth = 32; // the envelope map is level 1
constexpr unsigned last_key = key::source;

constexpr std::string_view key_names[] = {"version", "kind",   "id",    "service", "method", "topic", "headers",
                                          "deadline", "status", "error", "body",    "seq",    "source"};
static_assert(std::size(key_names) == last_key + 1);

using byte = unsigned char;

inline std::uint16_t load16(const byte* p) noexcept {
    return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
inline std::uint32_t load32(const byte* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
inline std::uint64_t load64(const byte* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

// The MessagePack format a byte starts, for error messages.
std::string_view format_name(byte b) noexcept {
    if (b <= 0x7f) return "positive fixint";
    if (b <= 0x8f) return "fixmap";
    if (b <= 0x9f) return "fixarray";
    if (b <= 0xbf) return "fixstr";
    if (b >= 0xe0) return "negative fixint";
    switch (b) {
    case 0xc0: return "nil";
    case 0xc1: return "the reserved byte 0xc1";
    case 0xc2: case 0xc3: return "bool";
    case 0xc4: return "bin8";
    case 0xc5: return "bin16";
    case 0xc6: return "bin32";
    case 0xc7: return "ext8";
    case 0xc8: return "ext16";
    case 0xc9: return "ext32";
    case 0xca: return "float32";
    case 0xcb: return "float64";
    case 0xcc: return "uint8";
    case 0xcd: return "uint16";
    case 0xce: return "uint32";
    case 0xcf: return "uint64";
    case 0xd0: return "int8";
    case 0xd1: return "int16";
    case 0xd2: return "int32";
    case 0xd3: return "int64";
    case 0xd4: return "fixext1";
    case 0xd5: return "fixext2";
    case 0xd6: return "fixext4";
    case 0xd7: return "fixext8";
    case 0xd8: return "fixext16";
    case 0xd9: return "str8";
    case 0xda: return "str16";
    case 0xdb: return "str32";
    case 0xdc: return "array16";
    case 0xdd: return "array32";
    case 0xde: return "map16";
    default: return "map32";
    }
}

std::string quoted(std::string_view s) {
    // Header keys come from the network: show a bounded, printable excerpt.
    std::string q = "'";
    const std::size_t n = s.size() < 64 ? s.size() : 64;
    for (std::size_t i = 0; i < n; ++i) {
        const auto c = static_cast<byte>(s[i]);
        if (c >= 0x20 && c < 0x7f) {
            q += static_cast<char>(c);
        } else {
            static constexpr char hex[] = "0123456789abcdef";
            q += "\\x";
            q += hex[c >> 4];
            q += hex[c & 15];
        }
    }
    if (n < s.size()) q += "...";
    q += '\'';
    return q;
}

class reader {
public:
    explicit reader(std::string_view bytes) noexcept
        : begin_(reinterpret_cast<const byte*>(bytes.data())), p_(begin_), end_(begin_ + bytes.size()) {}

    status run(envelope_view& out) {
        if (p_ == end_) return {code::invalid_argument, "empty input: expected a MessagePack map"};
        std::uint32_t n;
        const byte b = *p_;
        if ((b & 0xf0) == 0x80) {
            n = b & 0x0f;
            p_ += 1;
        } else if (b == 0xde && left() >= 3) {
            n = load16(p_ + 1);
            p_ += 3;
        } else if (b == 0xdf && left() >= 5) {
            n = load32(p_ + 1);
            p_ += 5;
        } else if (b == 0xde || b == 0xdf) {
            return {code::invalid_argument, "truncated: the map header is cut short"};
        } else {
            return {code::invalid_argument,
                    "not a map: the envelope must be a MessagePack map, got " + std::string(format_name(b))};
        }
        // Every entry takes at least two bytes: reject absurd counts before looping.
        if (n > left() / 2)
            return {code::invalid_argument, "truncated: the map declares " + std::to_string(n) + " entries but only " +
                                                std::to_string(left()) + " bytes follow"};

        std::uint64_t version = 0;
        for (std::uint32_t i = 0; i < n; ++i) {
            if (!read_entry(out, version)) return {code::invalid_argument, std::move(err_)};
        }
        if (p_ != end_)
            return {code::invalid_argument, std::to_string(left()) + (left() == 1 ? " trailing byte" : " trailing bytes") +
                                                " after the envelope map (at byte " +
                                                std::to_string(offset()) + ")"};

        if (have_version_ && version != protocol_version) {
            return {code::unsupported_version, "protocol version " + std::to_string(version) +
                                                   " not supported; this node speaks " + std::to_string(protocol_version)};
        }
        if (!err_.empty()) return {code::invalid_argument, std::move(err_)};
        for (unsigned k : {key::version, key::kind, key::id})
            if (!(seen_ & (1u << k))) return missing(k, "envelope");
        if (out.kind == kind::request) {
            if (!(seen_ & (1u << key::service))) return missing(key::service, "request");
            if (!(seen_ & (1u << key::method))) return missing(key::method, "request");
        } else if (out.kind == kind::event) {
            if (!(seen_ & (1u << key::topic))) return missing(key::topic, "event");
        }
        return {};
    }

private:
    const byte* begin_;
    const byte* p_;
    const byte* end_;
    std::uint32_t seen_ = 0;      // known keys met, by bit
    bool have_version_ = false;   // the version key was met and is an unsigned integer
    bool fatal_ = false;
    std::string err_; // fatal: the reason; else the first semantic error (or empty)

    [[nodiscard]] std::size_t left() const noexcept { return static_cast<std::size_t>(end_ - p_); }
    [[nodiscard]] std::size_t offset() const noexcept { return static_cast<std::size_t>(p_ - begin_); }

    static std::string where(unsigned k) {
        return "key '" + std::string(key_names[k]) + "' (" + std::to_string(k) + ")";
    }
    static status missing(unsigned k, const char* what) {
        return {code::invalid_argument, "missing required " + where(k) + " in a" + (what[0] == 'e' ? "n " : " ") + what};
    }

    // Structural failure: decoding stops.
    [[gnu::cold]] bool fatal(std::string msg) {
        fatal_ = true;
        err_ = std::move(msg);
        return false;
    }
    [[gnu::cold]] bool truncated(std::size_t need, const char* what) {
        return fatal("truncated at byte " + std::to_string(offset()) + ": " + what + " needs " + std::to_string(need) +
                     " bytes, " + std::to_string(left()) + " left");
    }
    // Semantic failure of the value of key k that starts at `at`: remembered (first
    // one only); the caller skips the value and goes on.
    [[gnu::cold]] bool wrong(unsigned k, const byte* at, const std::string& msg) {
        if (err_.empty())
            err_ = where(k) + " at byte " + std::to_string(static_cast<std::size_t>(at - begin_)) + ": " + msg;
        return false;
    }
    [[gnu::cold]] bool wrong_type(unsigned k, const byte* at, const char* expected) {
        return wrong(k, at, std::string("expected ") + expected + ", got " + std::string(format_name(*at)));
    }

    // Reads any MessagePack integer: 1 ok, 0 not an integer (nothing consumed),
    // -1 truncated (fatal set).
    int read_int(std::uint64_t& mag, bool& negative) {
        const byte b = *p_;
        negative = false;
        if (b <= 0x7f) {
            mag = b;
            ++p_;
            return 1;
        }
        if (b >= 0xe0) {
            negative = true;
            mag = static_cast<std::uint64_t>(-static_cast<std::int64_t>(static_cast<std::int8_t>(b)));
            ++p_;
            return 1;
        }
        std::size_t n;
        switch (b) {
        case 0xcc: case 0xd0: n = 1; break;
        case 0xcd: case 0xd1: n = 2; break;
        case 0xce: case 0xd2: n = 4; break;
        case 0xcf: case 0xd3: n = 8; break;
        default: return 0;
        }
        if (left() < 1 + n) {
            truncated(1 + n, "an integer");
            return -1;
        }
        const byte* q = p_ + 1;
        std::uint64_t u = n == 1 ? q[0] : n == 2 ? load16(q) : n == 4 ? load32(q) : load64(q);
        if (b >= 0xd0) { // signed: sign-extend from n bytes
            const unsigned shift = static_cast<unsigned>(64 - 8 * n);
            const auto s = static_cast<std::int64_t>(u << shift) >> shift;
            if (s < 0) {
                negative = true;
                u = static_cast<std::uint64_t>(0) - static_cast<std::uint64_t>(s);
            } else {
                u = static_cast<std::uint64_t>(s);
            }
        }
        mag = u;
        p_ += 1 + n;
        return 1;
    }

    // An unsigned value of key k: any integer format holding a value >= 0.
    bool read_uint(unsigned k, std::uint64_t& v) {
        const byte b = *p_;
        if (b <= 0x7f) { // fast path: positive fixint
            v = b;
            ++p_;
            return true;
        }
        const byte* at = p_;
        bool negative;
        const int r = read_int(v, negative);
        if (r < 0) return false;
        if (r == 0) return wrong_type(k, at, "an unsigned integer");
        if (negative) return wrong(k, at, "negative value -" + std::to_string(v) + " where an unsigned integer is required");
        return true;
    }

    // A str (or, with allow_bin, a bin) of key k.
    bool read_bytes(unsigned k, std::string_view& s, bool allow_str, bool allow_bin, const char* expected) {
        const byte* at = p_;
        const byte b = *p_;
        std::size_t hdr, n;
        if ((b & 0xe0) == 0xa0) {
            if (!allow_str) return wrong_type(k, at, expected);
            hdr = 1;
            n = b & 0x1f;
        } else {
            switch (b) {
            case 0xd9: case 0xda: case 0xdb:
                if (!allow_str) return wrong_type(k, at, expected);
                break;
            case 0xc4: case 0xc5: case 0xc6:
                if (!allow_bin) return wrong_type(k, at, expected);
                break;
            default: return wrong_type(k, at, expected);
            }
            hdr = (b == 0xd9 || b == 0xc4) ? 2 : (b == 0xda || b == 0xc5) ? 3 : 5;
            if (left() < hdr) return truncated(hdr, "a length header");
            n = hdr == 2 ? p_[1] : hdr == 3 ? load16(p_ + 1) : load32(p_ + 1);
        }
        if (left() - hdr < n) {
            return fatal("truncated at byte " + std::to_string(offset()) + ": " + where(k) + " declares " +
                         std::to_string(n) + " bytes, " + std::to_string(left() - hdr) + " left");
        }
        s = std::string_view(reinterpret_cast<const char*>(p_ + hdr), n);
        p_ += hdr + n;
        return true;
    }

    bool read_header_string(std::string_view& s, bool is_key, const std::string_view* hkey) {
        const byte* at = p_;
        const byte b = *p_;
        std::size_t hdr, n;
        if ((b & 0xe0) == 0xa0) {
            hdr = 1;
            n = b & 0x1f;
        } else if (b == 0xd9 || b == 0xda || b == 0xdb) {
            hdr = b == 0xd9 ? 2 : b == 0xda ? 3 : 5;
            if (left() < hdr) return truncated(hdr, "a length header");
            n = hdr == 2 ? p_[1] : hdr == 3 ? load16(p_ + 1) : load32(p_ + 1);
        } else {
            return wrong(key::headers, at,
                         is_key ? "expected a str header name, got " + std::string(format_name(b))
                                : "header " + quoted(*hkey) + ": expected a str value, got " + std::string(format_name(b)));
        }
        if (left() - hdr < n)
            return fatal("truncated at byte " + std::to_string(offset()) + ": a header " + (is_key ? "name" : "value") +
                         " declares " + std::to_string(n) + " bytes, " + std::to_string(left() - hdr) + " left");
        s = std::string_view(reinterpret_cast<const char*>(p_ + hdr), n);
        p_ += hdr + n;
        return true;
    }

    bool read_headers(envelope_view& out) {
        const byte* at = p_;
        const byte b = *p_;
        std::size_t n;
        if ((b & 0xf0) == 0x80) {
            n = b & 0x0f;
            p_ += 1;
        } else if (b == 0xde || b == 0xdf) {
            const std::size_t hdr = b == 0xde ? 3 : 5;
            if (left() < hdr) return truncated(hdr, "a map header");
            n = hdr == 3 ? load16(p_ + 1) : load32(p_ + 1);
            p_ += hdr;
        } else {
            return wrong_type(key::headers, at, "a map of str to str");
        }
        if (n > max_headers)
            return wrong(key::headers, at,
                         std::to_string(n) + " headers, at most " + std::to_string(max_headers) + " are allowed");
        out.headers.clear();
        for (std::size_t i = 0; i < n; ++i) {
            std::string_view k, v;
            if (p_ == end_) return truncated(1, "a header name");
            if (!read_header_string(k, true, nullptr)) return false;
            if (p_ == end_) return truncated(1, "a header value");
            if (!read_header_string(v, false, &k)) return false;
            for (const auto& kv : out.headers)
                if (kv.first == k) return wrong(key::headers, at, "duplicate header " + quoted(k));
            out.headers.emplace_back(k, v);
        }
        return true;
    }

    // Skips one value of any type whose enclosing container is at nesting level
    // `depth`. Iterative, so hostile nesting cannot exhaust the stack.
    bool skip_value(int depth) {
        std::uint64_t stack[max_depth + 1];
        int sp = 0;
        std::uint64_t todo = 1; // values left in the innermost open container
        for (;;) {
            if (todo == 0) {
                if (sp == 0) return true;
                todo = stack[--sp];
                continue;
            }
            --todo;
            if (p_ == end_) return truncated(1, "a value");
            const byte b = *p_;
            std::size_t hdr = 1;      // bytes of the format header
            std::uint64_t skip = 0;   // payload bytes after it
            std::uint64_t items = 0;  // values inside, for containers
            bool container = false;
            if (b <= 0x7f || b >= 0xe0) {
            } else if (b <= 0x8f) {
                container = true;
                items = 2u * (b & 0x0f);
            } else if (b <= 0x9f) {
                container = true;
                items = b & 0x0f;
            } else if (b <= 0xbf) {
                skip = b & 0x1f;
            } else {
                switch (b) {
                case 0xc0: case 0xc2: case 0xc3: break;
                case 0xc1: return fatal("not MessagePack: reserved byte 0xc1 at byte " + std::to_string(offset()));
                case 0xcc: case 0xd0: skip = 1; break;
                case 0xcd: case 0xd1: skip = 2; break;
                case 0xca: case 0xce: case 0xd2: skip = 4; break;
                case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
                case 0xd4: skip = 2; break;
                case 0xd5: skip = 3; break;
                case 0xd6: skip = 5; break;
                case 0xd7: skip = 9; break;
                case 0xd8: skip = 17; break;
                case 0xc4: case 0xd9: case 0xc7: hdr = 2; break;
                case 0xc5: case 0xda: case 0xc8: case 0xdc: case 0xde: hdr = 3; break;
                default: hdr = 5; break; // c6 db c9 dd df
                }
                if (hdr > 1) {
                    if (left() < hdr) return truncated(hdr, "a length header");
                    const std::uint64_t len = hdr == 2 ? p_[1] : hdr == 3 ? load16(p_ + 1) : load32(p_ + 1);
                    switch (b) {
                    case 0xc7: case 0xc8: case 0xc9: skip = len + 1; break; // ext: type byte + data
                    case 0xdc: case 0xdd: container = true; items = len; break;
                    case 0xde: case 0xdf: container = true; items = 2 * len; break;
                    default: skip = len; break;
                    }
                }
            }
            if (left() < hdr + skip) return truncated(static_cast<std::size_t>(hdr + skip), format_name(b).data());
            p_ += hdr + skip;
            if (container) {
                if (depth + 1 + sp > max_depth)
                    return fatal("nesting deeper than " + std::to_string(max_depth) + " levels at byte " +
                                 std::to_string(offset() - hdr));
                if (items > left()) // every value takes at least one byte
                    return fatal("truncated at byte " + std::to_string(offset() - hdr) + ": a container declares " +
                                 std::to_string(items) + " values, " + std::to_string(left()) + " bytes left");
                stack[sp++] = todo;
                todo = items;
            }
        }
    }

    // One key/value pair of the envelope map.
    bool read_entry(envelope_view& out, std::uint64_t& version) {
        if (p_ == end_) return truncated(1, "a map key");
        unsigned k;
        const byte kb = *p_;
        if (kb <= last_key) {
            k = kb;
            ++p_;
        } else {
            // Any other key: an integer in a wider form may still be a known key;
            // everything else is unknown and skipped with its value.
            std::uint64_t mag;
            bool negative;
            const int r = read_int(mag, negative);
            if (r < 0) return false;
            if (r == 1 && !negative && mag <= last_key) {
                k = static_cast<unsigned>(mag);
            } else {
                if (r == 0 && !skip_value(1)) return false; // a non-integer key (str, ...)
                return skip_value(1);                       // the unknown key's value
            }
        }
        if (p_ == end_) return fatal("truncated at byte " + std::to_string(offset()) + ": no value for " + where(k));
        const byte* at = p_;
        bool ok;
        if (seen_ & (1u << k)) {
            ok = wrong(k, at, "duplicate key");
        } else {
            seen_ |= 1u << k;
            std::uint64_t v;
            switch (k) {
            case key::version:
                ok = read_uint(k, version);
                have_version_ = ok;
                if (ok)
                    out.version = version > std::numeric_limits<std::uint32_t>::max()
                                      ? std::numeric_limits<std::uint32_t>::max()
                                      : static_cast<std::uint32_t>(version);
                break;
            case key::kind:
                ok = read_uint(k, v);
                if (ok && v > 2)
                    ok = wrong(k, at, std::to_string(v) + " is not a kind (0 request, 1 reply, 2 event)");
                else if (ok)
                    out.kind = static_cast<plexus::kind>(v);
                break;
            case key::id: ok = read_uint(k, out.id); break;
            case key::service: ok = read_bytes(k, out.service, true, false, "a str"); break;
            case key::method: ok = read_bytes(k, out.method, true, false, "a str"); break;
            case key::topic: ok = read_bytes(k, out.topic, true, false, "a str"); break;
            case key::headers: ok = read_headers(out); break;
            case key::deadline:
                ok = read_uint(k, v);
                if (ok) out.deadline_us = v;
                break;
            case key::status:
                ok = read_uint(k, v);
                if (ok) out.status = code_from_wire(v);
                break;
            case key::error: ok = read_bytes(k, out.error, true, false, "a str"); break;
            case key::body: ok = read_bytes(k, out.body, true, true, "a bin (or str)"); break;
            case key::seq: ok = read_uint(k, out.seq); break;
            default: ok = read_bytes(k, out.source, true, true, "a bin (or str)"); break;
            }
        }
        if (ok) return true;
        if (fatal_) return false;
        p_ = at; // semantic failure: remembered in err_, skip the value and go on
        return skip_value(1);
    }
};

// ---------------------------------------------------------------- writer

inline std::size_t uint_size(std::uint64_t v) noexcept {
    return v < 0x80 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9;
}
inline std::size_t str_size(std::size_t n) noexcept {
    return n < 32 ? 1 + n : n <= 0xff ? 2 + n : n <= 0xffff ? 3 + n : 5 + n;
}
inline std::size_t bin_size(std::size_t n) noexcept {
    return n <= 0xff ? 2 + n : n <= 0xffff ? 3 + n : 5 + n;
}
inline std::size_t map_size(std::size_t n) noexcept {
    return n < 16 ? 1 : n <= 0xffff ? 3 : 5;
}

inline byte* put16(byte* w, std::uint16_t v) noexcept {
    w[0] = static_cast<byte>(v >> 8);
    w[1] = static_cast<byte>(v);
    return w + 2;
}
inline byte* put32(byte* w, std::uint32_t v) noexcept {
    v = __builtin_bswap32(v);
    std::memcpy(w, &v, 4);
    return w + 4;
}
inline byte* put64(byte* w, std::uint64_t v) noexcept {
    v = __builtin_bswap64(v);
    std::memcpy(w, &v, 8);
    return w + 8;
}

inline byte* put_uint(byte* w, std::uint64_t v) noexcept {
    if (v < 0x80) {
        *w = static_cast<byte>(v);
        return w + 1;
    }
    if (v <= 0xff) {
        w[0] = 0xcc;
        w[1] = static_cast<byte>(v);
        return w + 2;
    }
    if (v <= 0xffff) {
        *w = 0xcd;
        return put16(w + 1, static_cast<std::uint16_t>(v));
    }
    if (v <= 0xffffffff) {
        *w = 0xce;
        return put32(w + 1, static_cast<std::uint32_t>(v));
    }
    *w = 0xcf;
    return put64(w + 1, v);
}

// Envelope strings are mostly short: a libc memcpy call per string costs more than
// the copy. Short copies are done as two overlapping fixed-size moves.
inline byte* put_raw(byte* w, std::string_view s) noexcept {
    const std::size_t n = s.size();
    const char* src = s.data();
    if (n >= 16) {
        if (n <= 32) {
            std::memcpy(w, src, 16);
            std::memcpy(w + n - 16, src + n - 16, 16);
        } else {
            std::memcpy(w, src, n);
        }
    } else if (n >= 8) {
        std::memcpy(w, src, 8);
        std::memcpy(w + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        std::memcpy(w, src, 4);
        std::memcpy(w + n - 4, src + n - 4, 4);
    } else if (n > 0) {
        w[0] = static_cast<byte>(src[0]);
        w[n / 2] = static_cast<byte>(src[n / 2]);
        w[n - 1] = static_cast<byte>(src[n - 1]);
    }
    return w + n;
}

inline byte* put_str(byte* w, std::string_view s) noexcept {
    const std::size_t n = s.size();
    if (n < 32) {
        *w++ = static_cast<byte>(0xa0 | n);
    } else if (n <= 0xff) {
        *w++ = 0xd9;
        *w++ = static_cast<byte>(n);
    } else if (n <= 0xffff) {
        *w++ = 0xda;
        w = put16(w, static_cast<std::uint16_t>(n));
    } else {
        *w++ = 0xdb;
        w = put32(w, static_cast<std::uint32_t>(n));
    }
    return put_raw(w, s);
}

inline byte* put_bin(byte* w, std::string_view s) noexcept {
    const std::size_t n = s.size();
    if (n <= 0xff) {
        *w++ = 0xc4;
        *w++ = static_cast<byte>(n);
    } else if (n <= 0xffff) {
        *w++ = 0xc5;
        w = put16(w, static_cast<std::uint16_t>(n));
    } else {
        *w++ = 0xc6;
        w = put32(w, static_cast<std::uint32_t>(n));
    }
    return put_raw(w, s);
}

inline byte* put_map(byte* w, std::size_t n) noexcept {
    if (n < 16) {
        *w = static_cast<byte>(0x80 | n);
        return w + 1;
    }
    if (n <= 0xffff) {
        *w = 0xde;
        return put16(w + 1, static_cast<std::uint16_t>(n));
    }
    *w = 0xdf;
    return put32(w + 1, static_cast<std::uint32_t>(n));
}

[[noreturn, gnu::cold]] void refuse(const std::string& msg) {
    throw plexus::error(code::invalid_argument, "cannot encode envelope: " + msg);
}

inline void check_length(std::string_view s, const char* what) {
    if (s.size() > 0xffffffffu) refuse(std::string(what) + " longer than 4 GiB - 1");
}

// `place(size)` returns where to write exactly `size` bytes.
template <class E, class Place>
void encode_impl(const E& e, Place&& place) {
    const auto k = static_cast<unsigned>(e.kind);
    if (k > 2) refuse("kind " + std::to_string(k) + " is not 0 (request), 1 (reply) or 2 (event)");
    const bool request = e.kind == kind::request;
    const bool event = e.kind == kind::event;
    const bool w_service = request || !e.service.empty();
    const bool w_method = request || !e.method.empty();
    const bool w_topic = event || !e.topic.empty();
    const bool w_status = e.status != code::ok;
    const auto status_value = static_cast<std::uint64_t>(e.status);

    std::size_t nh = 0, hbytes = 0;
    for (auto it = e.headers.begin(); it != e.headers.end(); ++it, ++nh) {
        const std::string_view hk = it->first, hv = it->second;
        check_length(hk, "a header name");
        check_length(hv, "a header value");
        hbytes += str_size(hk.size()) + str_size(hv.size());
        for (auto jt = e.headers.begin(); jt != it; ++jt)
            if (std::string_view(jt->first) == hk) refuse("duplicate header " + quoted(hk));
    }
    if (nh > max_headers) refuse(std::to_string(nh) + " headers, at most " + std::to_string(max_headers) + " are allowed");

    // Keys 0..12 are one-byte positive fixints: count one byte per key.
    std::size_t keys = 3;
    std::size_t size = 3 + uint_size(e.version) + uint_size(k) + uint_size(e.id);
    if (w_service) { check_length(e.service, "service"); ++keys; size += 1 + str_size(e.service.size()); }
    if (w_method) { check_length(e.method, "method"); ++keys; size += 1 + str_size(e.method.size()); }
    if (w_topic) { check_length(e.topic, "topic"); ++keys; size += 1 + str_size(e.topic.size()); }
    if (nh) { ++keys; size += 1 + map_size(nh) + hbytes; }
    if (e.deadline_us) { ++keys; size += 1 + uint_size(*e.deadline_us); }
    if (w_status) { ++keys; size += 1 + uint_size(status_value); }
    if (!e.error.empty()) { check_length(e.error, "error"); ++keys; size += 1 + str_size(e.error.size()); }
    if (!e.body.empty()) { check_length(e.body, "body"); ++keys; size += 1 + bin_size(e.body.size()); }
    if (e.seq) { ++keys; size += 1 + uint_size(e.seq); }
    if (!e.source.empty()) { check_length(e.source, "source"); ++keys; size += 1 + bin_size(e.source.size()); }
    size += map_size(keys);

    byte* w = reinterpret_cast<byte*>(place(size));
    w = put_map(w, keys);
    *w++ = key::version;
    w = put_uint(w, e.version);
    *w++ = key::kind;
    *w++ = static_cast<byte>(k);
    *w++ = key::id;
    w = put_uint(w, e.id);
    if (w_service) { *w++ = key::service; w = put_str(w, e.service); }
    if (w_method) { *w++ = key::method; w = put_str(w, e.method); }
    if (w_topic) { *w++ = key::topic; w = put_str(w, e.topic); }
    if (nh) {
        *w++ = key::headers;
        w = put_map(w, nh);
        for (const auto& kv : e.headers) {
            w = put_str(w, kv.first);
            w = put_str(w, kv.second);
        }
    }
    if (e.deadline_us) { *w++ = key::deadline; w = put_uint(w, *e.deadline_us); }
    if (w_status) { *w++ = key::status; w = put_uint(w, status_value); }
    if (!e.error.empty()) { *w++ = key::error; w = put_str(w, e.error); }
    if (!e.body.empty()) { *w++ = key::body; w = put_bin(w, e.body); }
    if (e.seq) { *w++ = key::seq; w = put_uint(w, e.seq); }
    if (!e.source.empty()) { *w++ = key::source; w = put_bin(w, e.source); }
    (void)w; // w == the place's end: the size above is exact
}

template <class E>
void append_to(const E& e, std::string& out) {
    encode_impl(e, [&](std::size_t size) {
        const std::size_t start = out.size();
        out.resize(start + size);
        return out.data() + start;
    });
}

} // namespace

void encode_into(const envelope_view& e, char* (*place)(void*, std::size_t), void* arg) {
    encode_impl(e, [&](std::size_t size) { return place(arg, size); });
}

} // namespace detail

void encode(const envelope& e, std::string& out) { detail::append_to(e, out); }
void encode(const envelope_view& e, std::string& out) { detail::append_to(e, out); }

std::string encode(const envelope& e) {
    std::string out;
    detail::append_to(e, out);
    return out;
}

status decode(std::string_view bytes, envelope_view& out) noexcept {
    out.clear();
    detail::reader r(bytes);
    return r.run(out);
}

status decode(std::string_view bytes, envelope& out) {
    thread_local envelope_view v;
    status st = decode(bytes, v);
    if (st.ok()) {
        out = v.to_owned();
    } else {
        out = envelope{};
        out.version = v.version;
        out.id = v.id;
        out.kind = v.kind;
    }
    v.clear(); // no views into the caller's buffer outlive the call
    return st;
}

envelope decode(std::string_view bytes) {
    envelope e;
    status st = decode(bytes, e);
    if (!st.ok()) throw plexus::error(st);
    return e;
}

} // namespace plexus
