// scheduler: the entry point. schedule asks accounts (valid, in good standing?),
// package (create the record) and delivery (create the delivery) and needs all three
// answers: any failure fails the whole operation with a clear error, and what was
// created before it is compensated (the package is cancelled).
//
// Calls to delivery go by name (any live instance); afterwards the delivery belongs to
// the instance that created it, and the scheduler calls that instance at its endpoint
// (call_options::endpoint) for status and cancel. When that instance is gone, status
// says OwnerLost and reschedule hands the delivery to a live instance.
#include <plexus/node.hpp>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <random>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

struct record {
    demo::schedule_request request;
    std::string package_id;
    std::string owner, owner_endpoint, drone;
    bool cancelled = false;
};

class scheduler {
public:
    explicit scheduler(plexus::node& node) : node_(node) {
        std::random_device rd;
        char p[8];
        std::snprintf(p, sizeof p, "%04x", static_cast<unsigned>(rd() & 0xffff));
        prefix_ = std::string("D-") + p + "-";
    }

    demo::schedule_reply schedule(const demo::schedule_request& r) {
        demo::log_request(node_, "scheduler", "schedule", {{"account", r.account}});
        const plexus::call_options nested{.timeout = demo::nested_call_timeout};
        demo::schedule_reply out;
        out.trace_id = std::string(plexus::context::current()->trace_id());

        auto acc = call<demo::account_info>("accounts", "check", demo::account_ref{r.account}, nested,
                                            "account check failed");
        out.steps.push_back("scheduler -> accounts.check: " + acc.account + " in " + acc.standing + " standing");

        auto pkg = call<demo::package_info>("package", "create",
                                            demo::package_request{r.account, r.description, r.weight_kg}, nested,
                                            "package could not be created");
        out.package_id = pkg.package_id;
        out.steps.push_back("scheduler -> package.create: " + pkg.package_id);

        const std::string id = next_id();
        demo::delivery_info d;
        try {
            d = call<demo::delivery_info>("delivery", "create",
                                          demo::create_delivery{id, pkg.package_id, r.account, r.dropoff, r.distance_km,
                                                                false},
                                          nested, "delivery could not be created");
        } catch (const plexus::error& e) {
            // Compensate: the package record must not outlive a failed scheduling.
            auto undo = node_.call_raw("package", "cancel", plexus::pack(demo::package_ref{pkg.package_id}), nested);
            throw plexus::error(e.code(), e.message() + (undo.ok() ? "; package " + pkg.package_id + " cancelled"
                                                                   : "; package " + pkg.package_id +
                                                                         " NOT cancelled: " + undo.status.message));
        }
        out.steps.push_back("scheduler -> delivery.create: " + id + " owned by " + d.owner);
        out.steps.push_back(d.owner + " -> drone-management.assign: " + d.drone + " (call-chain there: " +
                            d.assign_chain + ")");
        {
            std::lock_guard lk(mu_);
            records_[id] = record{r, pkg.package_id, d.owner, d.owner_endpoint, d.drone, false};
        }
        out.delivery_id = id;
        out.owner = d.owner;
        out.drone = d.drone;
        return out;
    }

    demo::delivery_status status(const demo::delivery_ref& r) {
        demo::log_request(node_, "scheduler", "status", {{"delivery", r.delivery_id}});
        const auto rec = find(r.delivery_id);
        demo::delivery_status out{r.delivery_id, "", rec.owner, rec.drone, ""};
        if (rec.cancelled) { // final, whether or not its owner is still there
            out.state = demo::state::cancelled;
            return out;
        }
        if (!owner_alive(rec)) {
            out.state = demo::state::owner_lost;
            out.detail = "owner " + rec.owner + " is gone; reschedule to hand the delivery to a live instance";
            return out;
        }
        auto rep = node_.call_raw("delivery", "get", plexus::pack(demo::delivery_ref{r.delivery_id}),
                                  {.timeout = demo::nested_call_timeout, .endpoint = rec.owner_endpoint});
        if (rep.status.code == plexus::code::unavailable) {
            out.state = demo::state::owner_lost;
            out.detail = "owner " + rec.owner + " unreachable: " + rep.status.message;
            return out;
        }
        auto d = rep.as<demo::delivery_info>();
        out.state = d.state;
        out.drone = d.drone;
        return out;
    }

    demo::delivery_status cancel(const demo::delivery_ref& r) {
        demo::log_request(node_, "scheduler", "cancel", {{"delivery", r.delivery_id}});
        const auto rec = find(r.delivery_id);
        if (!owner_alive(rec))
            throw plexus::error(plexus::code::unavailable,
                                "owner " + rec.owner + " of " + r.delivery_id + " is gone; reschedule it first");
        const plexus::call_options at_owner{.timeout = demo::nested_call_timeout, .endpoint = rec.owner_endpoint};
        auto d = call<demo::delivery_info>("delivery", "cancel", r, at_owner, "delivery could not be cancelled");
        auto p = node_.call_raw("package", "cancel", plexus::pack(demo::package_ref{rec.package_id}),
                                {.timeout = demo::nested_call_timeout});
        {
            std::lock_guard lk(mu_);
            records_[r.delivery_id].cancelled = true;
        }
        return {r.delivery_id, d.state, d.owner, d.drone,
                p.ok() ? "package " + rec.package_id + " cancelled" : "package cancel failed: " + p.status.message};
    }

    demo::delivery_status reschedule(const demo::delivery_ref& r) {
        demo::log_request(node_, "scheduler", "reschedule", {{"delivery", r.delivery_id}});
        const auto rec = find(r.delivery_id);
        if (owner_alive(rec))
            throw plexus::error(plexus::code::failed_precondition,
                                r.delivery_id + " is owned by " + rec.owner + ", which is alive");
        auto d = call<demo::delivery_info>("delivery", "create",
                                           demo::create_delivery{r.delivery_id, rec.package_id, rec.request.account,
                                                                 rec.request.dropoff, rec.request.distance_km, true},
                                           {.timeout = demo::nested_call_timeout}, "delivery could not be rescheduled");
        {
            std::lock_guard lk(mu_);
            auto& x = records_[r.delivery_id];
            x.owner = d.owner;
            x.owner_endpoint = d.owner_endpoint;
            x.drone = d.drone;
        }
        return {r.delivery_id, d.state, d.owner, d.drone, "taken over from " + rec.owner};
    }

private:
    // A typed call whose failure becomes the caller's error, with the step named.
    template <class Rep, class Req>
    Rep call(std::string_view service, std::string_view method, const Req& req, const plexus::call_options& o,
             const std::string& what) {
        plexus::reply rep = node_.call_raw(service, method, plexus::pack(req), o);
        if (!rep.ok()) throw plexus::error(rep.status.code, what + ": " + rep.status.message);
        return rep.as<Rep>();
    }

    record find(const std::string& id) {
        std::lock_guard lk(mu_);
        auto it = records_.find(id);
        if (it == records_.end()) throw plexus::error(plexus::code::not_found, "no delivery " + id);
        return it->second;
    }

    // Whether discovery still sees the owner. A killed instance leaves the table as
    // soon as a connection to it breaks, or after missed beacons.
    bool owner_alive(const record& rec) const {
        for (auto& p : node_.peers()) {
            auto ep = p.endpoints.find("rpc");
            if (ep != p.endpoints.end() && ep->second == rec.owner_endpoint) return true;
        }
        return false;
    }

    std::string next_id() {
        std::lock_guard lk(mu_);
        char n[8];
        std::snprintf(n, sizeof n, "%03u", next_++);
        return prefix_ + n;
    }

    plexus::node& node_;
    std::string prefix_;
    std::mutex mu_;
    std::map<std::string, record> records_;
    unsigned next_ = 1;
};

} // namespace

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "scheduler",
        "scheduler: scheduler.schedule {account, description, weight_kg, dropoff, distance_km};\n"
        "scheduler.status|cancel|reschedule {delivery_id}",
        {}, [](const demo::options&) {
            auto svc = std::make_shared<std::unique_ptr<scheduler>>();
            demo::service_hooks h;
            h.setup = [svc](plexus::node& node) {
                *svc = std::make_unique<scheduler>(node);
                auto* s = svc->get();
                // Every handler makes nested calls: execution::pool (the default).
                node.serve("scheduler")
                    .doc("schedules drone deliveries")
                    .version("1.0")
                    .method("schedule", [s](const demo::schedule_request& r) { return s->schedule(r); },
                            {.doc = "check the account, create the package and the delivery"})
                    .method("status", [s](const demo::delivery_ref& r) { return s->status(r); },
                            {.doc = "state of a delivery, from its owner"})
                    .method("cancel", [s](const demo::delivery_ref& r) { return s->cancel(r); },
                            {.doc = "cancel a delivery and its package"})
                    .method("reschedule", [s](const demo::delivery_ref& r) { return s->reschedule(r); },
                            {.doc = "hand a delivery whose owner is gone to a live delivery instance"});
            };
            return h;
        });
}
