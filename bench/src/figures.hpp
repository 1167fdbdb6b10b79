// The figures of issue 6 (orchestrator side) and the roles child processes play.
#pragma once

#include <string>
#include <vector>

#include "common.hpp"

namespace bench {

// Each appends its rows; notes collect anything a reader must know (errors seen,
// a shortened measurement, ...).
struct report {
    std::vector<row> rows;
    std::vector<std::string> notes;
};

void fig1_latency(const sizes& s, report& r);
void fig2_pipelined(const sizes& s, report& r);
void fig3_pubsub(const sizes& s, report& r);
void fig4_codec(const sizes& s, report& r);
void fig5_resources(const sizes& s, report& r);
void fig6_discovery(const sizes& s, report& r);

// The bytes Plexus actually puts on the wire for a call with this body and (or not)
// the six headers, the reply its server sends, and an event: built-in interceptors
// included (tracing adds a traceparent where none travels). Captured once per shape
// from real nodes through raw sockets; the raw baselines move exactly these bytes.
struct wire_bytes {
    std::string request, reply, event;
};
const wire_bytes& plexus_wire(std::size_t body, bool with_headers);

// Child roles: `plexus_bench <role> args...`. Returns the exit code.
int run_role(const std::vector<std::string>& args);
bool is_role(const std::string& name);

} // namespace bench
