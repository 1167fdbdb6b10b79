// plexus-demo-client: the scripted scenario of the drone-delivery demo, as a user of
// the system would drive it, on the public API alone.
//
//  1. waits until every service of --ready-dir is seen through discovery and every
//     event feed is live (the delivery instances hear the drones, delivery-history
//     and this client hear both delivery instances);
//  2. schedules deliveries as --user, and one for an account in arrears (it must fail
//     as a whole with a clear error);
//  3. cancels one delivery in flight;
//  4. kills one delivery instance with SIGKILL while it owns deliveries in flight
//     (its pid is in its ready file) and schedules more: they go to the other one;
//  5. follows every delivery to its final state, handing the dead instance's
//     deliveries over with scheduler.reschedule;
//  6. reads each delivery's history and checks it: complete, in order, and with the
//     user-id and the delivery's trace id on every event.
//
// The user-id, groups and a trace of its own for each delivery are set once, in a
// context the client opens around its calls (plexus::context_scope); every service
// down the line sees them with no code written for it. Prints a transcript on stdout,
// writes what run.sh checks in the service logs to --result-file, exits 0 only if every
// check held.
#include <plexus/node.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

struct service_entry {
    std::string name, role, rpc;
    pid_t pid = 0;
};

struct tracked {
    int n = 0;
    demo::schedule_request req;
    std::string id, trace_id, traceparent;
    std::string owner, drone;
    std::string expected;   // final state expected
    std::string last_event; // latest delivery event seen
    std::string final_state;
    std::vector<std::string> owners;
    bool rescheduled = false;
};

std::string random_hex(std::size_t n) {
    static std::mt19937_64 rng{std::random_device{}()};
    static constexpr char digits[] = "0123456789abcdef";
    std::string s(n, '0');
    for (auto& c : s) c = digits[rng() & 15];
    return s;
}

std::string trace_of(const plexus::headers& h) {
    auto tp = h.get(plexus::header_key::traceparent);
    return tp && tp->size() >= 35 ? std::string(tp->substr(3, 32)) : std::string("-");
}

std::string short_trace(const std::string& t) { return t.size() > 8 ? t.substr(0, 8) + "..." : t; }

class scenario {
public:
    scenario(plexus::node& node, const demo::options& o) : node_(node), o_(o), t0_(clk::now()) {
        user_ = o.get("user");
        groups_ = o.get("groups");
    }

    int run() {
        read_ready_dir();
        subscribe();
        if (!wait_until_wired()) return finish();
        schedule_first_batch();
        cancel_one();
        if (o_.get_flag("no-kill"))
            say("== 4. (--no-kill: no instance killed)\n");
        else
            kill_one_instance();
        schedule_second_batch();
        follow_to_the_end();
        check_histories();
        return finish();
    }

private:
    // ---- output ----
    void say(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        std::lock_guard lk(out_mu_);
        va_list ap;
        va_start(ap, fmt);
        std::vfprintf(stdout, fmt, ap);
        va_end(ap);
        std::fflush(stdout);
    }
    std::string stamp() const {
        char b[32];
        std::snprintf(b, sizeof b, "+%.3fs", std::chrono::duration<double>(clk::now() - t0_).count());
        return b;
    }
    void check(bool ok, const std::string& what) {
        {
            std::lock_guard lk(mu_);
            ++checks_;
            if (!ok) failures_.push_back(what);
        }
        if (!ok) say("   FAILED: %s\n", what.c_str());
    }

    // ---- set-up ----
    void read_ready_dir() {
        for (auto& f : std::filesystem::directory_iterator(o_.get("ready-dir"))) {
            if (f.path().extension() != ".ready") continue;
            auto kv = demo::read_ready_file(f.path());
            service_entry s{kv["name"], kv["role"], kv["rpc"], static_cast<pid_t>(std::stol(kv["pid"]))};
            if (s.role == "client") continue;
            services_.push_back(s);
            if (s.role == "delivery") instances_.push_back(s);
        }
        std::sort(services_.begin(), services_.end(), [](auto& a, auto& b) { return a.name < b.name; });
        if (services_.empty()) throw std::runtime_error("no ready files in " + o_.get("ready-dir"));
    }

    void subscribe() {
        deliveries_sub_ = node_.subscribe("delivery.", [this](const plexus::event& e) { on_delivery_event(e); });
        drones_sub_ = node_.subscribe("drone.", [this](const plexus::event& e) { on_drone_event(e); });
    }

    void on_delivery_event(const plexus::event& e) {
        if (e.topic == demo::heartbeat_topic) {
            auto i = e.as<demo::instance_info>();
            std::lock_guard lk(mu_);
            heard_.insert(i.instance);
            cv_.notify_all();
            return;
        }
        auto ev = e.as<demo::delivery_event>();
        {
            std::lock_guard lk(mu_);
            ++delivery_events_;
            if (auto it = by_id_.find(ev.delivery_id); it != by_id_.end()) it->second->last_event = ev.kind;
            cv_.notify_all();
        }
        say("   %s  event %-24s %-17s by %-10s user-id=%s trace=%s  %s\n", stamp().c_str(), e.topic.c_str(),
            ev.kind.c_str(), ev.owner.c_str(), std::string(e.headers.get_or("user-id", "-")).c_str(),
            short_trace(trace_of(e.headers)).c_str(), ev.detail.c_str());
    }

    void on_drone_event(const plexus::event& e) {
        if (e.topic == demo::fleet_topic) {
            std::lock_guard lk(mu_);
            heard_fleet_ = true;
            cv_.notify_all();
            return;
        }
        std::lock_guard lk(mu_);
        ++drone_events_;
        if (e.topic.ends_with(".status")) {
            auto s = e.as<demo::drone_status>();
            say("   %s  event %-24s %-17s for %s\n", stamp().c_str(), e.topic.c_str(), s.status.c_str(),
                s.delivery_id.c_str());
        }
    }

    bool wait_until_wired() {
        std::set<std::string> want_peers;
        for (auto& s : services_) want_peers.insert(s.name);
        say("== 1. wiring: %zu services, cluster %s, discovery on UDP port %u\n", services_.size(), o_.cluster.c_str(),
            o_.discovery_port);
        const auto deadline = clk::now() + 15s;
        std::string missing;
        while (clk::now() < deadline) {
            missing.clear();
            std::set<std::string> seen;
            for (auto& p : node_.peers()) seen.insert(p.name);
            for (auto& n : want_peers)
                if (!seen.count(n)) missing += " peer:" + n;
            {
                std::lock_guard lk(mu_);
                if (!heard_fleet_) missing += " feed:drone.fleet->client";
                for (auto& i : instances_)
                    if (!heard_.count(i.name)) missing += " feed:" + i.name + "->client";
            }
            if (missing.empty()) missing = wired_feeds();
            if (missing.empty()) break;
            std::unique_lock lk(mu_);
            cv_.wait_for(lk, 50ms);
        }
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0_).count();
        check(missing.empty(), "every service seen and every event feed live within 15 s (missing:" + missing + ")");
        if (!missing.empty()) return false;
        std::string names;
        for (auto& s : services_) names += " " + s.name;
        say("   seen through discovery:%s\n", names.c_str());
        say("   event feeds live: drone-management -> delivery instances, client; delivery instances -> "
            "delivery-history, client\n   (%lld ms after the client started)\n",
            static_cast<long long>(took));
        return true;
    }

    // The feeds between services, asked of the subscribers; "" when all are live.
    std::string wired_feeds() {
        std::string missing;
        for (auto& i : instances_) {
            auto r = node_.call_raw("delivery", "info", {}, {.timeout = 1s, .endpoint = i.rpc});
            if (!r.ok() || !r.as<demo::instance_info>().drone_feed) missing += " feed:drone.fleet->" + i.name;
        }
        auto r = node_.call_raw("delivery-history", "sources", {}, {.timeout = 1s});
        std::set<std::string> heard;
        if (r.ok())
            for (auto& s : r.as<demo::sources_reply>().instances) heard.insert(s);
        for (auto& i : instances_)
            if (!heard.count(i.name)) missing += " feed:" + i.name + "->delivery-history";
        return missing;
    }

    // ---- the scenario ----
    // Runs `fn` with this delivery's context current: the user, the groups and the
    // delivery's own trace travel with every call made inside.
    template <class F>
    auto as_user(tracked& t, F fn) {
        plexus::context ctx;
        ctx.headers.set(plexus::header_key::user_id, user_);
        ctx.headers.set(plexus::header_key::groups, groups_);
        ctx.headers.set(plexus::header_key::traceparent, t.traceparent);
        plexus::context_scope scope(ctx);
        return fn();
    }

    plexus::reply schedule_call(tracked& t) {
        return as_user(t, [&] { return node_.call_raw("scheduler", "schedule", plexus::pack(t.req), {.timeout = 8s}); });
    }

    tracked& add(demo::schedule_request req, std::string expected) {
        auto t = std::make_unique<tracked>();
        t->n = static_cast<int>(all_.size()) + 1;
        t->req = std::move(req);
        t->expected = std::move(expected);
        t->trace_id = random_hex(32);
        t->traceparent = "00-" + t->trace_id + "-" + random_hex(16) + "-01";
        all_.push_back(std::move(t));
        return *all_.back();
    }

    void print_request(const tracked& t) {
        say("   %s  %s -> scheduler.schedule  #%d %s: %.1f kg %s to %s, %.0f km  [trace %s]\n", stamp().c_str(),
            user_.c_str(), t.n, t.req.account.c_str(), t.req.weight_kg, t.req.description.c_str(), t.req.dropoff.c_str(),
            t.req.distance_km, short_trace(t.trace_id).c_str());
    }

    bool schedule(tracked& t, bool retry_once) {
        print_request(t);
        auto rep = schedule_call(t);
        if (!rep.ok() && retry_once &&
            (rep.status.code == plexus::code::unavailable || rep.status.code == plexus::code::deadline_exceeded)) {
            say("      <= %s: %s\n      (a call caught by the crash: retrying once)\n",
                std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
            rep = schedule_call(t);
        }
        if (!rep.ok()) {
            say("      <= %s: %s\n", std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
            check(false, "#" + std::to_string(t.n) + " scheduled (" + rep.status.message + ")");
            return false;
        }
        auto r = rep.as<demo::schedule_reply>();
        {
            std::lock_guard lk(mu_);
            t.id = r.delivery_id;
            t.owner = r.owner;
            t.drone = r.drone;
            t.owners.push_back(r.owner);
            by_id_[t.id] = &t;
        }
        std::string steps;
        for (auto& s : r.steps) steps += "        " + s + "\n";
        say("%s      <= %s scheduled: owner %s, drone %s\n", steps.c_str(), r.delivery_id.c_str(), r.owner.c_str(),
            r.drone.c_str());
        check(r.trace_id == t.trace_id, "#" + std::to_string(t.n) + ": the scheduler saw the trace the client started");
        return true;
    }

    void schedule_first_batch() {
        say("== 2. %s (groups %s) schedules deliveries; the context is set once, in the client\n", user_.c_str(),
            groups_.c_str());
        for (auto& [what, where, km, kg] :
             std::vector<std::tuple<const char*, const char*, double, double>>{{"running shoes", "Main St 1", 5, 1.2},
                                                                                {"a book", "Elm St 22", 6, 0.6},
                                                                                {"a lamp", "Hill Rd 9", 12, 2.5},
                                                                                {"tea", "Lake Ave 3", 8, 0.4}})
            schedule(add({"acct-" + user_, what, kg, where, km}, std::string(demo::state::complete)), false);
        all_[2]->expected = demo::state::cancelled;

        // An account in arrears: the whole operation fails, with a clear error.
        tracked& bad = add({"bad-carol", "a piano", 4.9, "Bay St 7", 3}, "");
        print_request(bad);
        auto rep = schedule_call(bad);
        say("      <= %s: %s\n", std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
        check(rep.status.code == plexus::code::failed_precondition,
              "an account in arrears fails the whole scheduling with FAILED_PRECONDITION");
    }

    void cancel_one() {
        tracked& t = *all_[2];
        say("== 3. %s cancels #%d (%s) while its drone flies\n", user_.c_str(), t.n, t.id.c_str());
        if (t.id.empty()) return;
        auto rep = as_user(t, [&] {
            return node_.call_raw("scheduler", "cancel", plexus::pack(demo::delivery_ref{t.id}), {.timeout = 8s});
        });
        if (rep.ok()) {
            auto s = rep.as<demo::delivery_status>();
            say("   %s  %s -> scheduler.cancel %s\n        scheduler -> delivery.cancel at %s -> "
                "drone-management.recall\n        scheduler -> package.cancel\n      <= %s (%s)\n",
                stamp().c_str(), user_.c_str(), t.id.c_str(), s.owner.c_str(), s.state.c_str(), s.detail.c_str());
        } else {
            say("      <= %s: %s\n", std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
        }
        check(rep.ok(), "#" + std::to_string(t.n) + " cancelled in flight");
    }

    void kill_one_instance() {
        // The instance owning the most deliveries still in flight.
        std::map<std::string, std::vector<std::string>> in_flight;
        {
            std::lock_guard lk(mu_);
            for (auto& t : all_)
                if (!t->id.empty() && t->expected == demo::state::complete && !demo::is_final(t->last_event))
                    in_flight[t->owner].push_back(t->id);
        }
        const service_entry* victim = nullptr;
        for (auto& i : instances_)
            if (!victim || in_flight[i.name].size() > in_flight[victim->name].size()) victim = &i;
        if (!victim) {
            check(false, "a delivery instance to kill");
            return;
        }
        std::string ids;
        for (auto& id : in_flight[victim->name]) ids += " " + id;
        // Mid-flight: once one of its deliveries is InTransit (bounded wait).
        {
            std::unique_lock lk(mu_);
            cv_.wait_for(lk, 3s, [&] {
                for (auto& t : all_)
                    if (t->owner == victim->name && t->last_event == demo::state::in_transit) return true;
                return false;
            });
        }
        say("== 4. SIGKILL %s (pid %d) while it owns deliveries in flight:%s\n", victim->name.c_str(), victim->pid,
            ids.empty() ? " (none)" : ids.c_str());
        check(!ids.empty(), "the killed instance owned a delivery in flight");
        check(::kill(victim->pid, SIGKILL) == 0, "SIGKILL " + victim->name);
        killed_ = *victim;
    }

    void schedule_second_batch() {
        say("== 5. scheduling goes on: calls by name reach the live instance\n");
        for (auto& [what, where, km, kg] :
             std::vector<std::tuple<const char*, const char*, double, double>>{{"a phone", "Park Ln 5", 4, 0.3},
                                                                                {"flowers", "Rose St 8", 6, 0.8}}) {
            auto& t = add({"acct-" + user_, what, kg, where, km}, std::string(demo::state::complete));
            if (schedule(t, true) && !killed_.name.empty())
                check(t.owner != killed_.name, t.id + " went to a live instance");
        }
    }

    void follow_to_the_end() {
        say("== 6. following every delivery to its final state (status from its owner; reschedule when the owner "
            "is gone)\n");
        const auto deadline = clk::now() + 25s;
        std::map<std::string, std::string> last_status;
        for (;;) {
            bool all_final = true;
            for (auto& tp : all_) {
                tracked& t = *tp;
                if (t.id.empty() || !t.final_state.empty()) continue;
                auto rep = as_user(t, [&] {
                    return node_.call_raw("scheduler", "status", plexus::pack(demo::delivery_ref{t.id}), {.timeout = 4s});
                });
                if (!rep.ok()) {
                    all_final = false;
                    continue;
                }
                auto s = rep.as<demo::delivery_status>();
                if (last_status[t.id] != s.state) {
                    last_status[t.id] = s.state;
                    if (s.state == demo::state::owner_lost)
                        say("   %s  scheduler.status %s: %s (%s)\n", stamp().c_str(), t.id.c_str(), s.state.c_str(),
                            s.detail.c_str());
                }
                if (demo::is_final(s.state)) {
                    std::lock_guard lk(mu_);
                    t.final_state = s.state;
                    continue;
                }
                all_final = false;
                if (s.state == demo::state::owner_lost && !t.rescheduled) reschedule(t);
            }
            if (all_final || clk::now() >= deadline) break;
            std::unique_lock lk(mu_);
            cv_.wait_for(lk, 250ms);
        }
        for (auto& t : all_) {
            if (t->id.empty()) continue;
            check(t->final_state == t->expected,
                  t->id + " ended " + (t->final_state.empty() ? "nowhere" : t->final_state) + ", expected " + t->expected);
        }
    }

    void reschedule(tracked& t) {
        auto rep = as_user(t, [&] {
            return node_.call_raw("scheduler", "reschedule", plexus::pack(demo::delivery_ref{t.id}), {.timeout = 8s});
        });
        if (!rep.ok()) {
            say("   %s  %s -> scheduler.reschedule %s <= %s: %s\n", stamp().c_str(), user_.c_str(), t.id.c_str(),
                std::string(plexus::to_string(rep.status.code)).c_str(), rep.status.message.c_str());
            return;
        }
        auto s = rep.as<demo::delivery_status>();
        say("   %s  %s -> scheduler.reschedule %s -> delivery.create (by name) <= %s, owner %s (%s)\n",
            stamp().c_str(), user_.c_str(), t.id.c_str(), s.state.c_str(), s.owner.c_str(), s.detail.c_str());
        std::lock_guard lk(mu_);
        t.rescheduled = true;
        t.owner = s.owner;
        t.owners.push_back(s.owner);
    }

    void check_histories() {
        say("== 7. delivery-history: every delivery's story, with the context each event came with\n");
        for (auto& tp : all_) {
            tracked& t = *tp;
            if (t.id.empty()) continue;
            // Events reach delivery-history a moment after the owner's state changed.
            demo::history_reply h;
            std::string problem;
            const auto deadline = clk::now() + 3s;
            do {
                auto rep = as_user(t, [&] {
                    return node_.call_raw("delivery-history", "history", plexus::pack(demo::delivery_ref{t.id}),
                                          {.timeout = 4s});
                });
                problem = rep.ok() ? judge(t, h = rep.as<demo::history_reply>()) : rep.status.message;
                if (problem.empty()) break;
                std::this_thread::sleep_for(100ms);
            } while (clk::now() < deadline);
            std::string story;
            for (auto& e : h.events) story += (story.empty() ? "" : " -> ") + e.kind + "(" + e.owner + ")";
            say("   %s  %s\n      user-id=%s on every event, one trace %s\n", t.id.c_str(), story.c_str(),
                user_.c_str(), t.trace_id.c_str());
            check(problem.empty(), t.id + " history: " + problem);
        }
    }

    // "" when the history is complete and carries the context everywhere.
    std::string judge(const tracked& t, const demo::history_reply& h) {
        if (h.events.empty()) return "empty";
        if (h.events.front().kind != demo::state::created) return "does not start with Created";
        if (h.events.back().kind != t.expected) return "ends with " + h.events.back().kind + ", not " + t.expected;
        auto has = [&](std::string_view k) {
            return std::any_of(h.events.begin(), h.events.end(), [&](auto& e) { return e.kind == k; });
        };
        if (t.rescheduled && !has(demo::state::rescheduled)) return "no Rescheduled";
        if (!t.rescheduled && t.expected == demo::state::complete && !has(demo::state::in_transit))
            return "no InTransit";
        for (auto& e : h.events) {
            if (e.user_id != user_) return e.kind + " came with user-id " + e.user_id;
            if (e.trace_id != t.trace_id) return e.kind + " came with trace " + e.trace_id;
        }
        return "";
    }

    int finish() {
        if (auto path = o_.get("result-file"); !path.empty()) {
            std::ofstream f(path, std::ios::trunc);
            for (auto& t : all_) {
                if (t->id.empty()) continue;
                std::string owners;
                for (auto& o : t->owners) owners += (owners.empty() ? "" : ",") + o;
                f << "delivery " << t->id << " " << t->trace_id << " " << (t->final_state.empty() ? "-" : t->final_state)
                  << " " << owners << "\n";
            }
            if (!killed_.name.empty()) f << "killed " << killed_.name << " " << killed_.pid << "\n";
        }
        std::lock_guard lk(mu_);
        say("== client: %zu deliveries, %d delivery events and %d drone events seen by the client; %d checks, %zu "
            "failed\n",
            by_id_.size(), delivery_events_, drone_events_, checks_, failures_.size());
        for (auto& f : failures_) say("   FAILED: %s\n", f.c_str());
        return failures_.empty() ? 0 : 1;
    }

    plexus::node& node_;
    const demo::options& o_;
    const clk::time_point t0_;
    std::string user_, groups_;
    std::vector<service_entry> services_, instances_;
    service_entry killed_;
    std::vector<std::unique_ptr<tracked>> all_;

    std::mutex out_mu_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, tracked*> by_id_;
    std::set<std::string> heard_;
    bool heard_fleet_ = false;
    int delivery_events_ = 0, drone_events_ = 0, checks_ = 0;
    std::vector<std::string> failures_;
    plexus::subscription deliveries_sub_, drones_sub_;
};

} // namespace

int main(int argc, char** argv) try {
    auto o = demo::parse(argc, argv, "client", "plexus-demo-client: the scripted drone-delivery scenario (see run.sh)",
                         {{"ready-dir", "", "directory of the services' ready files (required)"},
                          {"user", "alice", "user-id the scenario acts as"},
                          {"groups", "customers", "that user's groups"},
                          {"result-file", "", "where to write deliveries, trace ids and the killed instance"},
                          {"no-kill", "false", "do not kill a delivery instance"}});
    if (o.get("ready-dir").empty()) {
        std::fprintf(stderr, "plexus-demo-client: --ready-dir is required\n");
        return 2;
    }
    auto no = demo::node_options(o);
    no.pub_bind = {}; // publishes nothing
    plexus::node node(no);
    node.start();
    scenario s(node, o);
    const int rc = s.run();
    node.stop();
    return rc;
} catch (const std::exception& e) {
    std::fprintf(stderr, "plexus-demo-client: %s\n", e.what());
    return 1;
}
