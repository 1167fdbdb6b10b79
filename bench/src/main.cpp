// plexus_bench: Plexus against raw libzmq, figure by figure, in one run (issue 6).
//
//   plexus_bench [--quick | --smoke] [--only 1,3] [--out RESULTS.md] [--notes FINDINGS.md]
//   plexus_bench <role> ...      (internal: the child processes it starts)
//
// Prints a Markdown report (machine, load, the table, how each figure is measured)
// on stdout and, with --out, writes it to a file. Exit status 1 when a figure failed
// to run; never because a target was missed (a benchmark is not a test).
#include <csignal>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "figures.hpp"

namespace {

const char* usage =
    "usage: plexus_bench [--quick | --smoke] [--only LIST] [--out FILE] [--notes FILE] [--source TEXT]\n"
    "  --quick       shorter runs (under a minute); --smoke: tiny counts, checks that it runs\n"
    "  --only LIST   figures to run, e.g. 1,2 (default: all)\n"
    "  --out FILE    also write the report to FILE\n"
    "  --notes FILE  append FILE (hand-written findings) to the report\n"
    "  --source TEXT what was measured (bench/run passes the git commit)\n";

const char* method_notes = R"(How each figure is measured (bench/README.md has more):
- Servers, publishers and subscribers run in child processes (this binary with a role);
  clients run in the parent. Raw baselines move the same bytes as Plexus: request,
  reply and event envelopes captured from real Plexus nodes, no decoding. Both sides
  use the same high-water marks (10,000). Plexus nodes run with
  trace_mode::propagate: an envelope "without headers" carries none (the default
  trace_mode::start adds a 55-character traceparent to calls and events made outside
  any trace); the six-header cases carry a traceparent and get a new span per hop.
- 1: one call at a time; Plexus call_raw (the caller's own DEALER) against raw REQ/REP;
  rounds alternate the cases so that outside load hits all. "The server's share": the
  raw client against the Plexus server (the same split in figure 2).
- CPU per call / per event: user + system time of the client (this process) and of the
  server, publisher or subscriber process over the measured rounds, per message.
- 2: Plexus call_async with a sliding window of futures (and of callbacks) against a
  raw DEALER keeping the same number in flight to a raw ROUTER; best of the rounds
  (outside load only ever slows a run down).
- 3: one publisher process, one subscriber process; the publisher sends warm-up events
  until the subscriber has one (slow joiner), then N events flat out; rate = received /
  (last receipt - first send), both on CLOCK_MONOTONIC; best of the rounds, the
  worst loss. Plexus publishes with
  overflow::block (XPUB_NODROP); raw PUB has XPUB_NODROP and blocking sends.
- 4: median of batches; the reference is msgpack-c (packer writing the same bytes;
  unpack to its object tree), since raw libzmq has no codec.
- 5: VmRSS from /proc/self/status; CPU from getrusage over the idle period.
- 6: each case in a cluster and on a UDP port of its own (default beacon interval 1 s, this
  host only); p50 and max of the runs. SIGKILL: two calls held in flight by the victim's
  slow method, the kill 0-20 ms later at random; failover is done at the first ok call on
  the survivor after the loop's last failed call.
)";

std::set<int> parse_list(const std::string& s) {
    std::set<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.insert(std::stoi(item));
    return out;
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    std::signal(SIGPIPE, SIG_IGN); // a child that died must not kill the run
    if (!args.empty() && bench::is_role(args[0])) {
        try {
            return bench::run_role(args);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "plexus_bench %s: %s\n", args[0].c_str(), e.what());
            return 1;
        }
    }

    bench::mode m = bench::mode::full;
    std::set<int> only;
    std::string out_path, notes_path, source;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto& a = args[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= args.size()) {
                std::fprintf(stderr, "%s needs a value\n%s", a.c_str(), usage);
                std::exit(2);
            }
            return args[++i];
        };
        if (a == "--quick") m = bench::mode::quick;
        else if (a == "--smoke") m = bench::mode::smoke;
        else if (a == "--full") m = bench::mode::full;
        else if (a == "--only") only = parse_list(value());
        else if (a == "--out") out_path = value();
        else if (a == "--notes") notes_path = value();
        else if (a == "--source") source = value();
        else if (a == "-h" || a == "--help") {
            std::fputs(usage, stdout);
            return 0;
        } else {
            std::fprintf(stderr, "unknown argument %s\n%s", a.c_str(), usage);
            return 2;
        }
    }

    const auto sz = bench::sizes_for(m);
    const auto mi = bench::machine();
    const auto t0 = bench::clk::now();
    bench::report rep;
    using fig_fn = void (*)(const bench::sizes&, bench::report&);
    const fig_fn figs[] = {bench::fig1_latency, bench::fig2_pipelined, bench::fig3_pubsub,
                           bench::fig4_codec,   bench::fig5_resources, bench::fig6_discovery};
    int ran = 0, failed = 0;
    for (int f = 1; f <= 6; ++f) {
        if (!only.empty() && !only.count(f)) continue;
        std::fprintf(stderr, "plexus_bench: figure %d ...\n", f);
        const auto before = rep.rows.size();
        try {
            figs[f - 1](sz, rep);
            ++ran;
        } catch (const std::exception& e) {
            ++failed;
            rep.rows.push_back({std::to_string(f), std::string("FAILED: ") + e.what(), "-", "-", "-", "-", "-"});
            rep.notes.push_back("figure " + std::to_string(f) + " failed: " + e.what());
        }
        for (auto i = before; i < rep.rows.size(); ++i)
            std::fprintf(stderr, "  %s | %s | %s | %s | %s\n", rep.rows[i].what.c_str(), rep.rows[i].plexus.c_str(),
                         rep.rows[i].raw.c_str(), rep.rows[i].ratio.c_str(), rep.rows[i].verdict.c_str());
    }
    const double secs = std::chrono::duration<double>(bench::clk::now() - t0).count();

    std::ostringstream md;
    md << "# Plexus benchmark results\n\n";
    md << "Written by `bench/run` (" << bench::mode_name(m) << " mode) on " << mi.date_utc << " in "
       << bench::fmt("%.0f", secs) << " s.\n\n";
    md << "- Machine: " << mi.ncpu << " CPUs, " << mi.cpu_model << ", " << mi.kernel << "\n";
    if (!source.empty()) md << "- Source: " << source << "\n";
    md << "- Build: Release, " << mi.compiler << ", libzmq " << mi.libzmq << "\n";
    md << "- Load average (1/5/15 min): " << mi.load << " before the run, " << bench::loadavg() << " after\n\n";
    md << bench::render_table(rep.rows) << "\n";
    if (!rep.notes.empty()) {
        md << "Notes of this run:\n";
        for (auto& n : rep.notes) md << "- " << n << "\n";
        md << "\n";
    }
    md << method_notes;
    if (!notes_path.empty()) {
        std::ifstream nf(notes_path);
        if (nf) md << "\n" << nf.rdbuf();
    }
    const std::string text = md.str();
    std::fwrite(text.data(), 1, text.size(), stdout);
    if (!out_path.empty()) {
        std::ofstream of(out_path);
        of << text;
        if (!of) {
            std::fprintf(stderr, "plexus_bench: cannot write %s\n", out_path.c_str());
            return 1;
        }
    }
    std::printf("\nplexus_bench: %d figures ran, %d failed\n", ran, failed);
    return failed ? 1 : 0;
}
