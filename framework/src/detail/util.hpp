// Small internal building blocks of the node runtime.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include <plexus/envelope.hpp>
#include <plexus/node.hpp>

namespace plexus::detail {

// Encodes straight into memory that `place(arg, size)` returns (envelope.cpp): what
// the senders use to write an envelope into the message libzmq will send, with no
// intermediate string and no copy.
void encode_into(const envelope_view& e, char* (*place)(void*, std::size_t), void* arg);

inline zmq::message_t encode_message(const envelope_view& e) {
    zmq::message_t m;
    encode_into(
        e,
        [](void* arg, std::size_t size) {
            auto* msg = static_cast<zmq::message_t*>(arg);
            msg->rebuild(size);
            return static_cast<char*>(msg->data());
        },
        &m);
    return m;
}

// An eventfd that wakes the I/O thread's zmq_poll (polled as a raw fd beside the
// sockets). Measured cheaper than a second inproc PAIR socket (shared/FACTS.md).
//
// Producers call notify() after queueing work; it writes the eventfd only when the
// I/O thread has said it is about to sleep (arm()), so a busy I/O thread, which looks
// at its queues on every turn anyway, costs its producers no syscall. The I/O thread:
// arm(); if any queue has work, poll without blocking; poll; disarm(). Both sides use
// sequentially consistent operations (a Dekker handshake with the queues' flags): either
// the I/O thread sees the work, or the producer sees it armed and writes.
class wakeup {
public:
    wakeup() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
        if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
    }
    ~wakeup() { ::close(fd_); }
    wakeup(const wakeup&) = delete;
    wakeup& operator=(const wakeup&) = delete;

    void notify() noexcept {
        if (armed_.load(std::memory_order_seq_cst) && armed_.exchange(false, std::memory_order_seq_cst)) signal();
    }
    void arm() noexcept { armed_.store(true, std::memory_order_seq_cst); }
    void disarm() noexcept { armed_.store(false, std::memory_order_relaxed); }
    void drain() noexcept {
        std::uint64_t v;
        [[maybe_unused]] auto n = ::read(fd_, &v, sizeof v);
    }
    [[nodiscard]] int fd() const noexcept { return fd_; }

private:
    void signal() noexcept {
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(fd_, &one, sizeof one);
    }
    int fd_;
    std::atomic<bool> armed_{false};
};

// Whether a queue may have work, for the I/O thread's check between arm() and poll;
// set under the queue's lock by producers, cleared by the consumer when it takes all.
class work_flag {
public:
    void set() noexcept { v_.store(true, std::memory_order_seq_cst); }
    void clear() noexcept { v_.store(false, std::memory_order_relaxed); }
    [[nodiscard]] bool get() const noexcept { return v_.load(std::memory_order_seq_cst); }

private:
    std::atomic<bool> v_{false};
};

// An object kept per thread and reused call after call, so that the strings it holds
// keep their storage (a context's headers, the headers of a call being made); a use
// nested inside another on the same thread gets a fresh object. `Tag` tells the uses
// apart.
template <class T, class Tag>
class per_thread {
public:
    per_thread() {
        if (!busy_) {
            busy_ = true;
            owns_ = true;
            p_ = &slot_;
        } else {
            p_ = &fresh_.emplace();
        }
    }
    ~per_thread() {
        if (owns_) busy_ = false;
    }
    per_thread(const per_thread&) = delete;
    per_thread& operator=(const per_thread&) = delete;
    T& get() noexcept { return *p_; }

private:
    static inline thread_local T slot_{};
    static inline thread_local bool busy_ = false;
    std::optional<T> fresh_;
    T* p_ = nullptr;
    bool owns_ = false;
};

// A move-only nullary task (std::function needs copyable callables; C++20 has no
// std::move_only_function).
class task {
public:
    task() = default;
    template <class F>
    task(F f) : impl_(std::make_unique<model<F>>(std::move(f))) {} // NOLINT(implicit)
    void operator()() { impl_->run(); }
    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

private:
    struct concept_t {
        virtual ~concept_t() = default;
        virtual void run() = 0;
    };
    template <class F>
    struct model final : concept_t {
        explicit model(F f) : fn(std::move(f)) {}
        void run() override { fn(); }
        F fn;
    };
    std::unique_ptr<concept_t> impl_;
};

// Multi-producer queue drained in batches by one consumer (the I/O thread), which is
// woken through `wakeup` only when it sleeps.
template <class T>
class batch_queue {
public:
    explicit batch_queue(wakeup& w) : wake_(&w) {}
    void push(T item) {
        {
            std::lock_guard lk(mu_);
            items_.push_back(std::move(item));
            has_work_.set();
        }
        wake_->notify();
    }
    // Swaps the queued items into `out`, which must be empty; the consumer keeps one
    // vector and clears it after use, so in steady state neither side allocates.
    void take(std::vector<T>& out) {
        std::lock_guard lk(mu_);
        out.swap(items_);
        has_work_.clear();
    }
    [[nodiscard]] bool has_work() const noexcept { return has_work_.get(); }

private:
    wakeup* wake_;
    std::mutex mu_;
    std::vector<T> items_;
    work_flag has_work_;
};

// Receives one message of exactly two frames without blocking (a reply ["", envelope]
// or an event [topic, envelope]). A message of another length is drained and reported
// as bad_shape, so one malformed message never desynchronises the next.
enum class two_frames { none, ok, bad_shape };
inline two_frames recv_two(zmq::socket_t& s, zmq::message_t& first, zmq::message_t& second) {
    if (!s.recv(first, zmq::recv_flags::dontwait)) return two_frames::none;
    bool ok = first.more();
    if (first.more()) (void)s.recv(second);
    bool more = second.more();
    while (more) {
        ok = false;
        zmq::message_t extra;
        (void)s.recv(extra);
        more = extra.more();
    }
    return ok ? two_frames::ok : two_frames::bad_shape;
}

// logfmt lines: ts=... level=... node=... msg="..." key=value
class logger {
public:
    logger(std::string node, log_level level, std::function<void(log_level, std::string_view)> sink);
    [[nodiscard]] bool enabled(log_level l) const noexcept { return l >= level_ && level_ != log_level::off; }
    // kv: pre-formatted ` key=value` pairs (use kv() to quote).
    void write(log_level l, std::string_view msg, std::string_view kvs = {}) const;

private:
    std::string node_;
    log_level level_;
    std::function<void(log_level, std::string_view)> sink_;
};

// " key=value", quoting the value when it holds spaces, quotes or '='.
std::string kv(std::string_view key, std::string_view value);
std::string kv(std::string_view key, std::uint64_t value);
std::string hex(std::string_view bytes);

} // namespace plexus::detail
