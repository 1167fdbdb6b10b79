// drone-management: the fleet. assign picks an idle drone for a delivery and starts
// its flight; while it flies, the drone's position, battery and status go out as
// events on drone.<drone>.{position,battery,status} a few times a second, ending with
// status "delivered". recall aborts a flight (a cancelled delivery).
//
// assign is idempotent per delivery: asked again (a delivery taken over by another
// delivery instance) it answers with the flight as it is, so the new owner follows a
// flight in progress or learns it has landed.
//
// Context: the flights are flown by a thread of our own, outside any handler. So that
// the drone events carry the context of the delivery they belong to (its user-id, its
// trace), each flight keeps a copy of the assign request's context and the thread
// makes it current (plexus::context_scope) while publishing that flight's events. This
// is the one place in the demo with code for the context: a thread we start ourselves.
#include <plexus/node.hpp>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

using namespace std::chrono_literals;

struct drone {
    std::string id;
    double battery = 100;
    std::string delivery; // empty: idle
};

struct flight {
    std::string delivery_id;
    std::string drone;
    std::chrono::steady_clock::time_point start;
    std::chrono::milliseconds duration{};
    std::string state = "in-flight"; // "in-flight", "delivered", "recalled"
    bool announced_en_route = false;
    plexus::context ctx;              // the assign request's, without its deadline
    std::string call_chain;
};

class fleet {
public:
    fleet(plexus::node& node, int drones, double ms_per_km, std::chrono::milliseconds tick)
        : node_(node), ms_per_km_(ms_per_km), tick_(tick) {
        for (int i = 1; i <= drones; ++i) drones_.push_back({"drone-" + std::to_string(i), 100, {}});
    }

    demo::assignment assign(const demo::assign_request& r) {
        demo::log_request(node_, "drone-management", "assign", {{"delivery", r.delivery_id}});
        if (r.delivery_id.empty()) throw plexus::error(plexus::code::invalid_argument, "delivery_id is empty");
        auto* ctx = plexus::context::current();
        const std::string chain(ctx->headers.get_or(plexus::header_key::call_chain, ""));
        std::lock_guard lk(mu_);
        if (auto it = flights_.find(r.delivery_id); it != flights_.end())
            return {r.delivery_id, it->second.drone, it->second.state,
                    static_cast<std::uint32_t>(it->second.duration.count()), chain};

        drone* pick = nullptr;
        for (auto& d : drones_)
            if (d.delivery.empty() && (!pick || d.battery > pick->battery)) pick = &d;
        if (!pick) throw plexus::error(plexus::code::resource_exhausted, "no drone available, all are flying");
        pick->delivery = r.delivery_id;

        flight f;
        f.delivery_id = r.delivery_id;
        f.drone = pick->id;
        f.start = std::chrono::steady_clock::now();
        const double ms = std::clamp(r.distance_km * ms_per_km_, 600.0, 8000.0);
        f.duration = std::chrono::milliseconds(static_cast<long>(ms));
        f.ctx = *ctx;
        f.ctx.deadline.reset(); // the flight outlives the request
        f.call_chain = chain;
        // In the handler: this event carries the request's context with no code for it.
        node_.publish(topic(f.drone, "status"), demo::drone_status{f.drone, f.delivery_id, "taking-off"});
        auto [it, _] = flights_.emplace(r.delivery_id, std::move(f));
        return {r.delivery_id, it->second.drone, it->second.state,
                static_cast<std::uint32_t>(it->second.duration.count()), chain};
    }

    demo::assignment recall(const demo::delivery_ref& r) {
        demo::log_request(node_, "drone-management", "recall", {{"delivery", r.delivery_id}});
        std::lock_guard lk(mu_);
        auto it = flights_.find(r.delivery_id);
        if (it == flights_.end()) throw plexus::error(plexus::code::not_found, "no flight for " + r.delivery_id);
        auto& f = it->second;
        if (f.state == "delivered")
            throw plexus::error(plexus::code::failed_precondition, r.delivery_id + " was already delivered");
        if (f.state == "in-flight") {
            f.state = "recalled";
            land(f);
            node_.publish(topic(f.drone, "status"), demo::drone_status{f.drone, f.delivery_id, "recalled"});
        }
        return {r.delivery_id, f.drone, f.state, static_cast<std::uint32_t>(f.duration.count()),
                std::string(plexus::context::current()->headers.get_or(plexus::header_key::call_chain, ""))};
    }

    // The flight controller: every tick, each flight in progress reports its
    // position, battery and status; and the fleet's summary goes out on drone.fleet.
    void fly(std::stop_token st) {
        std::unique_lock lk(mu_);
        while (!st.stop_requested()) {
            const auto now = std::chrono::steady_clock::now();
            for (auto& [id, f] : flights_) {
                if (f.state != "in-flight") continue;
                plexus::context_scope scope(f.ctx);
                const double progress =
                    std::min(1.0, std::chrono::duration<double>(now - f.start) / std::chrono::duration<double>(f.duration));
                auto* d = find_drone(f.drone);
                d->battery = std::max(5.0, d->battery - 1.5);
                if (!f.announced_en_route) {
                    node_.publish(topic(f.drone, "status"), demo::drone_status{f.drone, id, "en-route"});
                    f.announced_en_route = true;
                }
                // A straight line north-east of the depot, at 60 m.
                node_.publish(topic(f.drone, "position"),
                              demo::drone_position{f.drone, id, 47.3769 + 0.02 * progress, 8.5417 + 0.03 * progress,
                                                   progress < 1 ? 60.0 : 0.0, progress});
                node_.publish(topic(f.drone, "battery"), demo::drone_battery{f.drone, id, d->battery});
                if (progress >= 1) {
                    f.state = "delivered";
                    land(f);
                    node_.publish(topic(f.drone, "status"), demo::drone_status{f.drone, id, "delivered"});
                }
            }
            demo::fleet_status fs;
            for (auto& d : drones_) fs.drones.push_back({d.id, d.delivery.empty() ? "idle" : "flying", d.battery});
            node_.publish(demo::fleet_topic, fs);
            tick_cv_.wait_for(lk, st, tick_, [] { return false; }); // a tick, or stop
        }
    }

private:
    static std::string topic(const std::string& drone, const char* what) { return "drone." + drone + "." + what; }

    drone* find_drone(const std::string& id) {
        for (auto& d : drones_)
            if (d.id == id) return &d;
        return nullptr;
    }

    // The drone is back at the depot at once, recharged (it is a demo).
    void land(flight& f) {
        if (auto* d = find_drone(f.drone)) {
            d->delivery.clear();
            d->battery = 100;
        }
    }

    plexus::node& node_;
    const double ms_per_km_;
    const std::chrono::milliseconds tick_;
    std::mutex mu_;
    std::condition_variable_any tick_cv_;
    std::vector<drone> drones_;
    std::map<std::string, flight> flights_;
};

} // namespace

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "drone-management",
        "drone-management: drone-management.assign {delivery_id, distance_km}, drone-management.recall {delivery_id};\n"
        "publishes drone.<drone>.{position,battery,status} while drones fly and drone.fleet every tick",
        {{"drones", "4", "drones in the fleet"},
         {"ms-per-km", "250", "flight time per km (a flight lasts 0.6-8 s)"},
         {"tick-ms", "200", "interval of drone events"}},
        [](const demo::options& o) {
            auto state = std::make_shared<std::unique_ptr<fleet>>();
            auto flyer = std::make_shared<std::jthread>();
            const int drones = static_cast<int>(o.get_long("drones"));
            const double ms_per_km = o.get_double("ms-per-km");
            const auto tick = std::chrono::milliseconds(o.get_long("tick-ms"));
            if (drones < 1 || tick.count() < 10) throw std::invalid_argument("--drones >= 1 and --tick-ms >= 10");
            demo::service_hooks h;
            h.setup = [=](plexus::node& node) {
                *state = std::make_unique<fleet>(node, drones, ms_per_km, tick);
                auto* f = state->get();
                node.declare_topic<demo::drone_position>("drone.<drone>.position", "where a flying drone is");
                node.declare_topic<demo::drone_battery>("drone.<drone>.battery", "battery of a flying drone");
                node.declare_topic<demo::drone_status>("drone.<drone>.status", "taking-off, en-route, delivered, recalled");
                node.declare_topic<demo::fleet_status>(std::string(demo::fleet_topic), "the fleet at a glance, every tick");
                node.serve("drone-management")
                    .doc("the drone fleet")
                    .version("1.0")
                    .method("assign", [f](const demo::assign_request& r) { return f->assign(r); },
                            {.doc = "assign a drone to a delivery and fly it"})
                    .method("recall", [f](const demo::delivery_ref& r) { return f->recall(r); },
                            {.doc = "abort the flight of a delivery"});
            };
            h.started = [=](plexus::node&) {
                *flyer = std::jthread([f = state->get()](std::stop_token st) { f->fly(st); });
            };
            h.stopping = [=] {
                flyer->request_stop();
                if (flyer->joinable()) flyer->join();
            };
            return h;
        });
}
