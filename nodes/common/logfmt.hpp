// Structured log lines for plexus-node and plexus: one logfmt line per event on
// stderr, e.g.
//   ts=2026-11-23T12:00:00.123Z level=info node=a msg="started" rpc=tcp://127.0.0.1:40001
// The framework's own lines go through the same writer (node_options::log_sink), so
// a process writes one format, one whole line at a time, from any thread.
#pragma once

#include <functional>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include <plexus/node.hpp>

namespace plexus::nodes {

// Levels, field quoting and timestamps come from <plexus/log.hpp>; this is the
// process-wide writer around them.

using log_field = std::pair<std::string_view, std::string_view>;

class logger {
public:
    logger(std::string node, log_level min) : node_(std::move(node)), min_(min) {}

    [[nodiscard]] bool enabled(log_level l) const noexcept { return min_ != log_level::off && l >= min_ && l != log_level::off; }
    void log(log_level l, std::string_view msg, std::initializer_list<log_field> fields = {});
    void info(std::string_view msg, std::initializer_list<log_field> fields = {}) { log(log_level::info, msg, fields); }
    void warn(std::string_view msg, std::initializer_list<log_field> fields = {}) { log(log_level::warn, msg, fields); }
    void error(std::string_view msg, std::initializer_list<log_field> fields = {}) { log(log_level::error, msg, fields); }

    // For node_options::log_sink. A line that already starts with "ts=" is written as
    // is; otherwise ts, level and node are put in front of it.
    [[nodiscard]] std::function<void(log_level, std::string_view)> sink();

private:
    // "ts=... level=... node=...": what every line starts with.
    [[nodiscard]] std::string head(log_level l) const;
    void write(std::string_view line);

    std::string node_;
    log_level min_;
    std::mutex mutex_;
};

} // namespace plexus::nodes
