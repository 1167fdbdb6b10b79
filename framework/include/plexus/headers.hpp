// Context headers: the string key/value pairs an envelope carries (user-id,
// groups, authorization, traceparent, ...).
//
// A flat vector with linear lookup: envelopes carry a handful of headers, and a
// vector beats a node-based map for that size on every operation. Keys are compared
// exactly; by convention they are lower-case ASCII (docs/PROTOCOL.md).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace plexus {

class headers {
public:
    using value_type = std::pair<std::string, std::string>;
    using const_iterator = std::vector<value_type>::const_iterator;

    headers() = default;
    headers(std::initializer_list<value_type> init) {
        for (const auto& kv : init) set(kv.first, kv.second);
    }

    // Adds or replaces.
    void set(std::string_view key, std::string_view value) {
        for (auto& kv : items_)
            if (kv.first == key) {
                kv.second.assign(value);
                return;
            }
        items_.emplace_back(std::string(key), std::string(value));
    }
    // Appends without looking for an existing key; for decoders filling an empty set.
    void append(std::string_view key, std::string_view value) {
        items_.emplace_back(std::string(key), std::string(value));
    }
    [[nodiscard]] std::optional<std::string_view> get(std::string_view key) const noexcept {
        for (const auto& kv : items_)
            if (kv.first == key) return std::string_view(kv.second);
        return std::nullopt;
    }
    // The value, to change in place; nullptr when absent.
    [[nodiscard]] std::string* find(std::string_view key) noexcept {
        for (auto& kv : items_)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
    [[nodiscard]] std::string_view get_or(std::string_view key, std::string_view dflt) const noexcept {
        auto v = get(key);
        return v ? *v : dflt;
    }
    [[nodiscard]] bool contains(std::string_view key) const noexcept { return get(key).has_value(); }
    // Returns whether the key was present.
    bool erase(std::string_view key) {
        for (auto it = items_.begin(); it != items_.end(); ++it)
            if (it->first == key) {
                items_.erase(it);
                return true;
            }
        return false;
    }
    // Replaces the contents with `pairs` (key/value pairs of anything a string_view
    // is made from), reusing the storage of the strings already held: refilling one
    // headers object per message allocates nothing once it has grown.
    template <class Pairs>
    void assign(const Pairs& pairs) {
        std::size_t n = 0;
        for (const auto& [k, v] : pairs) {
            if (n < items_.size()) {
                items_[n].first.assign(std::string_view(k));
                items_[n].second.assign(std::string_view(v));
            } else {
                items_.emplace_back(std::string(std::string_view(k)), std::string(std::string_view(v)));
            }
            ++n;
        }
        items_.resize(n);
    }
    void clear() noexcept { items_.clear(); }
    void reserve(std::size_t n) { items_.reserve(n); }

    [[nodiscard]] bool empty() const noexcept { return items_.empty(); }
    [[nodiscard]] std::size_t size() const noexcept { return items_.size(); }
    [[nodiscard]] const_iterator begin() const noexcept { return items_.begin(); }
    [[nodiscard]] const_iterator end() const noexcept { return items_.end(); }

    // Sum of key and value lengths: what the size cap on headers counts.
    [[nodiscard]] std::size_t byte_size() const noexcept {
        std::size_t n = 0;
        for (const auto& kv : items_) n += kv.first.size() + kv.second.size();
        return n;
    }

    friend bool operator==(const headers& a, const headers& b) { return a.items_ == b.items_; }

private:
    std::vector<value_type> items_;
};

} // namespace plexus
