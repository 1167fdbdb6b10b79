#include <plexus/log.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>

#include <plexus/context.hpp>

#include "detail/util.hpp"

namespace plexus {

std::string_view to_string(log_level l) noexcept {
    switch (l) {
    case log_level::trace: return "trace";
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
    case log_level::off: return "off";
    }
    return "info";
}

bool from_string(std::string_view s, log_level& out) noexcept {
    char lower[8] = {};
    if (s.size() >= sizeof lower) return false;
    for (std::size_t i = 0; i < s.size(); ++i) lower[i] = static_cast<char>(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
    std::string_view l(lower, s.size());
    if (l == "warning") l = "warn";
    for (auto level : {log_level::trace, log_level::debug, log_level::info, log_level::warn, log_level::error, log_level::off})
        if (l == to_string(level)) {
            out = level;
            return true;
        }
    return false;
}

void append_logfmt(std::string& line, std::string_view key, std::string_view value, bool always_quote) {
    bool quote = always_quote || value.empty();
    for (char c : value)
        if (c == ' ' || c == '=' || c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) quote = true;
    if (!line.empty()) line += ' ';
    line += key;
    line += '=';
    if (!quote) {
        line += value;
        return;
    }
    line += '"';
    for (char c : value) {
        switch (c) {
        case '"': line += "\\\""; break;
        case '\\': line += "\\\\"; break;
        case '\n': line += "\\n"; break;
        case '\r': line += "\\r"; break;
        case '\t': line += "\\t"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char esc[8];
                std::snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
                line += esc;
            } else {
                line += c;
            }
        }
    }
    line += '"';
}

std::string utc_timestamp() {
    using namespace std::chrono;
    const auto now = system_clock::now();
    const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
    const std::time_t t = system_clock::to_time_t(now);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

namespace detail {

std::string kv(std::string_view key, std::string_view value) {
    std::string out;
    append_logfmt(out, key, value);
    out.insert(out.begin(), ' '); // a field that follows others
    return out;
}

std::string kv(std::string_view key, std::uint64_t value) { return kv(key, std::to_string(value)); }

std::string hex(std::string_view bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

logger::logger(std::string node, log_level level, std::function<void(log_level, std::string_view)> sink)
    : node_(std::move(node)), level_(level), sink_(std::move(sink)) {}

void logger::write(log_level l, std::string_view msg, std::string_view kvs) const {
    if (!enabled(l)) return;
    std::string line;
    append_logfmt(line, "ts", utc_timestamp());
    append_logfmt(line, "level", to_string(l));
    append_logfmt(line, "node", node_);
    if (auto* c = context::current()) {
        if (auto t = c->trace_id(); !t.empty()) {
            append_logfmt(line, "trace_id", t);
            append_logfmt(line, "span_id", c->span_id());
        }
    }
    append_logfmt(line, "msg", msg);
    line += kvs;
    if (sink_) {
        sink_(l, line);
    } else {
        line += '\n';
        std::fwrite(line.data(), 1, line.size(), stderr);
    }
}

} // namespace detail
} // namespace plexus
