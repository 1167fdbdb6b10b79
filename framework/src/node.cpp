// Placeholder until the runtime lands.
#include <plexus/node.hpp>
