#include <plexus/discovery/agent.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace plexus::discovery {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::chrono::milliseconds peer::age() const {
    return std::chrono::duration_cast<milliseconds>(clock::now() - last_seen);
}

const service* peer::find_service(std::string_view n) const noexcept {
    for (const auto& s : services)
        if (s.name == n) return &s;
    return nullptr;
}

std::string_view to_string(event_kind k) noexcept {
    switch (k) {
    case event_kind::join: return "join";
    case event_kind::update: return "update";
    case event_kind::leave: return "leave";
    }
    return "unknown";
}

std::string_view to_string(leave_reason r) noexcept {
    switch (r) {
    case leave_reason::none: return "none";
    case leave_reason::graceful: return "graceful";
    case leave_reason::expired: return "expired";
    case leave_reason::dead: return "dead";
    case leave_reason::forgotten: return "forgotten";
    case leave_reason::replaced: return "replaced";
    }
    return "unknown";
}

namespace detail {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), "plexus discovery: " + what);
}

class fd_guard {
public:
    fd_guard() = default;
    explicit fd_guard(int fd) : fd_(fd) {}
    fd_guard(fd_guard&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    fd_guard& operator=(fd_guard&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~fd_guard() { reset(); }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    [[nodiscard]] int get() const noexcept { return fd_; }

private:
    int fd_ = -1;
};

bool is_loopback(const in_addr& a) noexcept { return (ntohl(a.s_addr) >> 24) == 127; }

std::string ip_string(const in_addr& a) {
    char buf[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &a, buf, sizeof buf);
    return buf;
}

std::string addr_string(const sockaddr_in& sa) { return ip_string(sa.sin_addr) + ":" + std::to_string(ntohs(sa.sin_port)); }

bool same_addr(const sockaddr_in& x, const sockaddr_in& y) noexcept {
    return x.sin_addr.s_addr == y.sin_addr.s_addr && x.sin_port == y.sin_port;
}

// "a.b.c.d" only (no name lookup): for addresses read from the network.
bool parse_ip_port(std::string_view s, sockaddr_in& out) noexcept {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos || colon == 0 || colon + 1 >= s.size() || colon > 15) return false;
    char ip[16] = {};
    std::memcpy(ip, s.data(), colon);
    unsigned port = 0;
    for (char c : s.substr(colon + 1)) {
        if (c < '0' || c > '9') return false;
        port = port * 10 + static_cast<unsigned>(c - '0');
        if (port > 65535) return false;
    }
    if (port == 0) return false;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, ip, &sa.sin_addr) != 1) return false;
    out = sa;
    return true;
}

// "host" or "host:port" from the options; host may be a name (resolved once, IPv4).
// Port 0 is allowed only where the default port is 0 (filled in by start()).
sockaddr_in resolve(const std::string& s, std::uint16_t default_port, std::string_view what) {
    std::string host = s, port = std::to_string(default_port);
    if (auto colon = s.rfind(':'); colon != std::string::npos) {
        host = s.substr(0, colon);
        port = s.substr(colon + 1);
    }
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_DGRAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr)
        throw std::invalid_argument("plexus discovery: cannot resolve " + std::string(what) + " '" + s +
                                    "': " + ::gai_strerror(rc));
    sockaddr_in sa{};
    std::memcpy(&sa, res->ai_addr, sizeof sa);
    ::freeaddrinfo(res);
    if (sa.sin_port == 0 && default_port != 0) throw std::invalid_argument("plexus discovery: " + std::string(what) + " '" + s + "' has port 0");
    return sa;
}

// Replaces a wildcard host ("0.0.0.0", "*", "::", "[::]") in "scheme://host:port..." .
std::string rewrite_wildcard(const std::string& endpoint, const std::string& host) {
    auto sep = endpoint.find("://");
    if (sep == std::string::npos) return endpoint;
    auto start = sep + 3;
    std::size_t end;
    if (start < endpoint.size() && endpoint[start] == '[') {
        end = endpoint.find(']', start);
        if (end == std::string::npos) return endpoint;
        ++end;
    } else {
        end = endpoint.find_first_of(":/", start);
        if (end == std::string::npos) end = endpoint.size();
    }
    auto h = std::string_view(endpoint).substr(start, end - start);
    if (h != "0.0.0.0" && h != "*" && h != "[::]" && h != "[*]") return endpoint;
    return endpoint.substr(0, start) + host + endpoint.substr(end);
}

void set_int(int fd, int level, int opt, int value, const char* what) {
    if (::setsockopt(fd, level, opt, &value, sizeof value) != 0) throw_errno(std::string("setsockopt ") + what);
}

// Rough MessagePack size of a string (header + body).
std::size_t str_size(const std::string& s) noexcept { return (s.size() < 32 ? 1 : 2) + s.size(); }

// Greedy split of a payload into parts of at most `budget` encoded bytes each.
std::vector<payload> split(const payload& p, std::size_t budget, std::size_t max_count) {
    std::vector<payload> parts(1);
    constexpr std::size_t container_overhead = 1 + 3 * 3;  // array(3) + up to 16-bit counts
    std::size_t used = container_overhead;
    auto room = [&](std::size_t item) {
        if (used + item > budget && !parts.back().empty()) {
            parts.emplace_back();
            used = container_overhead;
        }
        used += item;
    };
    for (const auto& [k, v] : p.endpoints) {
        room(str_size(k) + str_size(v));
        parts.back().endpoints.emplace(k, v);
    }
    for (const auto& s : p.services) {
        room(1 + str_size(s.name) + str_size(s.version));
        parts.back().services.push_back(s);
    }
    for (const auto& t : p.topics) {
        room(str_size(t));
        parts.back().topics.push_back(t);
    }
    if (parts.size() > max_count)
        throw std::invalid_argument("plexus discovery: payload needs " + std::to_string(parts.size()) +
                                    " datagrams, more than " + std::to_string(max_count));
    return parts;
}

void merge(payload& into, payload&& part) {
    for (auto& [k, v] : part.endpoints) into.endpoints.insert_or_assign(k, std::move(v));
    for (auto& s : part.services) into.services.push_back(std::move(s));
    for (auto& t : part.topics) into.topics.push_back(std::move(t));
}

constexpr std::size_t gossip_entry_max = 1 + 18 + 9 + 1 + 21;  // array, bin16, uint64, "255.255.255.255:65535"

} // namespace

struct announced {
    payload user;                // as given to update_payload()
    std::vector<payload> parts;  // wildcard hosts rewritten to `advertise` if set
    std::uint64_t digest = 0;
};

struct peer_state {
    peer info;
    bool joined = false;      // the whole payload has arrived once
    std::uint64_t digest = 0; // of that payload, once joined
    sockaddr_in addr{};
    clock::time_point last_broadcast{};
    std::uint64_t pending_digest = 0;
    std::vector<std::optional<payload>> pending;
};

struct tombstone {
    std::uint64_t incarnation = 0;
    clock::time_point until{};
};

class agent_impl {
public:
    explicit agent_impl(beacon_options o);

    void start();
    void stop(bool leave);
    void post(std::function<void()> fn);
    void set_payload(payload p);
    // Agent thread only (posted commands).
    void post_announce() { send_round(clock::now()); }
    void drop(const node_id& id, leave_reason why);

    beacon_options opt;
    std::atomic<bool> running{false};
    std::thread thread;
    std::atomic<std::thread::id> thread_id{};
    bool started = false;
    std::mutex lifecycle_mu;
    std::uint16_t port = 0;

    mutable std::mutex table_mu;
    std::map<node_id, peer_state> table;

    mutable std::mutex payload_mu;
    std::shared_ptr<const announced> current;

    std::mutex handlers_mu;
    std::shared_ptr<const std::vector<std::pair<std::uint64_t, agent::handler>>> handlers =
        std::make_shared<std::vector<std::pair<std::uint64_t, agent::handler>>>();
    std::uint64_t next_token = 1;

    mutable std::mutex stats_mu;
    counters stats;
    void count(std::uint64_t counters::*field, std::uint64_t n = 1) {
        std::lock_guard lk(stats_mu);
        stats.*field += n;
    }
    // A datagram and its bytes under one lock (once per datagram on the hot path).
    void count_datagram(std::uint64_t counters::*datagrams, std::uint64_t counters::*bytes, std::uint64_t n) {
        std::lock_guard lk(stats_mu);
        ++(stats.*datagrams);
        stats.*bytes += n;
    }

private:
    void loop();
    void run_commands();
    void drain(int fd);
    void on_datagram(const std::uint8_t* data, std::size_t n, const sockaddr_in& from);
    void on_hello(beacon& b, const sockaddr_in& from, clock::time_point now);
    void on_leave(const beacon& b, clock::time_point now);
    void on_gossip(const gossip_entry& g, const sockaddr_in& from, clock::time_point now);
    // After on_hello has recorded the sender's address (st.info.host).
    void apply_payload(peer_state& st, payload p, std::uint64_t digest);
    clock::time_point expire(clock::time_point now);
    void send_round(clock::time_point now);
    void send_push(clock::time_point now);
    std::vector<std::pair<sockaddr_in, node_id>> direct_peers(clock::time_point now);
    void send_leave();
    // gossip: at most that many entries (fewer if the datagram would not fit).
    void send_beacon(const sockaddr_in& to, beacon_kind kind, bool broadcast, std::size_t gossip,
                     const node_id* exclude);
    void send_raw(const sockaddr_in& to, const std::vector<std::uint8_t>& bytes);
    std::vector<gossip_entry> pick_gossip(const node_id* exclude, std::size_t max);
    void emit(event_kind k, leave_reason r, const peer& p) { events_.push_back(event{k, r, p}); }
    void flush_events();
    milliseconds window(const peer_state& st) const { return st.info.interval * opt.missed; }

    std::vector<sockaddr_in> bcast_, seeds_;
    std::optional<sockaddr_in> mcast_;
    bool loopback_only_ = true;
    fd_guard listen_, uni_, wake_;

    std::mutex cmd_mu_;
    std::vector<std::function<void()>> cmds_;
    bool quit_ = false, leave_on_quit_ = true, accepting_ = false;

    // Agent thread only.
    std::map<node_id, tombstone> tombstones_;
    std::map<node_id, clock::time_point> contacted_;
    std::vector<event> events_;
    std::size_t gossip_cursor_ = 0;
    // Peers that joined since the last push: gossiped first, and pushed to the peers we
    // reach by unicast shortly after (coalesced), so seed-only clusters converge in
    // milliseconds rather than in gossip rounds.
    std::vector<node_id> recent_;
    clock::time_point push_at_ = clock::time_point::max();
    std::size_t part_budget_ = 0;
};

agent_impl::agent_impl(beacon_options o) : opt(std::move(o)) {
    auto bad = [](const std::string& m) { throw std::invalid_argument("plexus discovery: " + m); };
    if (opt.cluster.empty() || opt.cluster.size() > max_cluster_size) bad("cluster must be 1..64 bytes");
    if (is_nil(opt.id)) opt.id = random_node_id();
    if (opt.name.empty()) opt.name = "node-" + to_hex(opt.id).substr(0, 8);
    if (opt.name.size() > max_name_size) bad("name longer than 128 bytes");
    if (opt.incarnation == 0)
        opt.incarnation = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
                .count());
    if (opt.interval < milliseconds(10) || opt.interval > milliseconds(3'600'000)) bad("interval must be 10 ms..1 h");
    if (opt.missed < 1) bad("missed must be at least 1");
    if (opt.max_datagram < min_datagram_size || opt.max_datagram > max_datagram_size)
        bad("max_datagram must be 1000..1400");

    for (const auto& b : opt.broadcast) bcast_.push_back(resolve(b, opt.port, "broadcast address"));
    // A seed without a port is on our own discovery port.
    for (const auto& s : opt.seeds) seeds_.push_back(resolve(s, opt.port ? opt.port : default_port, "seed"));
    for (const auto& sa : bcast_) loopback_only_ = loopback_only_ && is_loopback(sa.sin_addr);
    for (const auto& sa : seeds_) loopback_only_ = loopback_only_ && is_loopback(sa.sin_addr);
    if (opt.multicast) {
        sockaddr_in g = resolve(opt.multicast->group, opt.port, "multicast group");
        if ((ntohl(g.sin_addr.s_addr) >> 28) != 14) bad("'" + opt.multicast->group + "' is not a multicast group");
        in_addr itf{};
        if (::inet_pton(AF_INET, opt.multicast->interface.c_str(), &itf) != 1)
            bad("multicast interface must be an IPv4 address: '" + opt.multicast->interface + "'");
        if (opt.multicast->ttl < 0 || opt.multicast->ttl > 255) bad("multicast ttl must be 0..255");
        loopback_only_ = loopback_only_ && is_loopback(itf) && opt.multicast->ttl == 0;
        mcast_ = g;
    }

    // Header bytes of the largest part header this node can send, with room for two
    // gossip entries, leave the budget for payload items.
    beacon probe;
    probe.cluster = opt.cluster;
    probe.name = opt.name;
    probe.id = opt.id;
    probe.incarnation = opt.incarnation;
    probe.interval_ms = static_cast<std::uint64_t>(opt.interval.count());
    probe.flags = flag_broadcast;
    probe.parts = max_parts;
    probe.part = max_parts - 1;
    probe.digest = ~std::uint64_t{0};
    const std::size_t header = encode(probe).size();
    part_budget_ = opt.max_datagram - header - 2 * gossip_entry_max - 8;
    set_payload(opt.announce);
}

void agent_impl::set_payload(payload p) {
    validate(p);
    auto a = std::make_shared<announced>();
    payload wire = p;
    if (!opt.advertise.empty())
        for (auto& [k, v] : wire.endpoints) v = rewrite_wildcard(v, opt.advertise);
    a->digest = payload_digest(wire);
    a->parts = split(wire, part_budget_, max_parts);
    a->user = std::move(p);
    std::lock_guard lk(payload_mu);
    current = std::move(a);
}

void agent_impl::start() {
    std::lock_guard lk(lifecycle_mu);
    if (started) throw std::logic_error("plexus discovery: agent already started (an agent starts once)");

    fd_guard l(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (l.get() < 0) throw_errno("socket");
    set_int(l.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    set_int(l.get(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    set_int(l.get(), SOL_SOCKET, SO_RCVBUF, 1 << 20, "SO_RCVBUF");
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_ANY);
    any.sin_port = htons(opt.port);
    if (::bind(l.get(), reinterpret_cast<sockaddr*>(&any), sizeof any) != 0)
        throw_errno("bind 0.0.0.0:" + std::to_string(opt.port));
#ifdef IP_MULTICAST_ALL
    // Linux delivers to a wildcard listener the multicast of every group any socket on
    // the host joined on this port; only the groups this agent joins are its scope.
    set_int(l.get(), IPPROTO_IP, IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL");
#endif
    socklen_t len = sizeof any;
    ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&any), &len);
    port = ntohs(any.sin_port);
    if (opt.port == 0)
        for (auto& sa : bcast_) sa.sin_port = htons(port);
    if (opt.multicast) {
        ip_mreq mreq{};
        mreq.imr_multiaddr = mcast_->sin_addr;
        ::inet_pton(AF_INET, opt.multicast->interface.c_str(), &mreq.imr_interface);
        if (::setsockopt(l.get(), IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) != 0)
            throw_errno("join multicast group " + opt.multicast->group);
        if (opt.port == 0) mcast_->sin_port = htons(port);
    }

    fd_guard u(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (u.get() < 0) throw_errno("socket");
    set_int(u.get(), SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    set_int(u.get(), SOL_SOCKET, SO_RCVBUF, 1 << 20, "SO_RCVBUF");
    sockaddr_in self{};
    self.sin_family = AF_INET;
    self.sin_addr.s_addr = htonl(loopback_only_ ? INADDR_LOOPBACK : INADDR_ANY);
    if (::bind(u.get(), reinterpret_cast<sockaddr*>(&self), sizeof self) != 0) throw_errno("bind unicast socket");
    if (opt.multicast) {
        in_addr itf{};
        ::inet_pton(AF_INET, opt.multicast->interface.c_str(), &itf);
        if (::setsockopt(u.get(), IPPROTO_IP, IP_MULTICAST_IF, &itf, sizeof itf) != 0) throw_errno("IP_MULTICAST_IF");
        unsigned char ttl = static_cast<unsigned char>(opt.multicast->ttl), loop = 1;
        if (::setsockopt(u.get(), IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0) throw_errno("IP_MULTICAST_TTL");
        if (::setsockopt(u.get(), IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0)
            throw_errno("IP_MULTICAST_LOOP");
    }

    fd_guard w(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (w.get() < 0) throw_errno("eventfd");

    listen_ = std::move(l);
    uni_ = std::move(u);
    wake_ = std::move(w);
    started = true;
    {
        std::lock_guard clk(cmd_mu_);
        quit_ = false;
        accepting_ = true;
    }
    send_round(clock::now());  // before the thread exists: start() returns with the first beacon out
    running = true;
    thread = std::thread([this] { loop(); });
}

void agent_impl::stop(bool leave) {
    if (thread_id.load() == std::this_thread::get_id())
        throw std::logic_error("plexus discovery: stop()/halt() called from an event handler");
    std::lock_guard lk(lifecycle_mu);
    if (!thread.joinable()) return;
    {
        std::lock_guard clk(cmd_mu_);
        quit_ = true;
        accepting_ = false;
        leave_on_quit_ = leave;
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof one);
    }
    thread.join();
    running = false;
    listen_.reset();
    uni_.reset();
    wake_.reset();
    std::lock_guard tlk(table_mu);
    table.clear();
}

void agent_impl::post(std::function<void()> fn) {
    // Under cmd_mu_: stop() closes the eventfd only after it has stopped accepting.
    std::lock_guard lk(cmd_mu_);
    if (!accepting_) return;
    cmds_.push_back(std::move(fn));
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof one);
}

void agent_impl::loop() {
    thread_id = std::this_thread::get_id();
    auto next_beacon = clock::now() + opt.interval;
    auto next_expiry = next_beacon;
    for (;;) {
        auto now = clock::now();
        auto wake_at = std::min({next_beacon, next_expiry, push_at_});
        int timeout = 0;
        if (wake_at > now)
            timeout = static_cast<int>(std::chrono::ceil<milliseconds>(wake_at - now).count());
        pollfd fds[3] = {{wake_.get(), POLLIN, 0}, {listen_.get(), POLLIN, 0}, {uni_.get(), POLLIN, 0}};
        int rc = ::poll(fds, 3, timeout);
        if (rc < 0 && errno != EINTR) break;  // cannot happen with valid descriptors
        if (rc > 0 && (fds[0].revents & POLLIN)) {
            std::uint64_t v;
            [[maybe_unused]] auto n = ::read(wake_.get(), &v, sizeof v);
            run_commands();
            std::lock_guard lk(cmd_mu_);
            if (quit_) break;
        }
        if (rc > 0 && (fds[1].revents & POLLIN)) drain(listen_.get());
        if (rc > 0 && (fds[2].revents & POLLIN)) drain(uni_.get());
        now = clock::now();
        if (now >= next_beacon) {
            send_round(now);
            next_beacon += opt.interval;
            if (next_beacon <= now) next_beacon = now + opt.interval;  // we were stalled: do not burst
        }
        if (now >= push_at_) send_push(now);
        next_expiry = expire(now);
        flush_events();
    }
    if (leave_on_quit_) send_leave();
    flush_events();
    thread_id = std::thread::id{};
}

void agent_impl::run_commands() {
    std::vector<std::function<void()>> cmds;
    {
        std::lock_guard lk(cmd_mu_);
        cmds.swap(cmds_);
    }
    for (auto& c : cmds) c();
    flush_events();
}

void agent_impl::drain(int fd) {
    // Bounded per wake-up so that a flood cannot starve our own beacons and expiry.
    std::uint8_t buf[max_datagram_size + 1];
    for (int i = 0; i < 256; ++i) {
        sockaddr_in from{};
        socklen_t len = sizeof from;
        ssize_t n = ::recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC, reinterpret_cast<sockaddr*>(&from), &len);
        if (n < 0) return;  // EAGAIN, or an ICMP error queued on the socket: nothing to do
        count_datagram(&counters::received, &counters::received_bytes, static_cast<std::uint64_t>(n));
        if (static_cast<std::size_t>(n) > max_datagram_size) {
            count(&counters::oversized);
            continue;
        }
        on_datagram(buf, static_cast<std::size_t>(n), from);
        flush_events();
    }
}

void agent_impl::on_datagram(const std::uint8_t* data, std::size_t n, const sockaddr_in& from) {
    if (loopback_only_ && !is_loopback(from.sin_addr)) {
        count(&counters::out_of_scope);
        return;
    }
    beacon b;
    switch (decode({data, n}, b)) {
    case decode_error::none: break;
    case decode_error::oversized: count(&counters::oversized); return;
    case decode_error::malformed: count(&counters::malformed); return;
    case decode_error::wrong_magic: count(&counters::wrong_magic); return;
    case decode_error::unsupported_version: count(&counters::unsupported_version); return;
    case decode_error::unknown_kind: count(&counters::unknown_kind); return;
    }
    if (b.cluster != opt.cluster) {
        count(&counters::foreign_cluster);
        return;
    }
    if (b.id == opt.id) {
        count(&counters::self);
        return;
    }
    count(&counters::accepted);
    auto now = clock::now();
    if (b.kind == beacon_kind::leave)
        on_leave(b, now);
    else
        on_hello(b, from, now);
}

void agent_impl::on_hello(beacon& b, const sockaddr_in& from, clock::time_point now) {
    bool fresh = false;
    {
        std::lock_guard lk(table_mu);
        if (auto t = tombstones_.find(b.id); t != tombstones_.end() && b.incarnation <= t->second.incarnation) {
            if (now < t->second.until) {
                count(&counters::stale);
                return;
            }
            tombstones_.erase(t);
        }
        auto it = table.find(b.id);
        if (it == table.end()) {
            if (table.size() >= opt.max_peers) {
                count(&counters::table_full);
                return;
            }
            it = table.emplace(b.id, peer_state{}).first;
            fresh = true;
        } else if (b.incarnation < it->second.info.incarnation) {
            count(&counters::stale);
            return;
        } else if (b.incarnation > it->second.info.incarnation) {
            if (it->second.joined) emit(event_kind::leave, leave_reason::replaced, it->second.info);
            it->second = peer_state{};
            fresh = true;
        }
        peer_state& st = it->second;
        const bool renamed = st.joined && st.info.name != b.name;
        if (fresh) st.info.first_seen = now;
        st.info.id = b.id;
        st.info.name = b.name;
        st.info.incarnation = b.incarnation;
        st.info.interval = milliseconds(b.interval_ms);
        st.info.last_seen = now;
        if (!same_addr(st.addr, from)) {
            st.addr = from;
            st.info.address = addr_string(from);
            st.info.host = ip_string(from.sin_addr);
        }
        if (b.flags & flag_broadcast) st.last_broadcast = now;

        if (st.joined && st.digest == b.digest) {
            if (renamed) emit(event_kind::update, leave_reason::none, st.info);
        } else if (b.parts == 1) {
            apply_payload(st, std::move(b.body), b.digest);
        } else {
            if (st.pending_digest != b.digest || st.pending.size() != b.parts) {
                st.pending_digest = b.digest;
                st.pending.assign(b.parts, std::nullopt);
            }
            st.pending[b.part] = std::move(b.body);
            if (std::all_of(st.pending.begin(), st.pending.end(), [](const auto& x) { return x.has_value(); })) {
                payload whole;
                for (auto& x : st.pending) merge(whole, std::move(*x));
                st.pending.clear();
                apply_payload(st, std::move(whole), b.digest);
            }
        }
    }
    if (fresh) {
        recent_.push_back(b.id);
        if (push_at_ == clock::time_point::max()) push_at_ = now + milliseconds(5);
        // Answer at once so that the new peer knows us within a round trip, not an interval.
        // Gossip only to a peer that reached us by unicast: one whose broadcast reached
        // us reaches everyone we know the same way.
        send_beacon(from, beacon_kind::hello, false, (b.flags & flag_broadcast) ? 0 : opt.gossip_max, &b.id);
        count(&counters::answers);
    }
    for (const auto& g : b.gossip) on_gossip(g, from, now);
}

void agent_impl::apply_payload(peer_state& st, payload p, std::uint64_t digest) {
    for (auto& [k, v] : p.endpoints) v = rewrite_wildcard(v, st.info.host);
    st.info.endpoints = std::move(p.endpoints);
    st.info.services = std::move(p.services);
    st.info.topics = std::move(p.topics);
    st.digest = digest;
    emit(st.joined ? event_kind::update : event_kind::join, leave_reason::none, st.info);
    st.joined = true;
}

void agent_impl::on_leave(const beacon& b, clock::time_point now) {
    std::lock_guard lk(table_mu);
    auto it = table.find(b.id);
    if (it != table.end() && b.incarnation < it->second.info.incarnation) {
        count(&counters::stale);
        return;
    }
    // A hello of this incarnation still in flight must not bring it back.
    milliseconds hold = milliseconds(b.interval_ms) * opt.missed;
    tombstones_[b.id] = tombstone{b.incarnation, now + hold};
    if (it == table.end()) return;
    if (it->second.joined) emit(event_kind::leave, leave_reason::graceful, it->second.info);
    table.erase(it);
}

void agent_impl::on_gossip(const gossip_entry& g, const sockaddr_in& from, clock::time_point now) {
    if (g.id == opt.id) return;
    {
        std::lock_guard lk(table_mu);
        if (auto it = table.find(g.id); it != table.end() && it->second.info.incarnation >= g.incarnation) return;
        if (auto t = tombstones_.find(g.id); t != tombstones_.end() && g.incarnation <= t->second.incarnation) return;
    }
    sockaddr_in to{};
    if (!parse_ip_port(g.address, to)) return;
    // The gossiper saw it on its loopback: it lives on the gossiper's host.
    if (is_loopback(to.sin_addr) && !is_loopback(from.sin_addr)) to.sin_addr = from.sin_addr;
    if (loopback_only_ && !is_loopback(to.sin_addr)) return;
    auto& last = contacted_[g.id];
    if (last != clock::time_point{} && now - last < opt.interval) return;
    last = now;
    send_beacon(to, beacon_kind::hello, false, opt.gossip_max, &g.id);
    count(&counters::gossip_contacts);
}

void agent_impl::drop(const node_id& id, leave_reason why) {
    std::lock_guard lk(table_mu);
    auto it = table.find(id);
    if (it == table.end()) return;
    if (why == leave_reason::dead)
        tombstones_[id] = tombstone{it->second.info.incarnation, clock::now() + window(it->second)};
    if (it->second.joined) emit(event_kind::leave, why, it->second.info);
    table.erase(it);
}

clock::time_point agent_impl::expire(clock::time_point now) {
    auto next = now + opt.interval;
    {
        std::lock_guard lk(table_mu);
        for (auto it = table.begin(); it != table.end();) {
            auto deadline = it->second.info.last_seen + window(it->second);
            if (deadline <= now) {
                if (it->second.joined) emit(event_kind::leave, leave_reason::expired, it->second.info);
                it = table.erase(it);
            } else {
                next = std::min(next, deadline);
                ++it;
            }
        }
    }
    std::erase_if(tombstones_, [&](const auto& kv) { return kv.second.until <= now; });
    std::erase_if(contacted_, [&](const auto& kv) { return now - kv.second > opt.interval * 4; });
    return next;
}

std::vector<gossip_entry> agent_impl::pick_gossip(const node_id* exclude, std::size_t max) {
    std::vector<gossip_entry> out;
    if (max == 0) return out;
    std::lock_guard lk(table_mu);
    std::vector<const peer_state*> known;
    for (const auto& [id, st] : table)
        if (st.joined && (exclude == nullptr || id != *exclude)) known.push_back(&st);
    if (known.empty()) return out;
    auto add = [&](const peer_state* st) {
        for (const auto& g : out)
            if (g.id == st->info.id) return;
        out.push_back(gossip_entry{st->info.id, st->info.incarnation, st->info.address});
    };
    for (auto it = recent_.rbegin(); it != recent_.rend() && out.size() < max; ++it)
        if (auto f = table.find(*it); f != table.end() && f->second.joined && (exclude == nullptr || *it != *exclude))
            add(&f->second);
    for (std::size_t i = 0; i < known.size() && out.size() < max; ++i)
        add(known[(gossip_cursor_ + i) % known.size()]);
    return out;
}

void agent_impl::send_round(clock::time_point now) {
    for (const auto& t : bcast_) send_beacon(t, beacon_kind::hello, true, 0, nullptr);
    if (mcast_) send_beacon(*mcast_, beacon_kind::hello, true, 0, nullptr);
    for (const auto& s : seeds_) send_beacon(s, beacon_kind::hello, false, opt.gossip_max, nullptr);
    // Joins travel in answers and pushes with full gossip; the periodic beacons to direct
    // peers carry a couple of entries in rotation, enough to repair a lost datagram
    // without making every unicast beacon large.
    const std::size_t periodic = std::min<std::size_t>(2, opt.gossip_max);
    for (const auto& [addr, id] : direct_peers(now)) send_beacon(addr, beacon_kind::hello, false, periodic, &id);
    gossip_cursor_ += periodic;
}

// Peers that do not hear our broadcasts (we do not hear theirs, or we have none) get
// unicast beacons: that keeps seed- and gossip-only clusters alive.
std::vector<std::pair<sockaddr_in, node_id>> agent_impl::direct_peers(clock::time_point now) {
    const bool no_broadcast = bcast_.empty() && !mcast_;
    std::vector<std::pair<sockaddr_in, node_id>> direct;
    std::lock_guard lk(table_mu);
    for (const auto& [id, st] : table)
        if (no_broadcast || now - st.last_broadcast > window(st)) direct.emplace_back(st.addr, id);
    return direct;
}

void agent_impl::send_push(clock::time_point now) {
    for (const auto& [addr, id] : direct_peers(now)) {
        // The peers that just joined already have our answer.
        if (std::find(recent_.begin(), recent_.end(), id) != recent_.end()) continue;
        send_beacon(addr, beacon_kind::hello, false, opt.gossip_max, &id);
    }
    recent_.clear();
    push_at_ = clock::time_point::max();
}

void agent_impl::send_leave() {
    for (const auto& t : bcast_) send_beacon(t, beacon_kind::leave, true, 0, nullptr);
    if (mcast_) send_beacon(*mcast_, beacon_kind::leave, true, 0, nullptr);
    for (const auto& s : seeds_) send_beacon(s, beacon_kind::leave, false, 0, nullptr);
    for (const auto& [addr, id] : direct_peers(clock::now())) send_beacon(addr, beacon_kind::leave, false, 0, nullptr);
}

void agent_impl::send_beacon(const sockaddr_in& to, beacon_kind kind, bool broadcast, std::size_t gossip,
                             const node_id* exclude) {
    std::shared_ptr<const announced> a;
    {
        std::lock_guard lk(payload_mu);
        a = current;
    }
    beacon b;
    b.kind = kind;
    b.cluster = opt.cluster;
    b.id = opt.id;
    b.incarnation = opt.incarnation;
    b.name = opt.name;
    b.interval_ms = static_cast<std::uint64_t>(opt.interval.count());
    b.flags = broadcast ? flag_broadcast : 0;
    b.digest = a->digest;
    if (kind == beacon_kind::leave) {
        send_raw(to, encode(b));
        return;
    }
    b.parts = a->parts.size();
    for (std::size_t i = 0; i < a->parts.size(); ++i) {
        b.part = i;
        b.body = a->parts[i];
        b.gossip.clear();
        if (gossip > 0 && i == 0) b.gossip = pick_gossip(exclude, gossip);
        auto bytes = encode(b);
        while (bytes.size() > opt.max_datagram && !b.gossip.empty()) {
            b.gossip.pop_back();
            bytes = encode(b);
        }
        send_raw(to, bytes);
    }
}

void agent_impl::send_raw(const sockaddr_in& to, const std::vector<std::uint8_t>& bytes) {
    ssize_t n = ::sendto(uni_.get(), bytes.data(), bytes.size(), MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&to),
                         sizeof to);
    if (n < 0) {
        count(&counters::send_errors);
        return;
    }
    count_datagram(&counters::sent, &counters::sent_bytes, static_cast<std::uint64_t>(n));
}

void agent_impl::flush_events() {
    if (events_.empty()) return;
    std::vector<event> evs;
    evs.swap(events_);
    std::shared_ptr<const std::vector<std::pair<std::uint64_t, agent::handler>>> hs;
    {
        std::lock_guard lk(handlers_mu);
        hs = handlers;
    }
    for (const auto& e : evs)
        for (const auto& [token, h] : *hs) {
            try {
                h(e);
            } catch (...) {
                // A handler's exception must not kill the agent thread; it is the handler's bug.
            }
        }
}

} // namespace detail

// ---- agent ----

agent::agent(beacon_options options) : impl_(std::make_unique<detail::agent_impl>(std::move(options))) {}

agent::~agent() {
    try {
        impl_->stop(true);
    } catch (...) {
    }
}

void agent::start() { impl_->start(); }
void agent::stop() { impl_->stop(true); }
void agent::halt() { impl_->stop(false); }
bool agent::running() const noexcept { return impl_->running; }
const node_id& agent::id() const noexcept { return impl_->opt.id; }
std::uint64_t agent::incarnation() const noexcept { return impl_->opt.incarnation; }
const std::string& agent::name() const noexcept { return impl_->opt.name; }
const std::string& agent::cluster() const noexcept { return impl_->opt.cluster; }
std::uint16_t agent::port() const noexcept { return impl_->port; }

std::uint64_t agent::on_event(handler h) {
    std::lock_guard lk(impl_->handlers_mu);
    auto next = std::make_shared<std::vector<std::pair<std::uint64_t, handler>>>(*impl_->handlers);
    auto token = impl_->next_token++;
    next->emplace_back(token, std::move(h));
    impl_->handlers = std::move(next);
    return token;
}

void agent::remove_handler(std::uint64_t token) {
    std::lock_guard lk(impl_->handlers_mu);
    auto next = std::make_shared<std::vector<std::pair<std::uint64_t, handler>>>(*impl_->handlers);
    std::erase_if(*next, [&](const auto& p) { return p.first == token; });
    impl_->handlers = std::move(next);
}

std::vector<peer> agent::peers() const {
    std::vector<peer> out;
    {
        std::lock_guard lk(impl_->table_mu);
        for (const auto& [id, st] : impl_->table)
            if (st.joined) out.push_back(st.info);
    }
    std::sort(out.begin(), out.end(), [](const peer& x, const peer& y) {
        return x.name != y.name ? x.name < y.name : x.id < y.id;
    });
    return out;
}

std::optional<peer> agent::find(const node_id& id) const {
    std::lock_guard lk(impl_->table_mu);
    auto it = impl_->table.find(id);
    if (it == impl_->table.end() || !it->second.joined) return std::nullopt;
    return it->second.info;
}

std::vector<peer> agent::find_service(std::string_view service) const {
    auto all = peers();
    std::erase_if(all, [&](const peer& p) { return p.find_service(service) == nullptr; });
    return all;
}

void agent::update_payload(payload p) {
    impl_->set_payload(std::move(p));
    auto* impl = impl_.get();
    impl_->post([impl] { impl->post_announce(); });
}

payload agent::current_payload() const {
    std::lock_guard lk(impl_->payload_mu);
    return impl_->current->user;
}

void agent::mark_dead(const node_id& id) {
    auto* impl = impl_.get();
    impl_->post([impl, id] { impl->drop(id, leave_reason::dead); });
}

void agent::forget(const node_id& id) {
    auto* impl = impl_.get();
    impl_->post([impl, id] { impl->drop(id, leave_reason::forgotten); });
}

counters agent::stats() const {
    std::lock_guard lk(impl_->stats_mu);
    return impl_->stats;
}

} // namespace plexus::discovery
