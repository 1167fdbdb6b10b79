// two-node-demo: one side of a two-process Plexus conversation (run.sh starts both).
//
// Each process runs one node named after its role (ping or pong) that
//  - serves a service of that name with a typed method "hit",
//  - publishes an event on "<role>.scored" after each answered call,
//  - finds its peer through the peer's ready file and calls the peer's "hit"
//    (odd rounds synchronously, even rounds asynchronously through a future),
//  - subscribes to the peer's events ("<peer>." prefix).
// It keeps playing, one round per --interval, until SIGTERM or SIGINT, prints one
// summary line, and exits 0 only if it reached its goal: --rounds calls answered,
// --rounds calls served and --rounds events received from the peer.
#include <plexus/node.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct hit {
    std::string from;
    int round = 0;
    MSGPACK_DEFINE_MAP(from, round)
};
struct returned {
    std::string by;
    int round = 0;
    std::string note;
    MSGPACK_DEFINE_MAP(by, round, note)
};
struct scored {
    std::string by;
    int round = 0;
    MSGPACK_DEFINE_MAP(by, round)
};

std::mutex print_mu;
std::string role;

// One readable line per thing that happens; lines of both processes interleave on a
// terminal, so each starts with the role.
template <class... A>
void say(const char* fmt, A... args) {
    std::lock_guard lk(print_mu);
    std::printf("[%-4s] ", role.c_str());
    std::printf(fmt, args...);
    std::printf("\n");
    std::fflush(stdout);
}

struct config {
    std::string ready_file, peer_file;
    int rounds = 3;
    std::chrono::milliseconds interval{200};
    std::chrono::milliseconds timeout{15000};
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "two-node-demo: %s\n"
                 "usage: two-node-demo --role ping|pong --ready-file PATH --peer-file PATH\n"
                 "                     [--rounds N] [--interval MS] [--timeout MS]\n",
                 why);
    std::exit(2);
}

config parse(int argc, char** argv) {
    config c;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + std::string(a)).c_str());
            return argv[++i];
        };
        if (a == "--role")
            role = value();
        else if (a == "--ready-file")
            c.ready_file = value();
        else if (a == "--peer-file")
            c.peer_file = value();
        else if (a == "--rounds")
            c.rounds = std::atoi(value().c_str());
        else if (a == "--interval")
            c.interval = std::chrono::milliseconds(std::atoi(value().c_str()));
        else if (a == "--timeout")
            c.timeout = std::chrono::milliseconds(std::atoi(value().c_str()));
        else
            usage(("unknown argument " + std::string(a)).c_str());
    }
    if (role != "ping" && role != "pong") usage("--role must be ping or pong");
    if (c.ready_file.empty() || c.peer_file.empty()) usage("--ready-file and --peer-file are required");
    if (c.rounds < 1 || c.interval <= 0ms || c.timeout <= 0ms) usage("--rounds, --interval and --timeout must be positive");
    return c;
}

// Written whole under a temporary name, then renamed: a reader never sees half a file.
void write_ready_file(const std::string& path, const plexus::node& n) {
    nlohmann::json j{{"name", n.name()}, {"rpc", n.endpoints()}, {"pub", n.pub_endpoints()}};
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp);
        out << j.dump() << "\n";
        if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

// Waits up to one --interval for a termination signal; returns it, or 0 on timeout.
int wait_signal(const sigset_t& set, std::chrono::milliseconds d) {
    timespec ts{static_cast<std::time_t>(d.count() / 1000), static_cast<long>(d.count() % 1000) * 1000000L};
    siginfo_t info;
    int s = sigtimedwait(&set, &info, &ts);
    return s > 0 ? s : 0;
}

} // namespace

int main(int argc, char** argv) try {
    const config cfg = parse(argc, argv);
    const std::string peer = role == "ping" ? "pong" : "ping";

    // Termination signals are taken synchronously by the main loop (sigtimedwait);
    // blocked before the node starts so that none of its threads receives them.
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, nullptr);

    std::atomic<int> served{0}, answered{0}, failed{0}, events{0};
    const auto goal_reached = [&] { return answered >= cfg.rounds && served >= cfg.rounds && events >= cfg.rounds; };

    plexus::node node({.name = role, .log = plexus::log_level::warn});
    node.serve(role)
        .doc("the " + role + " side of the demo")
        .method(
            "hit",
            [&](const hit& h) {
                ++served;
                say("served %s.hit from %s, round %d", role.c_str(), h.from.c_str(), h.round);
                return returned{role, h.round, role + " returns round " + std::to_string(h.round)};
            },
            {.doc = "returns the ball"});
    node.declare_topic<scored>(role + ".scored", "one per call the peer answered");
    node.start();
    write_ready_file(cfg.ready_file, node);
    say("up: rpc %s, events %s", node.endpoints().front().c_str(), node.pub_endpoints().front().c_str());

    // The peer writes its ready file once bound; wait for it, bounded.
    const auto give_up = plexus::clock::now() + cfg.timeout;
    nlohmann::json peer_info;
    for (;;) {
        std::ifstream in(cfg.peer_file);
        if (in) {
            std::stringstream ss;
            ss << in.rdbuf();
            peer_info = nlohmann::json::parse(ss.str());
            break;
        }
        if (plexus::clock::now() >= give_up) throw std::runtime_error("peer ready file " + cfg.peer_file + " did not appear");
        if (int s = wait_signal(term, 20ms)) {
            say("signal %d before the peer appeared", s);
            return 1;
        }
    }
    const auto peer_rpc = peer_info.at("rpc").at(0).get<std::string>();
    say("peer %s at %s", peer.c_str(), peer_rpc.c_str());
    // The node asks the peer to describe itself: from then on the peer's service
    // resolves by name and the peer's event endpoints are subscribed to.
    node.connect(peer_rpc);

    auto sub = node.subscribe(peer + ".", [&](const plexus::event& e) {
        ++events;
        auto s = e.as<scored>();
        say("event %s: %s scored round %d (seq %llu)", e.topic.c_str(), s.by.c_str(), s.round,
            static_cast<unsigned long long>(e.seq));
    });

    bool goal_said = false;
    int round = 0;
    int signal = 0;
    while (!signal) {
        ++round;
        plexus::reply r;
        const plexus::call_options opts{.timeout = 2s};
        if (round % 2) {
            r = node.call_raw(peer, "hit", plexus::pack(hit{role, round}), opts);
        } else {
            auto f = node.call_async(peer, "hit", plexus::pack(hit{role, round}), opts);
            r = f.get(); // ready by the call's deadline at the latest
        }
        if (r.ok()) {
            ++answered;
            auto back = r.as<returned>();
            say("%s call %s.hit round %d -> \"%s\"", round % 2 ? "sync " : "async", peer.c_str(), round, back.note.c_str());
            node.publish(role + ".scored", scored{role, round});
        } else {
            ++failed;
            say("call %s.hit round %d failed: %s", peer.c_str(), round, plexus::error(r.status).what());
        }
        const bool goal = goal_reached();
        if (goal && !goal_said) {
            say("goal reached: %d calls answered, %d served, %d events received", answered.load(), served.load(), events.load());
            goal_said = true;
        }
        if (!goal && plexus::clock::now() >= give_up) {
            say("goal not reached within %lld ms", static_cast<long long>(cfg.timeout.count()));
            break;
        }
        signal = wait_signal(term, cfg.interval);
    }
    sub.cancel();
    node.stop();
    const bool ok = goal_reached();
    say("summary: calls_answered=%d calls_failed=%d served=%d events_received=%d %s", answered.load(), failed.load(),
        served.load(), events.load(), ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "two-node-demo[%s]: %s\n", role.c_str(), e.what());
    return 1;
}
