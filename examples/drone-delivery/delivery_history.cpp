// delivery-history: listens to every delivery event (prefix "delivery.") and keeps the
// history of each delivery in memory, with the user-id and trace id each event came
// with; serves delivery-history.history {delivery_id}. It also remembers which delivery
// instances it hears (their heartbeats): delivery-history.sources.
#include <plexus/node.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

class history {
public:
    explicit history(plexus::node& node) : node_(node) {}

    void on_event(const plexus::event& e) {
        try {
            if (e.topic == demo::heartbeat_topic) {
                auto i = e.as<demo::instance_info>();
                std::lock_guard lk(mu_);
                sources_.insert(i.instance);
                return;
            }
            auto ev = e.as<demo::delivery_event>();
            auto* ctx = plexus::context::current();
            demo::history_entry h{ev.kind,
                                  ev.owner,
                                  ev.drone,
                                  ev.detail,
                                  demo::current_user(),
                                  ctx ? std::string(ctx->trace_id()) : std::string(),
                                  static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                 std::chrono::system_clock::now().time_since_epoch())
                                                                 .count())};
            demo::log_request(node_, "delivery-history", "on-delivery-event",
                              {{"delivery", ev.delivery_id}, {"event", ev.kind}, {"by", ev.owner}});
            std::lock_guard lk(mu_);
            by_delivery_[ev.delivery_id].push_back(std::move(h));
        } catch (const plexus::error& err) {
            node_.log(plexus::log_level::warn, "undecodable delivery event", {{"topic", e.topic}, {"error", err.what()}});
        }
    }

    demo::history_reply get(const demo::delivery_ref& r) {
        demo::log_request(node_, "delivery-history", "history", {{"delivery", r.delivery_id}});
        std::lock_guard lk(mu_);
        auto it = by_delivery_.find(r.delivery_id);
        if (it == by_delivery_.end()) throw plexus::error(plexus::code::not_found, "no history for " + r.delivery_id);
        return {r.delivery_id, it->second};
    }

    demo::sources_reply sources() {
        demo::log_request(node_, "delivery-history", "sources", {}, plexus::log_level::debug);
        std::lock_guard lk(mu_);
        return {{sources_.begin(), sources_.end()}};
    }

private:
    plexus::node& node_;
    std::mutex mu_;
    std::map<std::string, std::vector<demo::history_entry>> by_delivery_;
    std::set<std::string> sources_;
};

} // namespace

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "delivery-history",
        "delivery-history: delivery-history.history {delivery_id}, delivery-history.sources; listens to delivery.*",
        {}, [](const demo::options&) {
            auto svc = std::make_shared<std::unique_ptr<history>>();
            auto sub = std::make_shared<plexus::subscription>();
            demo::service_hooks h;
            h.setup = [=](plexus::node& node) {
                *svc = std::make_unique<history>(node);
                auto* s = svc->get();
                node.serve("delivery-history")
                    .doc("the history of every delivery")
                    .version("1.0")
                    .method("history", [s](const demo::delivery_ref& r) { return s->get(r); },
                            {.doc = "every event of a delivery, oldest first"})
                    .raw_method(
                        "sources", [s](plexus::request&) { return plexus::pack(s->sources()); },
                        {.doc = "the delivery instances heard so far"}, plexus::shape_of<void>(),
                        plexus::shape_of<demo::sources_reply>());
            };
            h.started = [=](plexus::node& node) {
                auto* s = svc->get();
                *sub = node.subscribe("delivery.", [s](const plexus::event& e) { s->on_event(e); });
            };
            h.stopping = [=] { sub->cancel(); };
            return h;
        });
}
