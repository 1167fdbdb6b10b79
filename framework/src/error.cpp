#include <plexus/error.hpp>

#include <array>
#include <cctype>

namespace plexus {
namespace {
constexpr std::array<std::string_view, 18> names{
    "OK",        "CANCELLED",         "UNKNOWN",      "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",        "UNAVAILABLE",  "DATA_LOSS",          "UNAUTHENTICATED",   "UNSUPPORTED_VERSION",
};
} // namespace

std::string_view to_string(code c) noexcept {
    auto i = static_cast<std::size_t>(c);
    return i < names.size() ? names[i] : std::string_view("UNKNOWN");
}

bool from_string(std::string_view s, code& out) noexcept {
    for (std::size_t i = 0; i < names.size(); ++i) {
        const auto n = names[i];
        if (n.size() != s.size()) continue;
        bool same = true;
        for (std::size_t j = 0; j < n.size() && same; ++j) {
            char c = static_cast<char>(std::toupper(static_cast<unsigned char>(s[j])));
            if (c == '-') c = '_';
            same = c == n[j];
        }
        if (same) {
            out = static_cast<code>(i);
            return true;
        }
    }
    return false;
}

code code_from_wire(std::uint64_t v) noexcept {
    return v < names.size() ? static_cast<code>(v) : code::unknown;
}

error::error(plexus::code c, const std::string& message)
    : std::runtime_error(std::string(to_string(c)) + ": " + message), code_(c), message_(message) {}

} // namespace plexus
