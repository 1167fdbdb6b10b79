// Typed bodies: user types <-> MessagePack bytes through msgpack-c adaptors.
//
//   struct add_req { int a = 0; int b = 0; MSGPACK_DEFINE_MAP(a, b) };
//   std::string bytes = plexus::pack(add_req{1, 2});
//   add_req r = plexus::unpack<add_req>(bytes);   // throws plexus::error(invalid_argument)
//
// MSGPACK_DEFINE_MAP is preferred over MSGPACK_DEFINE: a map carries field names, so
// bodies read well as JSON in the CLI and `describe` can show their shape.
#pragma once

#ifndef MSGPACK_NO_BOOST
#define MSGPACK_NO_BOOST
#endif
#include <msgpack.hpp>

#include <string>
#include <string_view>
#include <type_traits>

#include <plexus/error.hpp>

namespace plexus {

template <class T>
[[nodiscard]] std::string pack(const T& value) {
    msgpack::sbuffer buf;
    msgpack::pack(buf, value);
    return std::string(buf.data(), buf.size());
}

template <class T>
[[nodiscard]] T unpack(std::string_view bytes) {
    try {
        msgpack::object_handle oh = msgpack::unpack(bytes.data(), bytes.size());
        return oh.get().as<T>();
    } catch (const plexus::error&) {
        throw;
    } catch (const std::exception& e) {
        throw plexus::error(code::invalid_argument, std::string("body does not decode as the expected type: ") + e.what());
    }
}

// MessagePack bytes of a default-constructed T: a sample that `describe` shows as
// the shape of a body. Empty when T is not default-constructible.
template <class T>
[[nodiscard]] std::string shape_of() {
    if constexpr (std::is_void_v<T>) {
        return std::string(1, '\xc0'); // nil
    } else if constexpr (std::is_default_constructible_v<T>) {
        return pack(T{});
    } else {
        return {};
    }
}

} // namespace plexus
