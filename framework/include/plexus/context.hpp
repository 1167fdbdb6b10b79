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
#include <string>
#include <string_view>

#include <plexus/headers.hpp>

namespace plexus {

using clock = std::chrono::steady_clock;

// Conventional header keys (docs/PROTOCOL.md, "Context headers").
namespace header_key {
inline constexpr std::string_view user_id = "user-id";
inline constexpr std::string_view groups = "groups";               // comma-separated
inline constexpr std::string_view authorization = "authorization";
inline constexpr std::string_view traceparent = "traceparent";     // W3C Trace Context
inline constexpr std::string_view call_chain = "call-chain";       // comma-separated service.method hops
// Keys that start with this prefix are hop-by-hop: they reach the next hop only.
inline constexpr std::string_view hop_prefix = "hop-";
} // namespace header_key

struct context {
    plexus::headers headers;
    std::optional<clock::time_point> deadline;

    // Span id (16 hex digits) of the caller's span, when a traceparent came in; empty
    // otherwise.
    [[nodiscard]] std::string_view parent_span_id() const noexcept {
        return {parent_span_, parent_span_[0] ? sizeof parent_span_ : 0};
    }
    // Set by the tracing that opens this hop's span (16 characters; others clear it).
    void set_parent_span_id(std::string_view id) noexcept {
        if (id.size() != sizeof parent_span_) {
            parent_span_[0] = '\0';
            return;
        }
        for (std::size_t i = 0; i < sizeof parent_span_; ++i) parent_span_[i] = id[i];
    }

    // From the "traceparent" header ("00-<trace-id>-<span-id>-<flags>"): this hop's
    // trace id (32 hex digits) and span id (16); empty without a valid traceparent.
    [[nodiscard]] std::string_view trace_id() const noexcept;
    [[nodiscard]] std::string_view span_id() const noexcept;

    // The context current on this thread, or nullptr.
    [[nodiscard]] static context* current() noexcept;

    // Remaining budget, or nullopt without a deadline (never negative).
    [[nodiscard]] std::optional<std::chrono::microseconds> remaining() const noexcept {
        if (!deadline) return std::nullopt;
        auto left = std::chrono::duration_cast<std::chrono::microseconds>(*deadline - clock::now());
        return left.count() > 0 ? left : std::chrono::microseconds{0};
    }

private:
    char parent_span_[16]{}; // no allocation per hop
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
