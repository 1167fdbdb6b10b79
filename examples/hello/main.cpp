// The smallest Plexus program: a service and a client in one process, talking over
// loopback TCP exactly as two processes would. Exits 0 when every step worked.
#include <plexus/node.hpp>

#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

struct greet_req { std::string name; MSGPACK_DEFINE_MAP(name) };
struct greet_rep { std::string text; MSGPACK_DEFINE_MAP(text) };

int main() try {
    plexus::node server({.name = "greeter"});                     // binds tcp://127.0.0.1:* (free ports)
    server.serve("greeter").method("hello", [](const greet_req& r) { return greet_rep{"hello, " + r.name}; },
                                   {.doc = "greets someone"});
    server.start();

    plexus::node client({.name = "client", .connect = server.endpoints()});
    client.start();

    auto sync = client.call<greet_rep>("greeter", "hello", greet_req{"sync world"}, {.timeout = 2s});
    std::printf("sync call:  %s\n", sync.text.c_str());

    plexus::call_future pending = client.call_async("greeter", "hello", plexus::pack(greet_req{"async world"}));
    std::printf("async call: %s\n", pending.get().as<greet_rep>().text.c_str());

    std::promise<greet_req> got;
    auto sub = client.subscribe("greeter.", [&got, once = std::make_shared<std::once_flag>()](const plexus::event& e) {
        std::call_once(*once, [&] { got.set_value(e.as<greet_req>()); });
    });
    // Events published before a subscription reaches the publisher are not delivered
    // (ZeroMQ's slow joiner), so publish until the first one arrives, within a bound.
    auto arrived = got.get_future();
    for (int i = 0; i < 100 && arrived.wait_for(20ms) != std::future_status::ready; ++i)
        server.publish("greeter.greeted", greet_req{"event world"});
    if (arrived.wait_for(0s) != std::future_status::ready) throw std::runtime_error("no event arrived within 2 s");
    std::printf("event:      greeter.greeted {name: %s}\n", arrived.get().name.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "hello: %s\n", e.what());
    return 1;
}
