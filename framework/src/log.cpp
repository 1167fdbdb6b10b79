#include <chrono>
#include <cstdio>
#include <ctime>

#include <plexus/context.hpp>

#include "detail/util.hpp"

namespace plexus::detail {

std::string_view level_name(log_level l) noexcept {
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

std::string kv(std::string_view key, std::string_view value) {
    std::string out;
    out.reserve(key.size() + value.size() + 4);
    out += ' ';
    out += key;
    out += '=';
    bool quote = value.empty();
    for (char c : value)
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) quote = true;
    if (!quote) {
        out += value;
        return out;
    }
    out += '"';
    for (char c : value) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
            out += buf;
        } else {
            out += c;
        }
    }
    out += '"';
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
    using namespace std::chrono;
    auto now = system_clock::now();
    auto t = system_clock::to_time_t(now);
    auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char ts[64];
    std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    std::string line = "ts=";
    line += ts;
    line += kv("level", level_name(l));
    line += kv("node", node_);
    if (auto* c = context::current()) {
        if (auto t = c->trace_id(); !t.empty()) {
            line += kv("trace_id", t);
            line += kv("span_id", c->span_id());
        }
    }
    line += kv("msg", msg);
    line += kvs;
    if (sink_) {
        sink_(l, line);
    } else {
        line += '\n';
        std::fwrite(line.data(), 1, line.size(), stderr);
    }
}

} // namespace plexus::detail
