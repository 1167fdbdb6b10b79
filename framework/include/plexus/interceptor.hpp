// Interceptors ("middleware"): code that runs before and after every call a node
// handles or makes, and around every event it publishes or delivers.
//
//   struct require_auth : plexus::interceptor {
//       plexus::status before_handle(plexus::call_info& c) override {
//           if (!c.headers.contains("authorization"))
//               return {plexus::code::unauthenticated, "authorization header required"};
//           return {};
//       }
//   };
//   opts.interceptors.push_back(std::make_shared<require_auth>());
//
// Order: the node's built-ins first (header policy, tracing, metrics, logging), then
// node_options::interceptors in the order given. "before" hooks run in that order and
// stop at the first non-ok status (the call is rejected with it: a handler does not
// run, a call is not sent, an event is not published or delivered); "after" hooks run
// in reverse order, for the interceptors whose "before" hook ran.
//
// Hooks run on whatever thread handles the call (the I/O thread for inline handlers,
// a worker otherwise, the caller's thread for calls), concurrently: an interceptor must
// be thread-safe. They must not block on the I/O thread.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

#include <plexus/context.hpp>
#include <plexus/error.hpp>
#include <plexus/headers.hpp>

namespace plexus {

struct call_info {
    std::string_view service;
    std::string_view method;
    // Server side: the handler's context headers (what it sees and what travels on).
    // Client side: the headers about to be sent with this call only.
    plexus::headers& headers;
    std::optional<clock::time_point> deadline;
    // Client side: the endpoint the call goes to.
    std::string_view endpoint;
    // Server side: the handler's context (its headers are `headers`); nullptr on the client side.
    plexus::context* context = nullptr;
};

struct event_info {
    std::string_view topic;
    plexus::headers& headers; // publish: about to be sent; deliver: what the handler sees
    // Deliver side: the handler's context; nullptr on the publish side.
    plexus::context* context = nullptr;
};

class interceptor {
public:
    virtual ~interceptor() = default;

    // Server side, before the handler.
    virtual status before_handle(call_info&) { return {}; }
    virtual void after_handle(const call_info&, const status&, std::chrono::nanoseconds) {}

    // Client side, before the request is sent (and after name resolution).
    virtual status before_call(call_info&) { return {}; }
    virtual void after_call(const call_info&, const status&, std::chrono::nanoseconds) {}

    // Publisher side, before the event is queued.
    virtual status before_publish(event_info&) { return {}; }

    // Subscriber side, around the event handler.
    virtual status before_deliver(event_info&) { return {}; }
    virtual void after_deliver(const event_info&, const status&, std::chrono::nanoseconds) {}
};

} // namespace plexus
