#include "pidlock_lease.h"

#include "pidlock_sha256.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <new>

#include "pidlock_render.h"

namespace pidlock {

// ----------------------------------------------------------------- tokens

LeaseToken lease_token_from_random(const uint8_t raw[16]) {
    LeaseToken t;
    std::memcpy(t.b, raw, 16);
    t.b[6] = static_cast<uint8_t>((t.b[6] & 0x0F) | 0x40);  // version 4
    t.b[8] = static_cast<uint8_t>((t.b[8] & 0x3F) | 0x80);  // RFC 4122 variant
    return t;
}

std::string lease_token_urn(const LeaseToken &t) {
    static const char hex[] = "0123456789abcdef";
    std::string s = "urn:uuid:";
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
        s.push_back(hex[t.b[i] >> 4]);
        s.push_back(hex[t.b[i] & 15]);
    }
    return s;
}

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool ieq_prefix(const std::string &s, size_t pos, const char *lit) {
    const size_t n = std::strlen(lit);
    if (s.size() - pos < n || pos > s.size()) return false;
    for (size_t i = 0; i < n; ++i) {
        char c = s[pos + i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != lit[i]) return false;
    }
    return true;
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

void skip_ws(const std::string &s, size_t &i) {
    while (i < s.size() && is_ws(s[i])) ++i;
}

}  // namespace

bool lease_token_parse(const std::string &s, LeaseToken &t) {
    if (s.size() != 9 + 36 || !ieq_prefix(s, 0, "urn:uuid:")) return false;
    size_t k = 0;
    for (size_t i = 9; i < s.size();) {
        const size_t off = i - 9;
        if (off == 8 || off == 13 || off == 18 || off == 23) {
            if (s[i] != '-') return false;
            ++i;
            continue;
        }
        const int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0 || k >= 16) return false;
        t.b[k++] = static_cast<uint8_t>(hi * 16 + lo);
        i += 2;
    }
    return k == 16;
}

bool lease_token_equal(const LeaseToken &a, const LeaseToken &b) {
    volatile uint8_t diff = 0;
    for (int i = 0; i < 16; ++i) diff = static_cast<uint8_t>(diff | (a.b[i] ^ b.b[i]));
    return diff == 0;
}

std::string lease_token_id(const LeaseToken &t) {
    // Domain-separated from key hashes; 32 bits shown of a 122-bit secret.
    char buf[16 + 6];
    std::memcpy(buf, "lease:", 6);
    std::memcpy(buf + 6, t.b, 16);
    // A fixed SipHash key: the id must be the same in every process and
    // across restarts; 32 bits of it say nothing usable of 122 random bits.
    const uint64_t h = siphash24(0x6c65617365696421ULL, 0x6d6f645f7069646cULL, buf, sizeof buf);
    char out[9];
    std::snprintf(out, sizeof out, "%08x", static_cast<unsigned>(h >> 32));
    return out;
}

// ---------------------------------------------------------------- parsers

namespace {

// "<" ... ">" at s[i] with no white space or angle brackets inside; `i` ends
// after the '>'.
bool read_coded_url(const std::string &s, size_t &i, std::string &uri) {
    if (i >= s.size() || s[i] != '<') return false;
    const size_t start = ++i;
    while (i < s.size() && s[i] != '>') {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c <= 0x20 || c == '<' || c == 0x7F) return false;
        ++i;
    }
    if (i >= s.size() || i == start) return false;
    uri.assign(s, start, i - start);
    ++i;
    return true;
}

// "[" entity-tag "]": W/"..." or "..."; `i` ends after the ']'.
bool read_etag(const std::string &s, size_t &i, std::string &tag) {
    if (i >= s.size() || s[i] != '[') return false;
    const size_t start = ++i;
    if (i + 1 < s.size() && s[i] == 'W' && s[i + 1] == '/') i += 2;
    if (i >= s.size() || s[i] != '"') return false;
    ++i;
    while (i < s.size() && s[i] != '"') {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x21 || c == 0x7F) return false;
        ++i;
    }
    if (i >= s.size()) return false;
    ++i;
    if (i >= s.size() || s[i] != ']') return false;
    tag.assign(s, start, i - start);
    ++i;
    return true;
}

bool read_list(const std::string &s, size_t &i, IfList &list) {
    ++i;  // '('
    for (;;) {
        skip_ws(s, i);
        if (i >= s.size()) return false;
        if (s[i] == ')') {
            ++i;
            return !list.conditions.empty();
        }
        IfCondition c;
        if (ieq_prefix(s, i, "not")) {
            i += 3;
            skip_ws(s, i);
            if (i >= s.size() || (s[i] != '<' && s[i] != '[')) return false;
            c.negated = true;
        }
        if (s[i] == '<') {
            if (!read_coded_url(s, i, c.value)) return false;
        } else if (s[i] == '[') {
            c.etag = true;
            if (!read_etag(s, i, c.value)) return false;
        } else {
            return false;
        }
        list.conditions.push_back(std::move(c));
    }
}

}  // namespace

bool parse_if_header(const std::string &value, std::vector<IfList> &lists) {
    lists.clear();
    enum { Undecided, Untagged, Tagged } form = Undecided;
    std::string tag;
    bool tag_has_list = true;
    size_t i = 0;
    for (;;) {
        skip_ws(value, i);
        if (i >= value.size()) break;
        if (value[i] == '<') {
            if (form == Untagged || !tag_has_list) return false;
            form = Tagged;
            if (!read_coded_url(value, i, tag)) return false;
            tag_has_list = false;
        } else if (value[i] == '(') {
            if (form == Undecided) form = Untagged;
            IfList list;
            if (form == Tagged) list.tag = tag;
            if (!read_list(value, i, list)) return false;
            lists.push_back(std::move(list));
            tag_has_list = true;
        } else {
            return false;
        }
    }
    return !lists.empty() && tag_has_list;
}

std::vector<std::string> if_submitted_tokens(const std::vector<IfList> &lists) {
    std::vector<std::string> out;
    for (const IfList &l : lists)
        for (const IfCondition &c : l.conditions) {
            if (c.negated || c.etag) continue;
            bool seen = false;
            for (const std::string &t : out) seen = seen || t == c.value;
            if (!seen) out.push_back(c.value);
        }
    return out;
}

IfEtags if_entity_tags(const std::vector<IfList> &lists, const std::vector<std::string> &held) {
    IfEtags out;
    bool unsupported = false;
    for (const IfList &l : lists) {
        bool tokens_hold = true, not_etag = false, several = false;
        std::string etag;
        for (const IfCondition &c : l.conditions) {
            if (c.etag) {
                if (c.negated) not_etag = true;
                else if (!etag.empty() && etag != c.value) several = true;
                else etag = c.value;
                continue;
            }
            bool is_held = false;
            for (const std::string &h : held) is_held = is_held || h == c.value;
            if (is_held == c.negated) tokens_hold = false;
        }
        if (!tokens_hold || several) continue;  // one resource has one entity tag
        if (not_etag) {
            unsupported = true;
            continue;
        }
        if (etag.empty()) {  // a list that holds whatever the entity tag
            out.verdict = IfVerdict::True;
            out.etags.clear();
            return out;
        }
        if (std::find(out.etags.begin(), out.etags.end(), etag) == out.etags.end()) out.etags.push_back(etag);
    }
    if (unsupported) {
        out.verdict = IfVerdict::Unsupported;
        out.etags.clear();
    } else {
        out.verdict = out.etags.empty() ? IfVerdict::False : IfVerdict::IfMatch;
    }
    return out;
}

bool parse_timeout_header(const std::string &value, int64_t *seconds) {
    bool first = true;
    size_t i = 0;
    for (;;) {
        skip_ws(value, i);
        if (i >= value.size()) return false;  // empty, or a trailing comma
        int64_t v;
        if (ieq_prefix(value, i, "infinite")) {
            i += 8;
            v = -1;
        } else if (ieq_prefix(value, i, "second-")) {
            i += 7;
            const size_t start = i;
            uint64_t n = 0;
            while (i < value.size() && value[i] >= '0' && value[i] <= '9') {
                n = n * 10 + static_cast<uint64_t>(value[i] - '0');
                if (n > 0xFFFFFFFFull) return false;
                ++i;
            }
            if (i == start) return false;
            v = static_cast<int64_t>(n);
        } else {
            return false;
        }
        if (first) *seconds = v;
        first = false;
        skip_ws(value, i);
        if (i >= value.size()) return true;
        if (value[i] != ',') return false;
        ++i;
    }
}

uint32_t lease_timeout_for(int64_t requested, uint32_t dflt, uint32_t max) {
    if (max < 1) max = 1;
    if (requested < 0) return dflt < 1 ? 1 : (dflt > max ? max : dflt);
    if (requested < 1) return 1;
    return requested > static_cast<int64_t>(max) ? max : static_cast<uint32_t>(requested);
}

bool parse_lock_token_header(const std::string &value, std::string &uri) {
    size_t i = 0;
    skip_ws(value, i);
    if (!read_coded_url(value, i, uri)) return false;
    skip_ws(value, i);
    return i == value.size();
}

bool parse_lock_depth(const char *value, bool *infinity) {
    *infinity = true;
    if (!value) return true;
    std::string v(value);
    size_t i = 0;
    skip_ws(v, i);
    size_t e = v.size();
    while (e > i && is_ws(v[e - 1])) --e;
    v = v.substr(i, e - i);
    if (v == "0") {
        *infinity = false;
        return true;
    }
    if (v.size() != 8) return false;
    for (size_t k = 0; k < 8; ++k)
        if (static_cast<char>(std::tolower(static_cast<unsigned char>(v[k]))) != "infinity"[k]) return false;
    return true;
}

namespace {

void append_utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

// A reference at s[i] ('&'); appends what it stands for. False if it is
// not one of XML's predefined or a valid numeric one.
bool decode_reference(const std::string &s, size_t &i, std::string &out) {
    const size_t semi = s.find(';', i);
    if (semi == std::string::npos || semi - i > 12) return false;
    const std::string name = s.substr(i + 1, semi - i - 1);
    i = semi + 1;
    if (name == "lt") out.push_back('<');
    else if (name == "gt") out.push_back('>');
    else if (name == "amp") out.push_back('&');
    else if (name == "quot") out.push_back('"');
    else if (name == "apos") out.push_back('\'');
    else if (name.size() >= 2 && name[0] == '#') {
        const bool hex = name[1] == 'x';
        const size_t start = hex ? 2 : 1;
        if (start >= name.size()) return false;
        uint32_t cp = 0;
        for (size_t k = start; k < name.size(); ++k) {
            const int d = hex ? hex_value(name[k]) : (name[k] >= '0' && name[k] <= '9' ? name[k] - '0' : -1);
            if (d < 0) return false;
            cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(d);
            if (cp > 0x10FFFF) return false;
        }
        if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        append_utf8(out, cp);
    } else {
        return false;
    }
    return true;
}

// White space runs (and control bytes) as one space, trimmed; cut to `cap`
// bytes without splitting a UTF-8 sequence.
std::string tidy(const std::string &raw, size_t cap) {
    std::string out;
    bool space = false;
    for (char ch : raw) {
        const unsigned char c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == ' ' || c == 0x7F) {
            space = !out.empty();
            continue;
        }
        if (space) out.push_back(' ');
        space = false;
        out.push_back(ch);
    }
    if (out.size() > cap) {
        size_t n = cap;
        while (n > 0 && (static_cast<unsigned char>(out[n]) & 0xC0) == 0x80) --n;
        while (n > 0 && out[n - 1] == ' ') --n;
        out.resize(n);
    }
    return out;
}

}  // namespace

bool parse_lock_owner(const std::string &body, size_t cap, std::string &owner) {
    LockInfo info;
    const bool ok = parse_lock_info(body, cap, info);
    owner = ok ? info.owner : std::string();
    return ok;
}

bool parse_lock_info(const std::string &body, size_t cap, LockInfo &info) {
    info = LockInfo();
    std::string raw;
    std::vector<std::string> open;  // the element names from the root down
    int depth = 0;  // inside <owner>: 1 + nesting
    bool done = false;
    size_t i = 0;
    while (i < body.size()) {
        const char c = body[i];
        if (c == '&') {
            std::string dec;
            if (!decode_reference(body, i, dec)) return false;
            if (depth > 0 && !done) raw += dec;
            continue;
        }
        if (c != '<') {
            if (depth > 0 && !done) raw.push_back(c);
            ++i;
            continue;
        }
        if (body.compare(i, 4, "<!--") == 0) {
            const size_t end = body.find("-->", i + 4);
            if (end == std::string::npos) return false;
            i = end + 3;
            continue;
        }
        if (body.compare(i, 9, "<![CDATA[") == 0) {
            const size_t end = body.find("]]>", i + 9);
            if (end == std::string::npos) return false;
            if (depth > 0 && !done) raw.append(body, i + 9, end - i - 9);
            i = end + 3;
            continue;
        }
        if (body.compare(i, 2, "<!") == 0) return false;  // DOCTYPE, ENTITY: never
        if (body.compare(i, 2, "<?") == 0) {
            const size_t end = body.find("?>", i + 2);
            if (end == std::string::npos) return false;
            i = end + 2;
            continue;
        }
        // A tag: to its '>', quotes respected.
        size_t j = i + 1;
        char quote = 0;
        while (j < body.size() && (quote || body[j] != '>')) {
            if (quote) {
                if (body[j] == quote) quote = 0;
            } else if (body[j] == '"' || body[j] == '\'') {
                quote = body[j];
            } else if (body[j] == '<') {
                return false;
            }
            ++j;
        }
        if (j >= body.size()) return false;
        const bool closing = body[i + 1] == '/';
        const bool empty = body[j - 1] == '/';
        size_t n = i + (closing ? 2 : 1);
        size_t e = n;
        while (e < j && !is_ws(body[e]) && body[e] != '/' && body[e] != '>') ++e;
        std::string name = body.substr(n, e - n);
        if (name.empty()) return false;
        const size_t colon = name.rfind(':');
        if (colon != std::string::npos) name.erase(0, colon + 1);
        const bool is_owner = name == "owner";
        if (closing) {
            if (!open.empty()) open.pop_back();
        } else {
            const std::string parent = open.empty() ? std::string() : open.back();
            if (parent == "lockscope") {
                if (name == "shared") info.shared = true;
                else if (name != "exclusive") info.unknown_scope = true;
            } else if (parent == "locktype" && name != "write") {
                info.not_write = true;
            }
            if (!empty) open.push_back(name);
        }
        if (!done) {
            if (closing) {
                if (depth > 0 && --depth == 0) done = true;
            } else if (!empty) {
                if (depth > 0) ++depth;
                else if (is_owner) depth = 1;
            } else if (depth > 0) {
                raw.push_back(' ');
            }
        }
        i = j + 1;
    }
    if (depth > 0 && !done) return false;
    info.owner = tidy(raw, cap);
    return true;
}

// ------------------------------------------------------------------ table

struct LeaseTable::Header {
    uint64_t magic;
    uint32_t version, capacity, key_cap, slot_size;
    std::atomic<uint32_t> used;
    uint32_t pad;
    LeaseCounters counters;
};

struct LeaseTable::Slot {
    uint32_t in_use, key_len;
    uint8_t token[16];
    int64_t granted_us, idle_since_us, expires_us;
    uint32_t timeout_s;
    uint16_t owner_len, user_len, client_len, pad;
    char owner[kLeaseOwnerCap];
    char user[kUserCap];
    char client[kClientCap];
    // key bytes follow
};

namespace {
constexpr uint64_t kLeaseMagic = 0x70696c6561736531ull;  // "pilease1"
constexpr uint32_t kLeaseVersion = 1;
constexpr size_t round8(size_t n) { return (n + 7) & ~size_t(7); }
constexpr size_t kHeaderBytes = 128;


void copy_cut(char *dst, uint16_t *len, size_t cap, const std::string &s) {
    size_t n = s.size() < cap ? s.size() : cap;
    while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    std::memcpy(dst, s.data(), n);
    *len = static_cast<uint16_t>(n);
}

// The user a lease is bound to, as a slot keeps it (at most kUserCap
// bytes): the name itself if it fits; a longer one (a certificate's DN, say)
// as its first bytes, "…#" and 16 hex digits of its SHA-256. Cut alone, the
// full name would never match its own lease again, and two names with the
// same first bytes would share one.
std::string stored_user(const std::string &user) {
    if (user.size() <= kUserCap) return user;
    unsigned char d[32];
    sha256(user.data(), user.size(), d);
    const std::string tail = "\xE2\x80\xA6#" + hex_bytes(std::string(reinterpret_cast<const char *>(d), 8));
    size_t n = kUserCap - tail.size();
    while (n > 0 && (static_cast<unsigned char>(user[n]) & 0xC0) == 0x80) --n;  // whole UTF-8 sequences
    return user.substr(0, n) + tail;
}
}  // namespace

uint32_t LeaseTable::layout_version() { return kLeaseVersion; }

size_t LeaseTable::slot_bytes(uint32_t key_cap) { return round8(sizeof(Slot) + key_cap); }

size_t LeaseTable::region_size(const LeaseParams &p) {
    static_assert(sizeof(Header) <= kHeaderBytes, "lease header");
    if (p.capacity == 0 || p.capacity > (1u << 20) || p.key_cap == 0 || p.key_cap > 65536) return 0;
    return kHeaderBytes + slot_bytes(p.key_cap) * p.capacity;
}

bool LeaseTable::format(void *base, size_t size, const LeaseParams &p) {
    const size_t need = region_size(p);
    if (!base || need == 0 || size < need) return false;
    std::memset(base, 0, need);
    Header *h = new (base) Header();
    h->version = kLeaseVersion;
    h->capacity = p.capacity;
    h->key_cap = p.key_cap;
    h->slot_size = static_cast<uint32_t>(slot_bytes(p.key_cap));
    h->used.store(0);
    std::atomic_thread_fence(std::memory_order_release);
    h->magic = kLeaseMagic;
    return true;
}

LeaseTable::LeaseTable(void *base, StripeLocks *locks) : locks_(locks) {
    auto *h = static_cast<Header *>(base);
    if (!h || h->magic != kLeaseMagic || h->version != kLeaseVersion) return;
    LeaseParams p;
    p.capacity = h->capacity;
    p.key_cap = h->key_cap;
    if (region_size(p) == 0 || h->slot_size != slot_bytes(p.key_cap)) return;
    hdr_ = h;
    base_ = static_cast<char *>(base);
    params_ = p;
    slot_size_ = slot_bytes(p.key_cap);
}

LeaseTable::LeaseTable(void *base, size_t size, const LeaseParams &expect, StripeLocks *locks)
    : LeaseTable(base, locks) {
    if (hdr_ && (params_.capacity != expect.capacity || params_.key_cap != expect.key_cap ||
                 size < region_size(expect)))
        hdr_ = nullptr;
}

LeaseTable::Slot *LeaseTable::slot(uint32_t i) const {
    return reinterpret_cast<Slot *>(base_ + kHeaderBytes + slot_size_ * i);
}

char *LeaseTable::key_of(uint32_t i) const { return reinterpret_cast<char *>(slot(i)) + sizeof(Slot); }

uint32_t LeaseTable::used() const { return hdr_ ? hdr_->used.load(std::memory_order_acquire) : 0; }

int LeaseTable::enter() { return locks_->lock(0); }
void LeaseTable::leave() { locks_->unlock(0); }

void LeaseTable::clear(uint32_t i) {
    Slot *s = slot(i);
    s->in_use = 0;
    std::memset(s->token, 0, sizeof s->token);
    hdr_->used.fetch_sub(1, std::memory_order_release);
}

int64_t LeaseTable::sweep_and_find(const std::string &key, int64_t now_us) {
    int64_t found = -1;
    for (uint32_t i = 0; i < params_.capacity; ++i) {
        Slot *s = slot(i);
        if (!s->in_use) continue;
        if (now_us >= s->expires_us) {
            clear(i);
            ++hdr_->counters.expired;
            continue;
        }
        if (found < 0 && s->key_len == key.size() && !std::memcmp(key_of(i), key.data(), key.size()))
            found = i;
    }
    return found;
}

int64_t LeaseTable::free_slot() const {
    for (uint32_t i = 0; i < params_.capacity; ++i)
        if (!slot(i)->in_use) return i;
    return -1;
}

void LeaseTable::fill(uint32_t i, const std::string &key, const LeaseRequest &req, const LeaseToken &t,
                      int64_t now_us) {
    Slot *s = slot(i);
    std::memcpy(key_of(i), key.data(), key.size());
    s->key_len = static_cast<uint32_t>(key.size());
    std::memcpy(s->token, t.b, 16);
    copy_cut(s->owner, &s->owner_len, kLeaseOwnerCap, req.owner);
    copy_cut(s->user, &s->user_len, kUserCap, stored_user(req.user));
    copy_cut(s->client, &s->client_len, kClientCap, req.client);
    s->granted_us = now_us;
    s->timeout_s = req.timeout_s ? req.timeout_s : 1;
    s->idle_since_us = now_us;
    s->expires_us = now_us + static_cast<int64_t>(s->timeout_s) * 1000000;
    s->in_use = 1;
    hdr_->used.fetch_add(1, std::memory_order_release);
}

void LeaseTable::renew(uint32_t i, int64_t now_us, uint32_t timeout_s) {
    Slot *s = slot(i);
    if (timeout_s) s->timeout_s = timeout_s;
    s->idle_since_us = now_us;
    s->expires_us = now_us + static_cast<int64_t>(s->timeout_s) * 1000000;
    ++hdr_->counters.renewed;
}

void LeaseTable::view_of(uint32_t i, LeaseView *v) const {
    if (!v) return;
    const Slot *s = slot(i);
    v->key.assign(key_of(i), std::min<size_t>(s->key_len, params_.key_cap));
    v->owner.assign(s->owner, std::min<size_t>(s->owner_len, kLeaseOwnerCap));
    v->user.assign(s->user, std::min<size_t>(s->user_len, kUserCap));
    v->client.assign(s->client, std::min<size_t>(s->client_len, kClientCap));
    LeaseToken t;
    std::memcpy(t.b, s->token, 16);
    v->id = lease_token_id(t);
    v->granted_us = s->granted_us;
    v->idle_since_us = s->idle_since_us;
    v->expires_us = s->expires_us;
    v->timeout_s = s->timeout_s;
}

bool LeaseTable::matches(uint32_t i, const std::vector<LeaseToken> &tokens) const {
    LeaseToken held;
    std::memcpy(held.b, slot(i)->token, 16);
    bool any = false;
    for (const LeaseToken &t : tokens) any = lease_token_equal(held, t) || any;
    return any;
}

bool LeaseTable::user_ok(uint32_t i, const std::string &user) const {
    const Slot *s = slot(i);
    if (s->user_len == 0) return true;  // bound to no user
    const std::string u = stored_user(user);
    return u.size() == s->user_len && s->user_len <= kUserCap && !std::memcmp(u.data(), s->user, s->user_len);
}

LeaseOutcome LeaseTable::lock(const std::string &key, const std::vector<LeaseToken> &tokens,
                              const LeaseRequest &req, const LeaseToken &fresh, int64_t now_us,
                              LeaseView *view) {
    if (!hdr_ || key.empty() || key.size() > params_.key_cap) return LeaseOutcome::Error;
    if (enter() != 0) return LeaseOutcome::Error;
    LeaseOutcome out;
    const int64_t i = sweep_and_find(key, now_us);
    if (!tokens.empty()) {
        if (i < 0 || !matches(static_cast<uint32_t>(i), tokens)) {
            out = LeaseOutcome::Stale;
        } else if (!user_ok(static_cast<uint32_t>(i), req.user)) {
            out = LeaseOutcome::Forbidden;
        } else {
            renew(static_cast<uint32_t>(i), now_us, req.timeout_s);
            out = LeaseOutcome::Renewed;
        }
    } else if (i >= 0) {
        out = LeaseOutcome::Locked;
    } else {
        const int64_t f = free_slot();
        if (f < 0) {
            out = LeaseOutcome::Full;
        } else {
            fill(static_cast<uint32_t>(f), key, req, fresh, now_us);
            ++hdr_->counters.granted;
            view_of(static_cast<uint32_t>(f), view);
            out = LeaseOutcome::Granted;
        }
    }
    if (out == LeaseOutcome::Stale || out == LeaseOutcome::Forbidden || out == LeaseOutcome::Locked)
        ++hdr_->counters.refusals;
    if (i >= 0 && out != LeaseOutcome::Granted) view_of(static_cast<uint32_t>(i), view);
    leave();
    return out;
}

LeaseOutcome LeaseTable::unlock(const std::string &key, const LeaseToken &token, const std::string &user,
                                int64_t now_us, LeaseView *view) {
    if (!hdr_ || key.empty() || key.size() > params_.key_cap) return LeaseOutcome::Mismatch;
    if (enter() != 0) return LeaseOutcome::Error;
    LeaseOutcome out = LeaseOutcome::Mismatch;
    const int64_t i = sweep_and_find(key, now_us);
    if (i >= 0 && matches(static_cast<uint32_t>(i), {token})) {
        view_of(static_cast<uint32_t>(i), view);
        if (!user_ok(static_cast<uint32_t>(i), user)) {
            out = LeaseOutcome::Forbidden;
        } else {
            clear(static_cast<uint32_t>(i));
            ++hdr_->counters.released;
            out = LeaseOutcome::Released;
        }
    }
    leave();
    return out;
}

LeaseOutcome LeaseTable::check_write(const std::string &key, const std::vector<LeaseToken> &tokens,
                                     bool foreign_tokens, const std::string &user, int64_t now_us,
                                     LeaseView *view) {
    const bool carries = !tokens.empty() || foreign_tokens;
    // Nothing leased anywhere and no token: no mutex at all.
    if (!hdr_ || (!carries && used() == 0)) return LeaseOutcome::Free;
    if (key.size() > params_.key_cap) return carries ? LeaseOutcome::Stale : LeaseOutcome::Free;
    if (enter() != 0) return LeaseOutcome::Error;
    LeaseOutcome out;
    const int64_t i = sweep_and_find(key, now_us);
    if (i < 0) {
        out = carries ? LeaseOutcome::Stale : LeaseOutcome::Free;
    } else if (!carries) {
        out = LeaseOutcome::Locked;
    } else if (!matches(static_cast<uint32_t>(i), tokens)) {
        out = LeaseOutcome::Stale;
    } else if (!user_ok(static_cast<uint32_t>(i), user)) {
        out = LeaseOutcome::Forbidden;
    } else {
        renew(static_cast<uint32_t>(i), now_us, 0);
        out = LeaseOutcome::Allowed;
    }
    if (out == LeaseOutcome::Stale || out == LeaseOutcome::Forbidden || out == LeaseOutcome::Locked)
        ++hdr_->counters.refusals;
    if (i >= 0) view_of(static_cast<uint32_t>(i), view);
    leave();
    return out;
}

void LeaseTable::touch(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
                       int64_t now_us) {
    if (!hdr_ || tokens.empty() || used() == 0 || enter() != 0) return;
    const int64_t i = sweep_and_find(key, now_us);
    if (i >= 0 && matches(static_cast<uint32_t>(i), tokens) && user_ok(static_cast<uint32_t>(i), user))
        renew(static_cast<uint32_t>(i), now_us, 0);
    leave();
}

LeaseOutcome LeaseTable::release(const std::string &key, int64_t now_us, LeaseView *old) {
    if (!hdr_) return LeaseOutcome::Error;
    if (enter() != 0) return LeaseOutcome::Error;
    LeaseOutcome out = LeaseOutcome::NotHeld;
    const int64_t i = sweep_and_find(key, now_us);
    if (i >= 0) {
        view_of(static_cast<uint32_t>(i), old);
        clear(static_cast<uint32_t>(i));
        ++hdr_->counters.released;
        out = LeaseOutcome::Released;
    }
    leave();
    return out;
}

LeaseOutcome LeaseTable::steal(const std::string &key, const LeaseRequest &req, const LeaseToken &fresh,
                               int64_t now_us, LeaseView *old, bool *had_old, LeaseView *now_view) {
    if (!hdr_ || key.empty() || key.size() > params_.key_cap) return LeaseOutcome::Error;
    if (enter() != 0) return LeaseOutcome::Error;
    int64_t i = sweep_and_find(key, now_us);
    *had_old = i >= 0;
    if (i >= 0) {
        view_of(static_cast<uint32_t>(i), old);
        clear(static_cast<uint32_t>(i));
        ++hdr_->counters.stolen;
    } else {
        i = free_slot();
    }
    LeaseOutcome out = LeaseOutcome::Full;
    if (i >= 0) {
        fill(static_cast<uint32_t>(i), key, req, fresh, now_us);
        ++hdr_->counters.granted;
        view_of(static_cast<uint32_t>(i), now_view);
        out = LeaseOutcome::Granted;
    }
    leave();
    return out;
}

bool LeaseTable::snapshot(int64_t now_us, std::vector<LeaseView> &out, LeaseCounters &c) {
    out.clear();
    if (!hdr_ || enter() != 0) return false;
    sweep_and_find(std::string(), now_us);
    for (uint32_t i = 0; i < params_.capacity; ++i) {
        if (!slot(i)->in_use) continue;
        out.emplace_back();
        view_of(i, &out.back());
    }
    c = hdr_->counters;
    leave();
    std::stable_sort(out.begin(), out.end(),
                     [](const LeaseView &a, const LeaseView &b) { return a.granted_us < b.granted_us; });
    return true;
}

bool LeaseTable::summary(int64_t now_us, uint32_t *live, LeaseCounters &c) {
    if (!hdr_ || enter() != 0) return false;
    sweep_and_find(std::string(), now_us);
    *live = hdr_->used.load(std::memory_order_relaxed);
    c = hdr_->counters;
    leave();
    return true;
}

void LeaseTable::add_counts(const LeaseCounters &d) {
    if (!hdr_ || enter() != 0) return;
    LeaseCounters &c = hdr_->counters;
    c.granted += d.granted;
    c.renewed += d.renewed;
    c.released += d.released;
    c.expired += d.expired;
    c.stolen += d.stolen;
    c.refusals += d.refusals;
    leave();
}

std::vector<std::pair<std::string, uint64_t>> lease_auto_lines(uint32_t live, uint32_t capacity,
                                                               const LeaseCounters &c) {
    return {{"Leases", live},           {"LeaseCapacity", capacity}, {"LeasesGranted", c.granted},
            {"LeasesRenewed", c.renewed}, {"LeasesReleased", c.released}, {"LeasesExpired", c.expired},
            {"LeasesStolen", c.stolen}, {"LeaseRefusals", c.refusals}};
}

// ------------------------------------------------------------- rendering

namespace {

std::string xml_escaped(const std::string &s) {
    std::string o;
    html_escape(o, s);
    return o;
}

void json_field(std::string &o, const char *name, const std::string &v) {
    o += ", \"";
    o += name;
    o += "\": ";
    json_string(o, v);
}

void json_key(std::string &o, const std::string &key) {
    o += "\"key\": ";
    if (!json_string(o, key)) {
        o += ", \"key_hex\": \"";
        o += hex_bytes(key);
        o += '"';
    }
}

std::string seconds_left(int64_t until_us, int64_t now_us) {
    const int64_t s = until_us > now_us ? (until_us - now_us + 999999) / 1000000 : 0;
    return std::to_string(s);
}

}  // namespace

std::string render_lock_xml(const LeaseView &v, const std::string &token_urn, const std::string &root) {
    std::string o = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
                    "<D:prop xmlns:D=\"DAV:\"><D:lockdiscovery><D:activelock>"
                    "<D:locktype><D:write/></D:locktype><D:lockscope><D:exclusive/></D:lockscope>"
                    "<D:depth>0</D:depth>";
    if (!v.owner.empty()) o += "<D:owner>" + xml_escaped(v.owner) + "</D:owner>";
    o += "<D:timeout>Second-" + std::to_string(v.timeout_s) + "</D:timeout>";
    o += "<D:locktoken><D:href>" + xml_escaped(token_urn) + "</D:href></D:locktoken>";
    o += "<D:lockroot><D:href>" + xml_escaped(root) + "</D:href></D:lockroot>";
    o += "</D:activelock></D:lockdiscovery></D:prop>\n";
    return o;
}

std::string render_lock_json(const LeaseView &v, const std::string &token_urn) {
    std::string o = "{";
    json_key(o, v.key);
    json_field(o, "token", token_urn);
    json_field(o, "owner", v.owner);
    o += ", \"timeout\": " + std::to_string(v.timeout_s);
    json_field(o, "granted", iso8601_utc(v.granted_us));
    json_field(o, "idle_since", iso8601_utc(v.idle_since_us));
    json_field(o, "expires", iso8601_utc(v.expires_us));
    o += "}\n";
    return o;
}

std::string render_lease_refusal_text(const LeaseView &v, int64_t now_us, bool stale) {
    std::string o = stale ? "Your lock token is not this key's lease (it expired, was released or was stolen).\n"
                          : "Locked: another client holds an edit lease on this key.\n";
    o += "key: " + text_escape(v.key) + "\n";
    if (!v.key.empty()) {
        o += "owner: " + text_escape(v.owner.empty() ? "-" : v.owner) + "\n";
        o += "user: " + text_escape(v.user.empty() ? "-" : v.user) + "\n";
        o += "granted: " + iso8601_utc(v.granted_us) + "\n";
        o += "idle since: " + iso8601_utc(v.idle_since_us) + "\n";
        o += "expires at: " + iso8601_utc(v.expires_us) + " (in " + seconds_left(v.expires_us, now_us) +
             " s unless used)\n";
    }
    o += stale ? "Take a new lease (LOCK) before writing again.\n"
               : "Retry after the lease ends (see Retry-After), or ask an operator to release it.\n";
    return o;
}

std::string render_lease_refusal_json(const LeaseView &v, int64_t now_us, bool stale) {
    std::string o = stale ? "{\"error\": \"lock token not current\", " : "{\"error\": \"locked\", ";
    json_key(o, v.key);
    if (!v.key.empty()) {
        json_field(o, "owner", v.owner);
        o += ", \"user\": ";
        if (v.user.empty()) o += "null"; else json_string(o, v.user);
        json_field(o, "granted", iso8601_utc(v.granted_us));
        json_field(o, "idle_since", iso8601_utc(v.idle_since_us));
        json_field(o, "expires", iso8601_utc(v.expires_us));
        o += ", \"retry_after_s\": " + seconds_left(v.expires_us, now_us);
    }
    o += "}\n";
    return o;
}

std::string render_leases_json(const std::vector<LeaseView> &leases) {
    std::string o = "[";
    bool first = true;
    for (const LeaseView &v : leases) {
        o += first ? "\n  {" : ",\n  {";
        first = false;
        json_key(o, v.key);
        json_field(o, "owner", v.owner);
        o += ", \"user\": ";
        if (v.user.empty()) o += "null"; else json_string(o, v.user);
        json_field(o, "client", v.client);
        json_field(o, "granted", iso8601_utc(v.granted_us));
        json_field(o, "idle_since", iso8601_utc(v.idle_since_us));
        json_field(o, "expires", iso8601_utc(v.expires_us));
        o += ", \"timeout\": " + std::to_string(v.timeout_s);
        json_field(o, "id", v.id);
        o += "}";
    }
    o += "]";
    return o;
}

std::string render_leases_html(const std::vector<LeaseView> &leases, int64_t now_us, bool actions,
                               const std::string &nonce, const std::string &form_action) {
    std::string o = "<h2>Leases (" + std::to_string(leases.size()) + ")</h2>\n";
    if (leases.empty()) return o + "<p>No edit leases are held.</p>\n";
    o += "<table class=\"leases\">\n<tr><th>key</th><th>owner</th><th>user</th><th>client</th><th>granted</th>"
         "<th>idle since</th><th>expires</th><th>id</th>";
    if (actions) o += "<th></th>";
    o += "</tr>\n";
    for (const LeaseView &v : leases) {
        o += "<tr><td><code>";
        html_escape(o, v.key);
        o += "</code></td><td>";
        html_escape(o, v.owner);
        o += "</td><td>";
        if (v.user.empty()) o += "&ndash;"; else html_escape(o, v.user);
        o += "</td><td>";
        html_escape(o, v.client);
        o += "</td><td class=\"t\">" + iso8601_utc(v.granted_us) + "</td><td class=\"t\">" +
             iso8601_utc(v.idle_since_us) + "</td><td class=\"t\">" + iso8601_utc(v.expires_us) + " (in " +
             seconds_left(v.expires_us, now_us) + " s)</td><td><code>" + v.id + "</code></td>";
        if (actions) {
            o += "<td>";
            for (const char *act : {"release", "steal"}) {
                o += "<form method=\"post\" action=\"";
                html_escape(o, form_action);
                o += "\"><input type=\"hidden\" name=\"action\" value=\"";
                o += act;
                o += "\">";
                if (key_fits_form(v.key)) {
                    o += "<input type=\"hidden\" name=\"key\" value=\"";
                    html_escape(o, v.key);
                } else {
                    o += "<input type=\"hidden\" name=\"key_hex\" value=\"";
                    o += hex_bytes(v.key);
                }
                o += "\"><input type=\"hidden\" name=\"nonce\" value=\"";
                html_escape(o, nonce);
                o += "\"><button type=\"submit\" class=\"";
                o += act;
                o += "\">";
                o += act[0] == 'r' ? "Release" : "Steal";
                o += "</button></form>";
            }
            o += "</td>";
        }
        o += "</tr>\n";
    }
    return o + "</table>\n";
}

std::vector<std::pair<const char *, uint64_t>> lease_counter_fields(const LeaseCounters &c) {
    return {{"leases_granted", c.granted}, {"leases_renewed", c.renewed},
            {"leases_released", c.released}, {"leases_expired", c.expired},
            {"leases_stolen", c.stolen}, {"lease_refusals", c.refusals}};
}

std::string render_leases_metrics(const std::vector<LeaseView> &leases, const LeaseCounters &c) {
    std::string o = "# HELP pidlock_leases Edit leases held now.\n# TYPE pidlock_leases gauge\npidlock_leases " +
                    std::to_string(leases.size()) +
                    "\n# HELP pidlock_lease_events_total Edit lease events, by kind.\n"
                    "# TYPE pidlock_lease_events_total counter\n";
    const std::pair<const char *, uint64_t> events[] = {
        {"granted", c.granted}, {"renewed", c.renewed}, {"released", c.released},
        {"expired", c.expired}, {"stolen", c.stolen}, {"refused", c.refusals}};
    for (const auto &e : events)
        o += std::string("pidlock_lease_events_total{event=\"") + e.first + "\"} " + std::to_string(e.second) + "\n";
    return o;
}

}  // namespace pidlock
