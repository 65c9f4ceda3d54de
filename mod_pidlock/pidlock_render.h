// Rendering of table snapshots and busy reports: pure functions of their
// input, so every byte a client sees can be unit-tested without a server.
// Callers rely on: JSON output is valid JSON whatever bytes a key holds
// (invalid UTF-8 becomes U+FFFD, with the raw bytes in `key_hex`); HTML output
// escapes every value that came from a request.
#ifndef PIDLOCK_RENDER_H
#define PIDLOCK_RENDER_H

#include <string>
#include <utility>
#include <vector>

#include "pidlock_table.h"

namespace pidlock {

struct ServerFacts {
    std::string version;  // module version
    std::string backend;  // "shared" or "thread"
    std::string mutex;    // mutex mechanism name
    std::string mpm;      // MPM name
};

// Appends `s` as a JSON string literal (with quotes). True if `s` was valid
// UTF-8 (false: invalid bytes were replaced by U+FFFD).
bool json_string(std::string &out, const std::string &s);
void html_escape(std::string &out, const std::string &s);
std::string hex_bytes(const std::string &s);
// Plain text, but no raw control bytes into a terminal: they become \xNN.
std::string text_escape(const std::string &s);
// RFC 3339 UTC with milliseconds: 2026-11-22T01:02:03.456Z
std::string iso8601_utc(int64_t us);

// A holder's URI as the status page shows it: its query string (which may
// carry tokens) as "?…" unless `show_query` (PidLockStatusQuery On).
std::string status_uri(const std::string &uri, bool show_query);
// True if `key` survives an HTML form field as text: valid UTF-8 without C0
// control bytes or DEL. Other keys travel as `key_hex`.
bool key_fits_form(const std::string &key);

// What other parts of the module add to the status page: counters into
// `counters`, members after `locks` in ?json (each ", \"name\": value"),
// sections after the locks in HTML, series in ?metrics.
struct StatusExtra {
    std::vector<std::pair<const char *, uint64_t>> counters;
    std::string json_members, html, metrics;
    // `Name: value` lines of ?auto (and PidLock... in mod_status's ?auto),
    // and <dt> items of mod_status's section.
    std::vector<std::pair<std::string, uint64_t>> auto_lines;
    std::vector<std::pair<std::string, std::string>> mod_status_items;
};

std::string render_status_json(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us, bool show_query = false,
                               const StatusExtra *extra = nullptr);
// What the HTML page offers at this location.
struct PageOptions {
    bool actions = false;       // PidLockStatusActions On: a Break form per lock
    std::string nonce;          // embedded in those forms
    std::string form_action;    // the status page's own path, where forms post
    int64_t stale_us = 60 * 1000000LL;  // held longer than this: highlighted
    int refresh_s = 0;          // reload every N seconds (0: never)
    bool show_query = false;    // PidLockStatusQuery On: holders' query strings shown
    const StatusExtra *extra = nullptr;
};

std::string render_status_html(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us, const PageOptions &opt = PageOptions());
// `prefix` is put before every name ("PidLock" inside mod_status's page).
std::string render_status_auto(const TableSnapshot &snap, const ServerFacts &facts,
                               const char *prefix = "", const StatusExtra *extra = nullptr);
// The PidLock section of mod_status's server-status page (HTML fragment):
// summary and the first `max_locks` locks.
std::string render_mod_status_section(const TableSnapshot &snap, const ServerFacts &facts,
                                      size_t max_locks = 50, const StatusExtra *extra = nullptr);
// Prometheus text exposition format, version 0.0.4.
std::string render_status_metrics(const TableSnapshot &snap, const ServerFacts &facts,
                                  const StatusExtra *extra = nullptr);

// The body of a busy answer: never another client's address or user name.
std::string render_busy_json(const BusyReport &rep, double timeout_s);
std::string render_busy_text(const BusyReport &rep, double timeout_s);

}  // namespace pidlock

#endif
