// Test helper shared by plexus_process_tests and plexus_discovery_tests (separate executables).
#pragma once

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <signal.h>
#include <unistd.h>

namespace netns {

inline int shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// Three namespaces a, b, c on a bridge living in a fourth, addresses <subnet>1-3/24, named
// <tag><pid>{a,b,c,br}; removed by the destructor (also when a test fails), leftovers of a
// crashed earlier run with the same tag by the constructor. `tag` is 4 characters and differs
// per executable, and so must `subnet`, so the two test programs may run at the same time.
class lan {
public:
    lan(std::string tag, std::string subnet, std::string veth_tag)
        : tag_(std::move(tag)), subnet_(std::move(subnet)), prefix_(tag_ + std::to_string(::getpid())) {
        remove_stale();
        if (shell("ip netns add " + prefix_ + "br") != 0) return;
        created_.push_back(prefix_ + "br");
        bool ok = shell("ip -n " + prefix_ + "br link add br0 type bridge") == 0 &&
                  shell("ip -n " + prefix_ + "br link set br0 up") == 0;
        for (char h : {'a', 'b', 'c'}) {
            if (!ok) break;
            const std::string ns = this->ns(h), veth = veth_tag + std::to_string(::getpid()) + h;
            ok = shell("ip netns add " + ns) == 0;
            if (ok) created_.push_back(ns);
            ok = ok && shell("ip -n " + ns + " link set lo up") == 0 &&
                 shell("ip -n " + ns + " link add eth0 type veth peer name " + veth + " netns " + prefix_ + "br") == 0 &&
                 shell("ip -n " + prefix_ + "br link set " + veth + " master br0") == 0 &&
                 shell("ip -n " + prefix_ + "br link set " + veth + " up") == 0 &&
                 shell("ip -n " + ns + " addr add " + address(h) + "/24 brd + dev eth0") == 0 &&
                 shell("ip -n " + ns + " link set eth0 up") == 0;
        }
        ok_ = ok;
    }
    ~lan() {
        for (auto it = created_.rbegin(); it != created_.rend(); ++it) shell("ip netns del " + *it);
    }
    lan(const lan&) = delete;
    lan& operator=(const lan&) = delete;

    [[nodiscard]] bool ok() const { return ok_; }
    [[nodiscard]] std::string ns(char host) const { return prefix_ + host; }
    [[nodiscard]] std::string address(char host) const { return subnet_ + std::to_string(host - 'a' + 1); }
    [[nodiscard]] std::string broadcast() const { return subnet_ + "255"; }

private:
    void remove_stale() const {
        FILE* f = ::popen("ip netns list 2>/dev/null", "r");
        if (!f) return;
        char line[256];
        std::vector<std::string> stale;
        const std::size_t n = tag_.size();
        while (std::fgets(line, sizeof line, f)) {
            std::string name = line;
            name = name.substr(0, name.find_first_of(" \n"));
            if (name.rfind(tag_, 0) != 0) continue;
            std::size_t i = n;
            while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
            const auto rest = name.substr(i);
            if (i == n || (rest != "a" && rest != "b" && rest != "c" && rest != "br")) continue;
            const pid_t pid = static_cast<pid_t>(std::stol(name.substr(n, i - n)));
            if (::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(name);
        }
        ::pclose(f);
        for (const auto& s : stale) shell("ip netns del " + s);
    }

    std::string tag_, subnet_, prefix_;
    std::vector<std::string> created_;
    bool ok_ = false;
};

} // namespace netns
