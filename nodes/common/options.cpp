#include "options.hpp"

#include <algorithm>

namespace plexus::nodes {

namespace po = boost::program_options;

std::string env_name(std::string_view option) {
    std::string out = "PLEXUS_";
    for (char c : option) out += c == '-' ? '_' : static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    return out;
}

std::function<std::string(std::string)> env_name_mapper(const po::options_description& desc, std::vector<std::string> skip) {
    std::vector<std::pair<std::string, std::string>> table;
    for (const auto& opt : desc.options()) {
        const std::string& name = opt->long_name();
        if (name.empty() || std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
        table.emplace_back(env_name(name), name);
    }
    return [table = std::move(table)](std::string var) -> std::string {
        for (const auto& [env, name] : table)
            if (env == var) return name;
        return {};
    };
}

std::vector<std::string> split_list(const std::vector<std::string>& in) {
    std::vector<std::string> out;
    for (const auto& item : in) {
        std::size_t start = 0;
        while (start <= item.size()) {
            std::size_t end = item.find(',', start);
            if (end == std::string::npos) end = item.size();
            std::string piece = item.substr(start, end - start);
            const auto first = piece.find_first_not_of(" \t");
            const auto last = piece.find_last_not_of(" \t");
            if (first != std::string::npos) out.push_back(piece.substr(first, last - first + 1));
            start = end + 1;
        }
    }
    return out;
}

bool is_endpoint(std::string_view s) noexcept {
    for (std::string_view scheme : {"tcp://", "ipc://", "inproc://"})
        if (s.substr(0, scheme.size()) == scheme) return true;
    return false;
}

} // namespace plexus::nodes
