// The context that travels: headers and deadline of the request (or event) being
// handled on this thread.
//
// While a handler runs, context::current() is the context built from the incoming
// envelope. Every call and publish made on that thread, and the callbacks of async
// calls started there, carry its headers on and inherit its deadline, with no code in
// the handler. A handler may change context::current()->headers to change what travels
// next. Outside any handler there is no current context: calls start empty, or from a
// context_scope the application opens itself.
#pragma once

#include <chrono>
#include <optional>

#include <plexus/headers.hpp>

namespace plexus {

using clock = std::chrono::steady_clock;

struct context {
    plexus::headers headers;
    std::optional<clock::time_point> deadline;

    // The context current on this thread, or nullptr.
    [[nodiscard]] static context* current() noexcept;

    // Remaining budget, or nullopt without a deadline (never negative).
    [[nodiscard]] std::optional<std::chrono::microseconds> remaining() const noexcept {
        if (!deadline) return std::nullopt;
        auto left = std::chrono::duration_cast<std::chrono::microseconds>(*deadline - clock::now());
        return left.count() > 0 ? left : std::chrono::microseconds{0};
    }
};

// Makes `ctx` current on this thread for the scope's lifetime; restores the previous
// one on exit. Scopes nest.
class context_scope {
public:
    explicit context_scope(context& ctx) noexcept;
    ~context_scope();
    context_scope(const context_scope&) = delete;
    context_scope& operator=(const context_scope&) = delete;

private:
    context* previous_;
};

} // namespace plexus
