// package: the package records (in memory): create when a delivery is scheduled,
// cancel when it is cancelled or its scheduling fails half-way.
#include <plexus/node.hpp>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>

#include "common/demo.hpp"
#include "common/messages.hpp"

namespace {

struct packages {
    std::mutex mu;
    std::map<std::string, demo::package_info> by_id;
    unsigned next = 1;
};

} // namespace

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "package", "package: package.create {account, description, weight_kg}, package.cancel {package_id}",
        {}, [](const demo::options&) {
            auto state = std::make_shared<packages>();
            demo::service_hooks h;
            h.setup = [state](plexus::node& node) {
                node.serve("package")
                    .doc("package records")
                    .version("1.0")
                    .method(
                        "create",
                        [&node, state](const demo::package_request& r) {
                            if (r.weight_kg <= 0 || r.weight_kg > 5)
                                throw plexus::error(plexus::code::invalid_argument,
                                                    "a drone carries 0-5 kg, not " + std::to_string(r.weight_kg));
                            std::lock_guard lk(state->mu);
                            char id[16];
                            std::snprintf(id, sizeof id, "P-%04u", state->next++);
                            auto& p = state->by_id[id];
                            p = {id, r.account, r.description, r.weight_kg, "registered"};
                            demo::log_request(node, "package", "create", {{"package", id}});
                            return p;
                        },
                        {.doc = "register a package"})
                    .method(
                        "cancel",
                        [&node, state](const demo::package_ref& r) {
                            demo::log_request(node, "package", "cancel", {{"package", r.package_id}});
                            std::lock_guard lk(state->mu);
                            auto it = state->by_id.find(r.package_id);
                            if (it == state->by_id.end())
                                throw plexus::error(plexus::code::not_found, "no package " + r.package_id);
                            it->second.state = "cancelled";
                            return it->second;
                        },
                        {.doc = "cancel a package record"});
            };
            return h;
        });
}
