#include "logfmt.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace plexus::nodes {

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

bool parse_level(std::string_view s, log_level& out) noexcept {
    std::string lower;
    for (char c : s) lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    if (lower == "warning") lower = "warn";
    for (auto l : {log_level::trace, log_level::debug, log_level::info, log_level::warn, log_level::error, log_level::off})
        if (lower == level_name(l)) {
            out = l;
            return true;
        }
    return false;
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

void append_field(std::string& line, std::string_view key, std::string_view value, bool always_quote) {
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

void logger::log(log_level l, std::string_view msg, std::initializer_list<log_field> fields) {
    if (!enabled(l)) return;
    std::string line;
    append_field(line, "ts", utc_timestamp());
    append_field(line, "level", level_name(l));
    append_field(line, "node", node_);
    append_field(line, "msg", msg);
    for (const auto& [k, v] : fields) append_field(line, k, v);
    write(line);
}

std::function<void(log_level, std::string_view)> logger::sink() {
    return [this](log_level l, std::string_view text) {
        if (text.substr(0, 3) == "ts=") {
            write(text);
            return;
        }
        std::string line;
        append_field(line, "ts", utc_timestamp());
        append_field(line, "level", level_name(l));
        append_field(line, "node", node_);
        line += ' ';
        line += text;
        write(line);
    };
}

void logger::write(std::string_view line) {
    std::string out(line);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    out += '\n';
    std::lock_guard lock(mutex_);
    std::fwrite(out.data(), 1, out.size(), stderr);
    std::fflush(stderr);
}

} // namespace plexus::nodes
