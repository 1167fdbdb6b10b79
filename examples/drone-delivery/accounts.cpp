// accounts: is an account valid and in good standing? In this demo any account id is
// valid; one starting with "bad" is in arrears and refused, so that the scenario can
// show a scheduling that fails as a whole with a clear error.
#include <plexus/node.hpp>

#include "common/demo.hpp"
#include "common/messages.hpp"

int main(int argc, char** argv) {
    return demo::run_service(
        argc, argv, "accounts", "accounts: accounts.check {account} -> {account, standing}", {},
        [](const demo::options&) {
            demo::service_hooks h;
            h.setup = [](plexus::node& node) {
                node.serve("accounts")
                    .doc("customer accounts")
                    .version("1.0")
                    .method(
                        "check",
                        [&node](const demo::account_ref& r) {
                            demo::log_request(node, "accounts", "check", {{"account", r.account}});
                            if (r.account.empty())
                                throw plexus::error(plexus::code::invalid_argument, "account id is empty");
                            if (r.account.rfind("bad", 0) == 0)
                                throw plexus::error(plexus::code::failed_precondition,
                                                    "account " + r.account + " is not in good standing (payment overdue)");
                            return demo::account_info{r.account, "good"};
                        },
                        {.doc = "is the account valid and in good standing"});
            };
            return h;
        });
}
