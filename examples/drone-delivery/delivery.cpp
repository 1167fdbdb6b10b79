// delivery: owns the state of deliveries (in memory) and turns drone events into
// delivery events, a different business entity: a drone reports where it is and how
// much battery it has left; a delivery is Created, Rescheduled, InTransit,
// DeliveryComplete or Cancelled, on topic delivery.<delivery-id>.
//
// Several instances run side by side (the demo runs two). A delivery belongs to the
// instance that created it (delivery.create arrives by name at any live instance);
// every instance hears every drone event and acts only on those of deliveries it owns.
// When an instance dies, its deliveries are handed over by scheduler.reschedule, which
// calls delivery.create again with reschedule=true: the new owner publishes
// Rescheduled and follows the flight from where it is.
#include <plexus/node.hpp>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

using namespace std::chrono_literals;

struct owned {
    demo::create_delivery request;
    std::string state;
    std::string drone;
    std::string assign_chain;
};

class instance {
public:
    instance(plexus::node& node, std::string name) : node_(node), name_(std::move(name)) {}

    demo::delivery_info create(const demo::create_delivery& r) {
        demo::log_request(node_, "delivery", "create",
                          {{"delivery", r.delivery_id}, {"reschedule", r.reschedule ? "true" : "false"}});
        if (r.delivery_id.empty()) throw plexus::error(plexus::code::invalid_argument, "delivery_id is empty");
        {
            std::lock_guard lk(mu_);
            if (auto it = deliveries_.find(r.delivery_id); it != deliveries_.end()) return info_of(it->second);
            auto& d = deliveries_[r.delivery_id];
            d.request = r;
            d.state = r.reschedule ? demo::state::rescheduled : demo::state::created;
            emit(d, r.reschedule ? "taken over by " + name_ : "package " + r.package_id + " to " + r.dropoff);
        }
        auto rep = node_.call_raw("drone-management", "assign",
                                  plexus::pack(demo::assign_request{r.delivery_id, r.distance_km}),
                                  {.timeout = demo::nested_call_timeout});
        std::lock_guard lk(mu_);
        auto& d = deliveries_[r.delivery_id];
        if (!rep.ok()) {
            set_state(d, demo::state::cancelled, "no drone assigned: " + rep.status.message);
            throw plexus::error(rep.status.code, "no drone assigned: " + rep.status.message);
        }
        auto a = rep.as<demo::assignment>();
        d.drone = a.drone;
        d.assign_chain = a.call_chain;
        // A takeover: the flight may have ended while the delivery had no owner.
        if (a.flight == "delivered") set_state(d, demo::state::complete, "landed while the delivery had no owner");
        if (a.flight == "recalled") set_state(d, demo::state::cancelled, "recalled while the delivery had no owner");
        return info_of(d);
    }

    demo::delivery_info get(const demo::delivery_ref& r) {
        demo::log_request(node_, "delivery", "get", {{"delivery", r.delivery_id}});
        std::lock_guard lk(mu_);
        return info_of(find(r.delivery_id));
    }

    demo::delivery_info cancel(const demo::delivery_ref& r) {
        demo::log_request(node_, "delivery", "cancel", {{"delivery", r.delivery_id}});
        {
            std::lock_guard lk(mu_);
            auto& d = find(r.delivery_id);
            if (demo::is_final(d.state))
                throw plexus::error(plexus::code::failed_precondition, r.delivery_id + " is already " + d.state);
        }
        auto rep = node_.call_raw("drone-management", "recall", plexus::pack(r), {.timeout = demo::nested_call_timeout});
        if (!rep.ok()) throw plexus::error(rep.status.code, "drone not recalled: " + rep.status.message);
        std::lock_guard lk(mu_);
        auto& d = find(r.delivery_id);
        set_state(d, demo::state::cancelled, "drone " + d.drone + " recalled");
        return info_of(d);
    }

    demo::instance_info info(bool log = true) {
        if (log) demo::log_request(node_, "delivery", "info", {}, plexus::log_level::debug);
        demo::instance_info i{name_, endpoint(), 0, 0, drone_feed_.load()};
        std::lock_guard lk(mu_);
        for (auto& [id, d] : deliveries_) {
            ++i.owned;
            if (!demo::is_final(d.state)) ++i.active;
        }
        return i;
    }

    // Drone events of every drone reach every instance; only the owner acts.
    void on_drone_event(const plexus::event& e) {
        if (e.topic == demo::fleet_topic) {
            drone_feed_ = true;
            return;
        }
        const auto last_dot = e.topic.rfind('.');
        if (last_dot == std::string::npos) return;
        const std::string_view what = std::string_view(e.topic).substr(last_dot + 1);
        std::string delivery, status;
        try {
            if (what == "status") {
                auto s = e.as<demo::drone_status>();
                delivery = s.delivery_id;
                status = s.status;
            } else if (what == "position") {
                delivery = e.as<demo::drone_position>().delivery_id;
                status = "position";
            } else {
                return;
            }
        } catch (const plexus::error& err) {
            node_.log(plexus::log_level::warn, "undecodable drone event", {{"topic", e.topic}, {"error", err.what()}});
            return;
        }
        std::lock_guard lk(mu_);
        auto it = deliveries_.find(delivery);
        if (it == deliveries_.end()) return; // not ours
        auto& d = it->second;
        const auto before = d.state;
        if ((status == "en-route" || status == "position") &&
            (d.state == demo::state::created || d.state == demo::state::rescheduled))
            set_state(d, demo::state::in_transit, "drone " + d.drone + " en route");
        else if (status == "delivered")
            set_state(d, demo::state::complete, "drone " + d.drone + " delivered the package");
        if (d.state != before)
            demo::log_request(node_, "delivery", "on-drone-event",
                              {{"topic", e.topic}, {"delivery", delivery}, {"now", d.state}});
    }

    void heartbeat(std::stop_token st) {
        std::mutex m;
        std::condition_variable_any cv;
        std::unique_lock lk(m);
        while (!st.stop_requested()) {
            node_.publish(demo::heartbeat_topic, info(false));
            cv.wait_for(lk, st, 200ms, [] { return false; });
        }
    }

private:
    std::string endpoint() const { return demo::first_endpoint(node_.endpoints()); }

    owned& find(const std::string& id) {
        auto it = deliveries_.find(id);
        if (it == deliveries_.end())
            throw plexus::error(plexus::code::not_found, "delivery " + id + " is not owned by " + name_);
        return it->second;
    }

    demo::delivery_info info_of(const owned& d) const {
        return {d.request.delivery_id, d.state, name_, endpoint(), d.drone, d.assign_chain};
    }

    // Under mu_: state changes and their events happen in one order.
    void set_state(owned& d, std::string_view s, const std::string& detail) {
        if (demo::is_final(d.state) || d.state == s) return;
        d.state = s;
        emit(d, detail);
    }
    void emit(const owned& d, const std::string& detail) {
        node_.publish("delivery." + d.request.delivery_id,
                      demo::delivery_event{d.request.delivery_id, d.state, name_, d.drone, detail});
    }

    plexus::node& node_;
    const std::string name_;
    std::atomic<bool> drone_feed_{false};
    std::mutex mu_;
    std::map<std::string, owned> deliveries_;
};

} // namespace

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "delivery",
        "delivery: delivery.create {delivery_id, package_id, account, dropoff, distance_km, reschedule},\n"
        "delivery.get|cancel {delivery_id}, delivery.info; publishes delivery.<delivery-id> events",
        {}, [](const demo::options& o) {
            auto svc = std::make_shared<std::unique_ptr<instance>>();
            auto sub = std::make_shared<plexus::subscription>();
            auto beat = std::make_shared<std::jthread>();
            demo::service_hooks h;
            h.setup = [=, name = o.name](plexus::node& node) {
                *svc = std::make_unique<instance>(node, name);
                auto* s = svc->get();
                node.declare_topic<demo::delivery_event>("delivery.<delivery-id>",
                                                         "Created, Rescheduled, InTransit, DeliveryComplete, Cancelled");
                node.declare_topic<demo::instance_info>(std::string(demo::heartbeat_topic), "this instance, every 200 ms");
                node.serve("delivery")
                    .doc("delivery state; one of several instances")
                    .version("1.0")
                    .method("create", [s](const demo::create_delivery& r) { return s->create(r); },
                            {.doc = "create (or take over) a delivery and get it a drone"})
                    .method("get", [s](const demo::delivery_ref& r) { return s->get(r); },
                            {.doc = "a delivery owned by this instance"})
                    .method("cancel", [s](const demo::delivery_ref& r) { return s->cancel(r); },
                            {.doc = "recall the drone and cancel"})
                    .raw_method(
                        "info", [s](plexus::request&) { return plexus::pack(s->info()); },
                        {.doc = "this instance: owned deliveries, drone feed"},
                        plexus::shape_of<void>(), plexus::shape_of<demo::instance_info>());
            };
            h.started = [=](plexus::node& node) {
                auto* s = svc->get();
                *sub = node.subscribe("drone.", [s](const plexus::event& e) { s->on_drone_event(e); });
                *beat = std::jthread([s](std::stop_token st) { s->heartbeat(st); });
            };
            h.stopping = [=] {
                beat->request_stop();
                if (beat->joinable()) beat->join();
                sub->cancel();
            };
            return h;
        });
}
