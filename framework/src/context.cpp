#include <plexus/context.hpp>

#include "detail/trace.hpp"

namespace plexus {
namespace {
thread_local context* current_context = nullptr;
}

context* context::current() noexcept { return current_context; }

context_scope::context_scope(context& ctx) noexcept : previous_(current_context) { current_context = &ctx; }
context_scope::~context_scope() { current_context = previous_; }

} // namespace plexus

namespace plexus::detail {
bool valid_traceparent(std::string_view tp) noexcept {
    if (tp.size() < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return false;
    if (tp[0] == 'f' && tp[1] == 'f') return false;                  // version ff is invalid
    if (tp.size() > 55 && (tp.substr(0, 2) == "00" || tp[55] != '-')) return false;
    bool trace_nonzero = false, span_nonzero = false;
    for (std::size_t i = 0; i < 55; ++i) {
        if (i == 2 || i == 35 || i == 52) continue;
        const char c = tp[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
        if (c != '0') {
            if (i > 2 && i < 35) trace_nonzero = true;
            if (i > 35 && i < 52) span_nonzero = true;
        }
    }
    return trace_nonzero && span_nonzero;
}
} // namespace plexus::detail

namespace plexus {
using detail::valid_traceparent;

std::string_view context::trace_id() const noexcept {
    auto tp = headers.get(header_key::traceparent);
    if (!tp || !valid_traceparent(*tp)) return {};
    return tp->substr(3, 32);
}

std::string_view context::span_id() const noexcept {
    auto tp = headers.get(header_key::traceparent);
    if (!tp || !valid_traceparent(*tp)) return {};
    return tp->substr(36, 16);
}
} // namespace plexus
