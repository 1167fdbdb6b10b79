#include <plexus/context.hpp>

namespace plexus {
namespace {
thread_local context* current_context = nullptr;
}

context* context::current() noexcept { return current_context; }

context_scope::context_scope(context& ctx) noexcept : previous_(current_context) { current_context = &ctx; }
context_scope::~context_scope() { current_context = previous_; }

} // namespace plexus
