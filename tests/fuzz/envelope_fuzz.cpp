// libFuzzer target for the envelope reader (clang only):
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iframework/include \
//       tests/fuzz/envelope_fuzz.cpp framework/src/envelope.cpp framework/src/error.cpp -o envelope_fuzz
//   mkdir -p corpus && for f in tests/vectors/*.hex; do xxd -r -p "$f" > "corpus/$(basename "$f" .hex)"; done
//   ./envelope_fuzz -max_total_time=60 corpus
//
// Besides "no crash, no out-of-bounds read", it checks the codec's invariants on every
// input: decode reports only the three documented outcomes, with a message when it
// fails; whatever decodes re-encodes without error to bytes that decode to the same
// envelope and are a fixed point of decode + encode (one envelope, one encoding).
#include <plexus/envelope.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // A copy of exactly `size` bytes, so that ASan catches any read past the end.
    const std::string input(reinterpret_cast<const char*>(data), size);
    static plexus::envelope_view view; // reused, as the node's hot path does
    const plexus::status st = plexus::decode(input, view);
    if (st.code != plexus::code::ok && st.code != plexus::code::invalid_argument &&
        st.code != plexus::code::unsupported_version)
        std::abort();
    if (!st.ok()) {
        if (st.message.empty()) std::abort();
        return 0;
    }
    const plexus::envelope owned = view.to_owned();
    std::string once;
    plexus::encode(view, once); // throws (and so fails the run) if a decoded envelope cannot be written
    plexus::envelope again;
    if (!plexus::decode(once, again).ok() || !(again == owned)) std::abort();
    if (plexus::encode(again) != once) std::abort();
    return 0;
}
