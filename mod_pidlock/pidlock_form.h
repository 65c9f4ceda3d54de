// Keys from a request body (`PidLockKey form NAME`): a streaming scanner the
// glue feeds body bytes to, chunk by chunk as they arrive, split anywhere.
// Pure code, no httpd includes; nothing here throws (allocation failure ends
// the scan with an error).
//
// multipart/form-data (RFC 7578, framing per RFC 2046):
// - The field NAME is the body of a part whose Content-Disposition is
//   `form-data` with `name` NAME (exact, case-sensitive bytes) and no
//   `filename`/`filename*`: its bytes as sent, the line break before the next
//   delimiter removed. Parameter names are case-insensitive, in any order,
//   quoted (backslash escapes: `"a\"b"` is a"b) or token values, with
//   whitespace around `;` and `=`. Other part headers are ignored.
// - A delimiter is `--BOUNDARY` at the start of a line, a line beginning at the
//   start of the body, after a part's header block, or after LF. Line breaks
//   are CRLF or a bare LF (both accepted, also mixed); the LF (and a CR before
//   it) before a delimiter is framing. After `--BOUNDARY`: `--` (the close
//   delimiter; what follows is epilogue), or spaces/tabs and a line break.
//   A preamble before the first delimiter is skipped.
// - Errors (the scan fails, feed() returns false), conservative because
//   parsers differ (Django splits at `--BOUNDARY` anywhere):
//   `--BOUNDARY` inside a line (also in the preamble and in part headers) or
//   anywhere in the epilogue (also `--BOUNDARY--BOUNDARY`); anything else
//   after a delimiter; a header line without a colon
//   or folded (starting with a space/tab); a header block over 16 KiB; a part
//   without Content-Disposition, with two of them, with a type other than
//   form-data, without `name`, with `name` twice or with bad parameter
//   syntax; a `name*` (RFC 2231/5987) parameter that decodes to a watched
//   name or does not decode.
//   These apply for the whole body, also after every field was found (the
//   application still parses the rest). Only an end of body without the close
//   delimiter is tolerated once every field is found; before that, fields
//   not yet found become Malformed.
// - Every part named NAME counts as an occurrence, whether or not it has a
//   filename: a second one is Duplicate (Django files a part with a filename
//   under FILES, not POST, but applications differ). A part NAME with a
//   filename is not the field: if it is the only one, NAME is Absent.
// - Memory: a non-target part streams through; the scanner keeps the value
//   (at most max_len bytes), the current header line, and a carry of at most
//   the boundary length + 4 bytes.
//
// application/x-www-form-urlencoded:
// - Pairs are split at `&` only (not `;`). Names and values are decoded like
//   query values (`+` is a space, %XX once); names are compared after
//   decoding. A name whose decoding has a malformed escape (kept literally,
//   as Python and PHP do) and then equals NAME: Malformed. A value with a
//   malformed escape or a truncated one at its end: Malformed. `NAME` without
//   `=` is present and Empty. A second NAME: Duplicate. Non-target names and
//   values stream through.
//
// Per field: an empty value is Empty, a NUL byte (decoded, for urlencoded)
// Nul, more than max_len bytes TooLong.
#ifndef PIDLOCK_FORM_H
#define PIDLOCK_FORM_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pidlock {

enum class FormKind { None, Multipart, UrlEncoded };

struct FormType {
    FormKind kind = FormKind::None;
    std::string boundary;  // multipart: the boundary, without the leading "--"
    bool bad = false;      // multipart/form-data without a usable boundary
};

// From a Content-Type value (may be null). multipart/form-data with its
// `boundary` parameter (quoted or token, 1..70 characters of RFC 2046's
// bchars, not ending in a space; type and parameter names case-insensitive);
// no, a repeated, a `boundary*` or an invalid boundary, or bad parameter
// syntax: `bad`. application/x-www-form-urlencoded, whatever its parameters.
// Anything else: None.
FormType form_type(const char *content_type) noexcept;

enum class FieldStatus {
    Pending,    // not decided yet (or the scan failed before reaching it)
    Found,      // value() holds it
    Absent,     // the body ended without it (or only as a file part)
    Empty,
    Nul,
    TooLong,
    Malformed,  // broken framing before it was found, a bad escape, name*=
    Duplicate,  // a second occurrence, also after it was Found
};

const char *field_status_text(FieldStatus st) noexcept;

class FormScanner {
public:
    // names: the fields to find (distinct; exact byte compare); max_len: the
    // limit on a value. A FormType with `bad` fails the scan at once.
    FormScanner(const FormType &t, std::vector<std::string> names, size_t max_len) noexcept;

    // The next bytes of the body. Returns false once the scan has failed (it
    // then looks at nothing more), true otherwise.
    bool feed(const char *data, size_t len) noexcept;
    // End of body. Afterwards every name is Found, Absent or an error, except
    // that names a failed scan never reached stay Pending. Returns !failed().
    bool finish() noexcept;

    // Every name is Found, or the scan failed: the caller may stop holding the
    // body back, but keeps feeding it (a later duplicate still fails the scan).
    bool decided() const noexcept;
    bool failed() const noexcept { return failed_; }

    FieldStatus status(size_t i) const noexcept { return fields_[i].status; }
    const std::string &value(size_t i) const noexcept { return fields_[i].value; }
    const std::string &name(size_t i) const noexcept { return fields_[i].name; }
    size_t count() const noexcept { return fields_.size(); }
    // Why the scan failed, for the log ("" while it has not).
    const char *error() const noexcept;
    // Body bytes looked at: all that feed() was given, up to the byte where
    // the scan failed.
    uint64_t consumed() const noexcept { return consumed_; }
    // Bytes held besides the values (carry, header line, pending name): stays
    // small however large the body.
    size_t buffered() const noexcept { return hold_.size() + line_.size() + name_.size(); }

private:
    struct Field {
        std::string name;
        std::string value;
        FieldStatus status = FieldStatus::Pending;
        bool seen = false;  // an occurrence (a part or a pair) was met
    };
    enum class State {
        Preamble, AfterDelim, Headers, Body, Epilogue,  // multipart
        Name, Value,                                    // urlencoded
        Done
    };

    // Failing: a framing error marks every Pending field Malformed while the
    // scan was not decided; a field error marks that field.
    void fail_framing(const char *why);
    void fail_field(size_t i, FieldStatus st, const char *why);

    size_t multipart(const char *p, const char *end);
    size_t urlencoded(const char *p, const char *end);

    // multipart pieces
    const char *scan_content(const char *p, const char *end, bool &found, bool &at_bol);
    const char *first_delim(const char *p, const char *end) const;
    void content(const char *p, size_t n);
    void release_hold(size_t n);
    const char *after_delim(const char *p, const char *end);
    const char *headers(const char *p, const char *end);
    void header_line();
    void content_disposition(const char *p, const char *end);
    void start_part();
    void end_part();
    void finish_multipart();

    // urlencoded pieces
    int pct_step(char c);
    void name_byte(int c);
    void end_name(bool has_value);
    void end_value();

    FormKind kind_;
    std::vector<Field> fields_;
    size_t max_len_;
    size_t max_name_ = 0;
    bool failed_ = false;
    const char *why_ = "";
    std::string why_buf_;
    uint64_t consumed_ = 0;
    State state_ = State::Done;
    long target_ = -1;  // field whose value is being read, or -1

    // multipart
    std::string delim_;               // "--" + boundary
    std::vector<unsigned char> fail_; // KMP borders of delim_
    std::string hold_;                // held: a line break, then delim_[0, k_)
    size_t k_ = 0;
    bool bol_ = true;                 // at a line start with nothing held
    bool match_bol_ = false;          // the partial match began at a line start
    int ad_ = 0;                      // after-delimiter sub-state
    std::string line_;                // header line
    size_t header_bytes_ = 0;
    int cd_count_ = 0;
    bool has_name_ = false, has_filename_ = false;
    std::string part_name_;

    // urlencoded
    std::string name_;                // decoded name, up to max_name_ + 1 bytes
    bool name_over_ = false, name_bad_ = false;
    int pct_ = 0;                     // escape in progress: digits seen after '%'
    char pct_digit_ = 0;              // its first digit
};

}  // namespace pidlock

#endif
