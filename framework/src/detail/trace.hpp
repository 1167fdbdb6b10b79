// W3C Trace Context checks shared by context.cpp and the tracing interceptor.
#pragma once

#include <string_view>

namespace plexus::detail {

// "vv-<32 hex>-<16 hex>-ff" in lower-case hex, trace and span ids not all zero, version
// not "ff"; version 00 is exactly 55 characters, a later version may go on after a
// '-' (https://www.w3.org/TR/trace-context/#traceparent-header). No allocation.
bool valid_traceparent(std::string_view tp) noexcept;

} // namespace plexus::detail
