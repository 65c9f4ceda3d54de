// libFuzzer target: the edit-lease parsers (If, Timeout, Lock-Token, the
// <owner> and lock scope of a LOCK body, the If header's entity tags, urn:uuid tokens) fed arbitrary bytes. The first
// byte picks the parser. Asserts their contracts, not just "no crash":
// submitted tokens are non-empty coded URLs that the input holds; a parsed
// timeout is -1 or within 32 bits; an owner is within its cap with no
// control bytes; a parsed token prints back to the same token.
#include <cassert>
#include <cstdint>
#include <string>
#include <vector>

#include "pidlock_lease.h"

using namespace pidlock;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const std::string in(reinterpret_cast<const char *>(data) + 1, size - 1);
    switch (data[0] % 5) {
    case 0: {
        std::vector<IfList> lists;
        if (parse_if_header(in, lists)) {
            assert(!lists.empty());
            for (const IfList &l : lists) assert(!l.conditions.empty());
            for (const std::string &t : if_submitted_tokens(lists)) {
                assert(!t.empty());
                assert(in.find("<" + t + ">") != std::string::npos);
                assert(t.find_first_of(" \t\r\n<>") == std::string::npos);
            }
            // Whatever the held tokens, If-Match gets only entity tags the
            // header holds, and only when some list needs one.
            const std::vector<std::string> subm = if_submitted_tokens(lists);
            const IfEtags e = if_entity_tags(lists, subm.empty() ? subm : std::vector<std::string>{subm[0]});
            assert((e.verdict == IfVerdict::IfMatch) == !e.etags.empty());
            for (const std::string &tag : e.etags) assert(in.find("[" + tag + "]") != std::string::npos);
        }
        break;
    }
    case 1: {
        int64_t s = 0;
        if (parse_timeout_header(in, &s)) {
            assert(s == -1 || (s >= 0 && s <= 0xFFFFFFFFll));
            const uint32_t t = lease_timeout_for(s, 1800, 3600);
            assert(t >= 1 && t <= 3600);
        }
        break;
    }
    case 2: {
        std::string uri;
        if (parse_lock_token_header(in, uri)) assert(!uri.empty() && in.find(uri) != std::string::npos);
        break;
    }
    case 3: {
        std::string owner;
        LockInfo info;
        assert(parse_lock_info(in, 64, info) == parse_lock_owner(in, 64, owner));
        assert(info.owner == owner);
        if (parse_lock_owner(in, 64, owner)) {
            assert(owner.size() <= 64);
            for (char c : owner) assert(static_cast<unsigned char>(c) >= 0x20 && c != 0x7F);
            assert(owner.empty() || (owner.front() != ' ' && owner.back() != ' '));
        }
        break;
    }
    case 4: {
        LeaseToken t;
        if (lease_token_parse(in, t)) {
            LeaseToken back;
            assert(lease_token_parse(lease_token_urn(t), back));
            assert(lease_token_equal(t, back));
        }
        break;
    }
    }
    return 0;
}
