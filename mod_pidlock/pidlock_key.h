// Key canonicalization for mod_pidlock: turns what a request says about its PID
// into the bytes the lock table is keyed by. Pure functions, no httpd includes.
// Callers rely on: two spellings of one PID give one key; malformed input is
// reported, never guessed at.
#ifndef PIDLOCK_KEY_H
#define PIDLOCK_KEY_H

#include <cstddef>
#include <string>

namespace pidlock {

enum class KeySource { Path, Query, Header, Form };
const char *key_source_name(KeySource s);

enum class KeyStatus {
    Ok,          // key decoded into `out`
    Absent,      // this source yields nothing; try the next one
    Empty,       // source present but empty: 400
    Malformed,   // bad percent escape: 400
    Nul,         // decoded NUL byte: 400
    TooLong,     // longer than the limit: 414 (path, query) or 400 (header)
    Repeated,    // the source appears more than once (?pid=a&pid=b): 400
};

// A key's bytes, taken without a copy where nothing needs decoding: `data`
// points into the caller's own text (the capture, the query string, the
// header value) and lives as long as it; where something was decoded, into
// the `scratch` string the caller passed. The key_view_* functions are the
// key_from_* ones below without that copy (same statuses, same bytes).
struct KeyView {
    const char *data = nullptr;
    size_t len = 0;
};

// HTTP status for a key status that refuses the request (0 for Ok/Absent).
int key_status_http(KeyStatus st, KeySource src);
const char *key_status_text(KeyStatus st);

// A path key from the first capture of the path regex, taken from r->uri, which
// httpd has already decoded except for %2F/%2f (AllowEncodedSlashes NoDecode):
// those, and only those, are decoded here.
KeyStatus key_from_path_capture(const char *cap, size_t len, size_t max_len,
                                std::string &out);
KeyStatus key_view_path_capture(const char *cap, size_t len, size_t max_len,
                                std::string &scratch, KeyView &out);

// Percent-decodes once; `plus_is_space` for query values. Rejects malformed
// escapes and NUL, applies the length limit to the decoded bytes.
KeyStatus key_decode_component(const char *s, size_t len, bool plus_is_space,
                               size_t max_len, std::string &out);
KeyStatus key_view_component(const char *s, size_t len, bool plus_is_space,
                             size_t max_len, std::string &scratch, KeyView &out);

// The argument named `name` (compared after decoding) in a raw query string
// (r->args, may be null). `?pid` without `=` counts as present+empty; an
// argument given twice is Repeated, whatever the copies say.
KeyStatus key_from_query(const char *args, const char *name, size_t max_len,
                         std::string &out);
KeyStatus key_view_query(const char *args, const char *name, size_t max_len,
                         std::string &scratch, KeyView &out);

// A request header's value (null if absent). A raw comma means the header
// was sent more than once (httpd joins the copies with ", "): Repeated.
KeyStatus key_from_header(const char *value, size_t max_len, std::string &out);
KeyStatus key_view_header(const char *value, size_t max_len, std::string &scratch, KeyView &out);

// The literal text every match of an anchored regex must start with ("^/mn/v2/"
// for "^/mn/v2/(?:object|meta)/(.+)$"), or "" when none can be told. Lets the
// glue skip the regex for requests that cannot match.
std::string regex_literal_prefix(const char *regex);

// Patterns of the form ^LITERAL(.+)$ or ^LITERAL(.*)$ (the `$` optional) are
// matched without the regex engine: a prefix compare, the capture is the
// rest. `ok` false for any other pattern.
struct SimpleCapture {
    bool ok = false;
    bool allow_empty = false;  // (.*) rather than (.+)
    std::string prefix;
};
SimpleCapture regex_simple_capture(const char *regex);

enum class FastMatch { NoMatch, Match, UseRegex };
// Applies a SimpleCapture to a path. UseRegex where the answer needs the
// engine after all (a newline in the path: `.` does not match it).
FastMatch simple_capture_match(const SimpleCapture &sc, const char *path, const char **cap,
                               size_t *cap_len);
FastMatch simple_capture_match(const char *prefix, size_t prefix_len, bool allow_empty,
                               const char *path, const char **cap, size_t *cap_len);
// simple_capture_match and key_view_path_capture of its capture in one: a
// path whose rest holds no '%' and no newline (the common case) is looked
// at once. Absent where the pattern does not match; `*use_regex` where the
// engine must decide (a newline in the path).
KeyStatus simple_capture_key(const char *prefix, size_t prefix_len, bool allow_empty, const char *path,
                             size_t max_len, std::string &scratch, KeyView &out, bool *use_regex);
// The request path's common case of simple_capture_key: true, with `out`
// viewing the rest of `path` after `prefix`, where that rest is a key as it
// stands (not empty, at most max_len bytes, no '%' and no newline). False
// in every other case, where simple_capture_key must decide.
bool plain_path_key(const char *prefix, size_t prefix_len, const char *path, size_t max_len, KeyView &out);

}  // namespace pidlock

#endif
