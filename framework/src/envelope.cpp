// Placeholder: the codec is being written (see docs/PROTOCOL.md).
#include <plexus/envelope.hpp>
