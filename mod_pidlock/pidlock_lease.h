// Edit leases (WebDAV LOCK/UNLOCK on a PID): the lease table, its tokens, and
// the parsers for the headers that carry them (If, Timeout, Lock-Token) and
// for the <owner> of a LOCK body. No httpd includes.
//
// Callers rely on: the table lives in one region of fixed capacity holding
// offsets only (any process may map it anywhere); one stripe of the caller's
// StripeLocks guards it; every deadline is wall-clock microseconds passed in
// by the caller, so a restart that reattaches the region keeps them; a lease
// idle longer than its timeout is gone at the next access; tokens are
// compared in constant time and never leave the table except to the client
// that was granted them (views carry a short hash, `id`). The parsers are
// pure functions of their input and never throw on any bytes.
#ifndef PIDLOCK_LEASE_H
#define PIDLOCK_LEASE_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pidlock_table.h"

namespace pidlock {

// ----------------------------------------------------------------- tokens

struct LeaseToken {
    uint8_t b[16] = {};
};
// A version-4 UUID from 16 random bytes: 122 of their bits are kept.
LeaseToken lease_token_from_random(const uint8_t raw[16]);
// "urn:uuid:xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" (lower case).
std::string lease_token_urn(const LeaseToken &t);
// Parses a urn:uuid: token (scheme and hex case-insensitive). False if it
// is anything else.
bool lease_token_parse(const std::string &s, LeaseToken &t);
// Constant time in the token's bytes.
bool lease_token_equal(const LeaseToken &a, const LeaseToken &b);
// A short, one-way name for a token on the status page (8 hex digits).
std::string lease_token_id(const LeaseToken &t);

// ---------------------------------------------------------------- parsers

// RFC 4918 §10.4: If = ( 1*No-tag-list | 1*Tagged-list ). A list's
// conditions: state tokens (coded URLs) and ETags, each maybe under Not.
struct IfCondition {
    bool negated = false;
    bool etag = false;
    std::string value;  // the coded URL's URI, or the entity tag with quotes
};
struct IfList {
    std::string tag;  // the resource tag's URI; empty for an untagged list
    std::vector<IfCondition> conditions;
};
// False if the header is malformed (the request then gets 400).
bool parse_if_header(const std::string &value, std::vector<IfList> &lists);
// The state tokens the header submits: coded URLs not under Not, in order,
// without repeats.
std::vector<std::string> if_submitted_tokens(const std::vector<IfList> &lists);

// The If header as a whole (RFC 4918 §10.4: true if any list holds; a list
// holds if all its conditions do), given the state tokens that are the
// resource's (`held`: the lease's token, if the request may use it). The
// module cannot know the resource's entity tag (the application's), so the
// lists whose token conditions hold hand their entity tags on as one
// If-Match (an entity tag matches if it is any of them):
//   True        a list holds with no entity tag: nothing to add
//   False       no list can hold: 412
//   IfMatch     the request holds if the entity tag is one of `etags`
//   Unsupported `Not [etag]` (If-Match cannot say it): the caller refuses
enum class IfVerdict { True, False, IfMatch, Unsupported };
struct IfEtags {
    IfVerdict verdict = IfVerdict::True;
    std::vector<std::string> etags;  // as sent, quotes (and W/) kept
};
IfEtags if_entity_tags(const std::vector<IfList> &lists, const std::vector<std::string> &held);

// RFC 4918 §10.7: Timeout = 1#( "Second-" 1*DIGIT | "Infinite" ). The first
// entry wins; `*seconds` is -1 for Infinite. Values above 2^32-1 (the RFC's
// limit), unknown entries and empty lists are malformed: false.
bool parse_timeout_header(const std::string &value, int64_t *seconds);
// The lease's timeout for a request: its Timeout (-1: none or Infinite)
// bounded by [1, max]; none gets `dflt`.
uint32_t lease_timeout_for(int64_t requested, uint32_t dflt, uint32_t max);

// RFC 4918 §10.5: Lock-Token = Coded-URL ("<" URI ">"). False if malformed.
bool parse_lock_token_header(const std::string &value, std::string &uri);

// The text of the <owner> element of a LOCK body (any namespace prefix):
// markup dropped, the XML predefined and numeric character references
// decoded, white space collapsed, cut to `cap` bytes on a UTF-8 boundary.
// Empty if there is none. False if the body is not acceptable: a DOCTYPE or
// entity declaration (no external entities are ever followed), an
// unterminated tag or reference.
bool parse_lock_owner(const std::string &body, size_t cap, std::string &owner);
// The same parse, and what the lockinfo asks for: a lease is an exclusive
// write lock, so `<lockscope><shared/>` (or a scope other than exclusive)
// and a `<locktype>` other than `<write/>` are noted for the caller to
// refuse (RFC 4918 §9.10.6: 412, the lockinfo cannot be satisfied).
struct LockInfo {
    std::string owner;
    bool shared = false, unknown_scope = false, not_write = false;
};
bool parse_lock_info(const std::string &body, size_t cap, LockInfo &info);

// RFC 4918 §9.10.3: a LOCK's Depth is 0 or infinity (none: infinity); a
// PID is one resource without members, so both lock just it. False for
// any other value (the request then gets 400).
bool parse_lock_depth(const char *value, bool *infinity);

// ------------------------------------------------------------------ table

constexpr size_t kLeaseOwnerCap = 256;

struct LeaseParams {
    uint32_t capacity = 0;  // leases held at once
    uint32_t key_cap = 0;   // longest key in bytes
};

// Who asks, for a grant.
struct LeaseRequest {
    std::string owner;   // the LOCK body's <owner> text
    std::string user;    // r->user, empty if none
    std::string client;  // client address (status page only)
    uint32_t timeout_s = 0;
};

// A lease as reports and the status page show it: never its token.
struct LeaseView {
    std::string key, owner, user, client, id;
    int64_t granted_us = 0, idle_since_us = 0, expires_us = 0;
    uint32_t timeout_s = 0;
};

struct LeaseCounters {
    uint64_t granted = 0, renewed = 0, released = 0, expired = 0, stolen = 0, refusals = 0;
};

enum class LeaseOutcome {
    Granted,    // a new lease (LOCK, steal)
    Renewed,    // LOCK refresh with the lease's token
    Released,   // UNLOCK with its token, or an operator's release
    Free,       // a write on a key without a lease, carrying no token
    Allowed,    // a write carrying the lease's token (renewed)
    Locked,     // 423: held, and the request carries no token
    Stale,      // 412: the token is not the key's lease's (expired, released, stolen, unknown)
    Forbidden,  // 403: the lease's token, but another user's
    Mismatch,   // 409: UNLOCK with a token that is not the key's lease's
    NotHeld,    // operator's release of a key without a lease
    Full,       // 503: no room for another lease
    Error       // the mutex failed
};

// Where leases are kept, as the request path and the status page see it:
// the host's shared table today; a cluster store (PostgreSQL) can implement
// the same operations so a lease holds across hosts. `now_us` is wall-clock
// time, passed in so tests inject a clock.
class LeaseStore {
  public:
    virtual ~LeaseStore() = default;
    virtual uint32_t capacity() const = 0;
    virtual uint32_t used() const = 0;

    // LOCK. With `tokens` (If: submitted) a refresh: Renewed, Stale or
    // Forbidden. Without: Granted with `fresh` as the token, Locked
    // (`view` shows the holder) or Full.
    virtual LeaseOutcome lock(const std::string &key, const std::vector<LeaseToken> &tokens,
                              const LeaseRequest &req, const LeaseToken &fresh, int64_t now_us,
                              LeaseView *view) = 0;
    // UNLOCK: Released, Mismatch or Forbidden.
    virtual LeaseOutcome unlock(const std::string &key, const LeaseToken &token, const std::string &user,
                                int64_t now_us, LeaseView *view) = 0;
    // A write on `key`: Free, Allowed (the lease renewed), Locked, Stale or
    // Forbidden. `foreign_tokens`: the request submitted tokens that are not
    // ours (counts as carrying a token that matches nothing).
    virtual LeaseOutcome check_write(const std::string &key, const std::vector<LeaseToken> &tokens,
                                     bool foreign_tokens, const std::string &user, int64_t now_us,
                                     LeaseView *view) = 0;
    // Any other request carrying the lease's token (a read) renews it; no
    // refusal, nothing counted but the renewal.
    virtual void touch(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
                       int64_t now_us) = 0;
    // Operator's release: Released (`old` shows what ended) or NotHeld.
    virtual LeaseOutcome release(const std::string &key, int64_t now_us, LeaseView *old) = 0;
    // Operator's steal, one step: the key's lease (if any) ends and a new
    // one with `fresh` is granted to `req`. Granted or Full.
    virtual LeaseOutcome steal(const std::string &key, const LeaseRequest &req, const LeaseToken &fresh,
                               int64_t now_us, LeaseView *old, bool *had_old, LeaseView *now_view) = 0;
    // Every live lease, oldest grant first, and the counters.
    virtual bool snapshot(int64_t now_us, std::vector<LeaseView> &out, LeaseCounters &c) = 0;
    // How many live leases, and the counters, without copying any lease
    // (the ?auto and mod_status summary).
    virtual bool summary(int64_t now_us, uint32_t *live, LeaseCounters &c) = 0;
    // Why the last operation gave Error, if the store can say (else "").
    virtual std::string failure() const { return std::string(); }
};

// The host's lease table: one region, any process.
class LeaseTable final : public LeaseStore {
  public:
    static size_t region_size(const LeaseParams &p);
    static bool format(void *base, size_t size, const LeaseParams &p);
    // The version of the region's layout (a build with another never
    // attaches to this one's region).
    static uint32_t layout_version();
    // Attaches to a formatted region; stripe 0 of `locks` guards it. The
    // header is read once: its capacity and key length are copied and never
    // read again, and every length read from a slot is cut to its field, so
    // a process that scribbles the region cannot make another read or write
    // past it. The second form also insists on `expect` and on a region of
    // `size` bytes big enough for it (httpd: the parent's own parameters).
    LeaseTable(void *base, StripeLocks *locks);
    LeaseTable(void *base, size_t size, const LeaseParams &expect, StripeLocks *locks);
    bool valid() const { return hdr_ != nullptr; }
    const LeaseParams &params() const { return params_; }
    uint32_t capacity() const override { return params_.capacity; }
    uint32_t used() const override;

    LeaseOutcome lock(const std::string &key, const std::vector<LeaseToken> &tokens,
                      const LeaseRequest &req, const LeaseToken &fresh, int64_t now_us,
                      LeaseView *view) override;
    LeaseOutcome unlock(const std::string &key, const LeaseToken &token, const std::string &user,
                        int64_t now_us, LeaseView *view) override;
    LeaseOutcome check_write(const std::string &key, const std::vector<LeaseToken> &tokens,
                             bool foreign_tokens, const std::string &user, int64_t now_us,
                             LeaseView *view) override;
    void touch(const std::string &key, const std::vector<LeaseToken> &tokens, const std::string &user,
               int64_t now_us) override;
    LeaseOutcome release(const std::string &key, int64_t now_us, LeaseView *old) override;
    LeaseOutcome steal(const std::string &key, const LeaseRequest &req, const LeaseToken &fresh,
                       int64_t now_us, LeaseView *old, bool *had_old, LeaseView *now_view) override;
    bool snapshot(int64_t now_us, std::vector<LeaseView> &out, LeaseCounters &c) override;
    bool summary(int64_t now_us, uint32_t *live, LeaseCounters &c) override;
    // Adds to the counters (a cluster store keeps its counts here).
    void add_counts(const LeaseCounters &d);

  private:
    struct Header;
    struct Slot;
    static size_t slot_bytes(uint32_t key_cap);
    Slot *slot(uint32_t i) const;
    char *key_of(uint32_t i) const;
    int enter();
    void leave();
    // Frees every lease idle past its deadline; the slot of `key` or -1.
    int64_t sweep_and_find(const std::string &key, int64_t now_us);
    int64_t free_slot() const;
    void fill(uint32_t i, const std::string &key, const LeaseRequest &req, const LeaseToken &t,
              int64_t now_us);
    void view_of(uint32_t i, LeaseView *v) const;
    void clear(uint32_t i);
    bool matches(uint32_t i, const std::vector<LeaseToken> &tokens) const;
    bool user_ok(uint32_t i, const std::string &user) const;
    void renew(uint32_t i, int64_t now_us, uint32_t timeout_s);

    Header *hdr_ = nullptr;
    char *base_ = nullptr;
    StripeLocks *locks_ = nullptr;
    LeaseParams params_;
    size_t slot_size_ = 0;  // the private copy slot() uses
};

// ------------------------------------------------------------- rendering

// The LOCK answer: RFC 4918 lockdiscovery XML, or JSON.
std::string render_lock_xml(const LeaseView &v, const std::string &token_urn, const std::string &root);
std::string render_lock_json(const LeaseView &v, const std::string &token_urn);
// The 423 report: key, owner, idle since, expires at; never the token or
// the client's address.
std::string render_lease_refusal_text(const LeaseView &v, int64_t now_us, bool stale);
std::string render_lease_refusal_json(const LeaseView &v, int64_t now_us, bool stale);
// The status page's `leases` array (JSON value), its HTML section and its
// Prometheus series.
std::string render_leases_json(const std::vector<LeaseView> &leases);
std::string render_leases_html(const std::vector<LeaseView> &leases, int64_t now_us, bool actions,
                               const std::string &nonce, const std::string &form_action);
std::string render_leases_metrics(const std::vector<LeaseView> &leases, const LeaseCounters &c);
// ?auto's lines: Leases, LeaseCapacity, LeasesGranted, LeasesRenewed,
// LeasesReleased, LeasesExpired, LeasesStolen, LeaseRefusals.
std::vector<std::pair<std::string, uint64_t>> lease_auto_lines(uint32_t live, uint32_t capacity,
                                                               const LeaseCounters &c);
// The counters as the status page's `counters` object names them.
std::vector<std::pair<const char *, uint64_t>> lease_counter_fields(const LeaseCounters &c);

}  // namespace pidlock

#endif
