#include "logfmt.hpp"

#include <cstdio>

namespace plexus::nodes {

std::string logger::head(log_level l) const {
    std::string line;
    append_logfmt(line, "ts", utc_timestamp());
    append_logfmt(line, "level", to_string(l));
    append_logfmt(line, "node", node_);
    return line;
}

void logger::log(log_level l, std::string_view msg, std::initializer_list<log_field> fields) {
    if (!enabled(l)) return;
    std::string line = head(l);
    append_logfmt(line, "msg", msg);
    for (const auto& [k, v] : fields) append_logfmt(line, k, v);
    write(line);
}

std::function<void(log_level, std::string_view)> logger::sink() {
    return [this](log_level l, std::string_view text) {
        if (text.substr(0, 3) == "ts=") {
            write(text);
            return;
        }
        std::string line = head(l);
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
