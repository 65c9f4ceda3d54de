#include "pidlock_form.h"

#include <cstring>

#include "pidlock_key.h"

namespace pidlock {

namespace {

constexpr size_t kMaxHeaderBlock = 16 * 1024;

bool is_ows(char c) { return c == ' ' || c == '\t'; }

bool iequals(const char *p, size_t n, const char *lit) {
    if (std::strlen(lit) != n) return false;
    for (size_t i = 0; i < n; ++i) {
        char c = p[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != lit[i]) return false;
    }
    return true;
}

const char *skip_ows(const char *p, const char *end) {
    while (p < end && is_ows(*p)) ++p;
    return p;
}

const char *trim_end(const char *p, const char *end) {
    while (end > p && is_ows(end[-1])) --end;
    return end;
}

// The type of a Content-Type or Content-Disposition value: up to `;` or
// whitespace.
const char *type_end(const char *p, const char *end) {
    while (p < end && *p != ';' && !is_ows(*p)) ++p;
    return p;
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// The parameters after a media or disposition type:
// *( OWS ";" OWS name OWS "=" OWS value ), the value a token or a quoted
// string with backslash escapes; a trailing ";" is allowed. Calls
// f(name, name_len, value) for each, which may stop the parse by returning
// false. False on bad syntax too.
template <class F>
bool parse_params(const char *p, const char *end, F &&f) {
    std::string value;
    for (;;) {
        p = skip_ows(p, end);
        if (p == end) return true;
        if (*p != ';') return false;
        p = skip_ows(p + 1, end);
        if (p == end) return true;
        const char *name = p;
        while (p < end && *p != '=' && *p != ';' && *p != '"' && !is_ows(*p)) ++p;
        const size_t name_len = static_cast<size_t>(p - name);
        p = skip_ows(p, end);
        if (name_len == 0 || p == end || *p != '=') return false;
        p = skip_ows(p + 1, end);
        value.clear();
        if (p < end && *p == '"') {
            for (++p;; ) {
                if (p == end) return false;
                char c = *p++;
                if (c == '"') break;
                if (c == '\\') {
                    if (p == end) return false;
                    c = *p++;
                }
                value.push_back(c);
            }
        } else {
            const char *v = p;
            while (p < end && *p != ';' && *p != '"' && !is_ows(*p)) ++p;
            value.assign(v, static_cast<size_t>(p - v));
        }
        if (!f(name, name_len, value)) return false;
    }
}

// RFC 2046: 1..70 bchars, the last not a space.
bool valid_boundary(const std::string &b) {
    if (b.empty() || b.size() > 70 || b.back() == ' ') return false;
    for (char c : b) {
        const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && !std::strchr("'()+_,-./:=? ", c)) return false;
    }
    return true;
}

}  // namespace

FormType form_type(const char *content_type) noexcept {
    FormType t;
    if (!content_type) return t;
    const char *end = content_type + std::strlen(content_type);
    const char *p = skip_ows(content_type, end);
    const char *q = type_end(p, end);
    const size_t n = static_cast<size_t>(q - p);
    if (iequals(p, n, "application/x-www-form-urlencoded")) {
        t.kind = FormKind::UrlEncoded;
        return t;
    }
    if (!iequals(p, n, "multipart/form-data")) return t;
    t.kind = FormKind::Multipart;
    try {
        int count = 0;
        const bool ok = parse_params(q, end, [&](const char *name, size_t len, const std::string &v) {
            if (iequals(name, len, "boundary*")) return false;
            if (iequals(name, len, "boundary")) {
                ++count;
                t.boundary = v;
            }
            return true;
        });
        t.bad = !ok || count != 1 || !valid_boundary(t.boundary);
    } catch (...) {
        t.bad = true;
    }
    if (t.bad) t.boundary.clear();
    return t;
}

const char *field_status_text(FieldStatus st) noexcept {
    switch (st) {
    case FieldStatus::Pending: return "pending";
    case FieldStatus::Found: return "found";
    case FieldStatus::Absent: return "absent";
    case FieldStatus::Empty: return "empty value";
    case FieldStatus::Nul: return "NUL byte in value";
    case FieldStatus::TooLong: return "value longer than PidLockMaxKeyLength";
    case FieldStatus::Malformed: return "malformed form body";
    case FieldStatus::Duplicate: return "field repeated";
    }
    return "?";
}

FormScanner::FormScanner(const FormType &t, std::vector<std::string> names, size_t max_len) noexcept
    : kind_(t.kind), max_len_(max_len) {
    try {
        fields_.resize(names.size());
        for (size_t i = 0; i < names.size(); ++i) {
            fields_[i].name = std::move(names[i]);
            if (fields_[i].name.size() > max_name_) max_name_ = fields_[i].name.size();
        }
        if (kind_ == FormKind::UrlEncoded) {
            state_ = State::Name;
        } else if (kind_ == FormKind::Multipart) {
            if (t.bad || !valid_boundary(t.boundary)) {
                fail_framing("multipart/form-data without a valid boundary");
                return;
            }
            delim_ = "--" + t.boundary;
            // fail_[m]: the longest proper border of delim_[0, m).
            fail_.assign(delim_.size() + 1, 0);
            size_t k = 0;
            for (size_t i = 1; i < delim_.size(); ++i) {
                while (k > 0 && delim_[i] != delim_[k]) k = fail_[k];
                if (delim_[i] == delim_[k]) ++k;
                fail_[i + 1] = static_cast<unsigned char>(k);
            }
            hold_.reserve(delim_.size() + 2);
            state_ = State::Preamble;
        }
    } catch (...) {
        fail_framing("out of memory");
    }
}

void FormScanner::fail_framing(const char *why) {
    if (failed_) return;
    failed_ = true;
    why_ = why;
    state_ = State::Done;
    for (Field &f : fields_)
        if (f.status == FieldStatus::Pending) f.status = FieldStatus::Malformed;
}

void FormScanner::fail_field(size_t i, FieldStatus st, const char *why) {
    if (failed_) return;
    failed_ = true;
    state_ = State::Done;
    fields_[i].status = st;
    why_ = why;
    try {
        why_buf_ = "field ";
        why_buf_ += fields_[i].name;
        why_buf_ += ": ";
        why_buf_ += why;
        why_ = why_buf_.c_str();
    } catch (...) {
    }
}

const char *FormScanner::error() const noexcept { return failed_ ? why_ : ""; }

bool FormScanner::decided() const noexcept {
    if (failed_) return true;
    for (const Field &f : fields_)
        if (f.status != FieldStatus::Found) return false;
    return true;
}

bool FormScanner::feed(const char *data, size_t len) noexcept {
    if (failed_) return false;
    try {
        const char *end = data + len;
        if (kind_ == FormKind::Multipart) len = multipart(data, end);
        else if (kind_ == FormKind::UrlEncoded) len = urlencoded(data, end);
        consumed_ += len;
    } catch (...) {
        fail_framing("out of memory");
    }
    return !failed_;
}

bool FormScanner::finish() noexcept {
    if (failed_) return false;
    try {
        if (kind_ == FormKind::Multipart) {
            finish_multipart();
        } else if (state_ == State::Name) {
            end_name(false);
        } else if (state_ == State::Value) {
            end_value();
        }
    } catch (...) {
        fail_framing("out of memory");
    }
    if (!failed_) {
        state_ = State::Done;
        for (Field &f : fields_)
            if (f.status == FieldStatus::Pending) f.status = FieldStatus::Absent;
    }
    return !failed_;
}

// ---- multipart/form-data ----

size_t FormScanner::multipart(const char *data, const char *end) {
    const char *p = data;
    while (p < end && !failed_) {
        switch (state_) {
        case State::Preamble:
        case State::Body:
        case State::Epilogue: {
            bool found = false, at_bol = false;
            p = scan_content(p, end, found, at_bol);
            if (failed_ || !found) break;
            if (state_ == State::Epilogue) {
                fail_framing("boundary after the close delimiter");
            } else if (!at_bol) {
                fail_framing("boundary inside a line");
            } else {
                if (state_ == State::Body) end_part();
                state_ = State::AfterDelim;
                ad_ = 0;
            }
            break;
        }
        case State::AfterDelim:
            p = after_delim(p, end);
            break;
        case State::Headers:
            p = headers(p, end);
            break;
        default:
            p = end;
            break;
        }
    }
    return static_cast<size_t>(p - data);
}

// Hands n held bytes on as content: they turned out not to be framing.
void FormScanner::release_hold(size_t n) {
    content(hold_.data(), n);
    hold_.erase(0, n);
}

// Content bytes of the current part (or of the preamble or epilogue, where
// target_ is -1 and they are dropped).
void FormScanner::content(const char *p, size_t n) {
    if (target_ < 0 || n == 0 || failed_) return;
    Field &f = fields_[static_cast<size_t>(target_)];
    const size_t room = max_len_ - f.value.size();
    const size_t m = n < room ? n : room;
    if (std::memchr(p, '\0', m)) {
        fail_field(static_cast<size_t>(target_), FieldStatus::Nul, "NUL byte in value");
        return;
    }
    f.value.append(p, m);
    if (n > room) fail_field(static_cast<size_t>(target_), FieldStatus::TooLong, "value too long");
}

const char *FormScanner::first_delim(const char *p, const char *end) const {
    const size_t n = static_cast<size_t>(end - p), dl = delim_.size();
    if (const void *hit = memmem(p, n, delim_.data(), dl)) return static_cast<const char *>(hit);
    for (const char *x = n >= dl ? end - (dl - 1) : p; x < end; ++x) {
        x = static_cast<const char *>(std::memchr(x, '-', static_cast<size_t>(end - x)));
        if (!x) break;
        if (std::memcmp(x, delim_.data(), static_cast<size_t>(end - x)) == 0) return x;
    }
    return end;
}

// Looks for delim_ in content, streaming what cannot be part of a delimiter
// (or of the line break before it) to content(). Stops right after a
// delimiter (found; at_bol when it began a line) or at end.
const char *FormScanner::scan_content(const char *p, const char *end, bool &found, bool &at_bol) {
    while (p < end && !failed_) {
        if (k_ == 0) {
            // No delimiter starts before q, so only a line break at its end
            // may be framing: q is the first whole delimiter, else the start
            // of one that the next bytes may complete. memmem keeps binary
            // content (a '-' every 256 bytes) at a fraction of a byte's work.
            const char *q = first_delim(p, end);
            if (q > p) {
                if (q - p == 1 && *p == '\n' && hold_ == "\r") {
                    hold_.push_back('\n');
                } else {
                    size_t t = 0;
                    if (q[-1] == '\n') t = (q - p >= 2 && q[-2] == '\r') ? 2 : 1;
                    else if (q[-1] == '\r' && q == end) t = 1;
                    release_hold(hold_.size());
                    content(p, static_cast<size_t>(q - p) - t);
                    hold_.assign(q - t, t);
                }
                bol_ = false;
                p = q;
                if (p == end) break;
            }
            match_bol_ = hold_.empty() ? bol_ : hold_.back() == '\n';
            if (!match_bol_) release_hold(hold_.size());
            hold_.push_back('-');
            k_ = 1;
            bol_ = false;
            ++p;
            continue;
        }
        if (*p == delim_[k_]) {
            hold_.push_back(*p++);
            if (++k_ == delim_.size()) {
                found = true;
                at_bol = match_bol_;
                hold_.clear();
                k_ = 0;
                return p;
            }
            continue;
        }
        // Mismatch: keep the longest border of the match, retry this byte.
        const size_t k = fail_[k_];
        release_hold(hold_.size() - k);
        k_ = k;
        match_bol_ = false;
    }
    return p;
}

// After --BOUNDARY: "--" (close), or transport padding and a line break.
const char *FormScanner::after_delim(const char *p, const char *end) {
    // ad_: 0 right after the boundary, 1 after one '-', 2 in padding, 3 after CR
    while (p < end) {
        const char c = *p++;
        if (ad_ == 1) {
            if (c == '-') {
                // The close dashes may begin a delimiter ("--b--b" holds
                // "--b" at its fourth byte): the epilogue scan starts with them.
                state_ = State::Epilogue;
                hold_.assign("--");
                k_ = 2;
                match_bol_ = bol_ = false;
                return p;
            }
        } else if (c == '\n') {
            start_part();
            return p;
        } else if (ad_ != 3 && (c == '\r' || is_ows(c) || (c == '-' && ad_ == 0))) {
            ad_ = c == '\r' ? 3 : c == '-' ? 1 : 2;
            continue;
        }
        fail_framing("garbage after a boundary");
        return p;
    }
    return p;
}

void FormScanner::start_part() {
    state_ = State::Headers;
    line_.clear();
    header_bytes_ = 0;
    cd_count_ = 0;
    has_name_ = has_filename_ = false;
    part_name_.clear();
    target_ = -1;
}

const char *FormScanner::headers(const char *p, const char *end) {
    while (p < end) {
        const char *lf = static_cast<const char *>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
        const char *stop = lf ? lf + 1 : end;
        header_bytes_ += static_cast<size_t>(stop - p);
        if (header_bytes_ > kMaxHeaderBlock) {
            fail_framing("part headers longer than 16 KiB");
            return stop;
        }
        line_.append(p, static_cast<size_t>((lf ? lf : end) - p));
        p = stop;
        if (!lf) break;
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (!line_.empty()) {
            header_line();
            line_.clear();
            if (failed_) return p;
            continue;
        }
        // The blank line: the part's body follows.
        if (line_.capacity() > 1024) std::string().swap(line_);
        if (cd_count_ == 0) {
            fail_framing("part without Content-Disposition");
        } else if (!has_name_) {
            fail_framing("part without a name");
        } else {
            for (size_t i = 0; i < fields_.size(); ++i) {
                if (fields_[i].name != part_name_) continue;
                if (fields_[i].seen) {
                    fail_field(i, FieldStatus::Duplicate, "repeated");
                    return p;
                }
                fields_[i].seen = true;
                if (!has_filename_) target_ = static_cast<long>(i);
                break;
            }
            state_ = State::Body;
            bol_ = true;
            hold_.clear();
            k_ = 0;
        }
        return p;
    }
    return p;
}

void FormScanner::header_line() {
    const char *p = line_.data(), *end = p + line_.size();
    if (line_.find(delim_) != std::string::npos) {
        fail_framing("boundary inside part headers");
        return;
    }
    if (is_ows(*p)) {
        fail_framing("folded part header line");
        return;
    }
    const char *colon = static_cast<const char *>(std::memchr(p, ':', line_.size()));
    if (!colon || trim_end(p, colon) == p) {
        fail_framing("part header line without a name and colon");
        return;
    }
    if (!iequals(p, static_cast<size_t>(trim_end(p, colon) - p), "content-disposition")) return;
    if (++cd_count_ > 1) {
        fail_framing("Content-Disposition repeated in a part");
        return;
    }
    content_disposition(skip_ows(colon + 1, end), trim_end(colon + 1, end));
}

void FormScanner::content_disposition(const char *p, const char *end) {
    const char *q = type_end(p, end);
    if (!iequals(p, static_cast<size_t>(q - p), "form-data")) {
        fail_framing("Content-Disposition is not form-data");
        return;
    }
    const char *why = "malformed Content-Disposition parameters";
    long star = -1;  // field a name* parameter names
    std::string decoded;
    const bool ok = parse_params(q, end, [&](const char *n, size_t len, const std::string &v) {
        if (iequals(n, len, "name")) {
            if (has_name_) {
                why = "name parameter repeated";
                return false;
            }
            has_name_ = true;
            part_name_ = v;
        } else if (iequals(n, len, "filename") || iequals(n, len, "filename*")) {
            has_filename_ = true;
        } else if (iequals(n, len, "name*")) {
            // charset'language'percent-encoded: refused when it does not
            // decode or decodes to a watched name.
            why = "name* parameter that does not decode";
            const size_t q1 = v.find('\'');
            const size_t q2 = q1 == std::string::npos ? q1 : v.find('\'', q1 + 1);
            if (q2 == std::string::npos) return false;
            const KeyStatus st = key_decode_component(v.data() + q2 + 1, v.size() - q2 - 1, false,
                                                      max_name_, decoded);
            if (st == KeyStatus::Malformed || st == KeyStatus::Nul) return false;
            for (size_t i = 0; st == KeyStatus::Ok && i < fields_.size(); ++i)
                if (decoded == fields_[i].name) star = static_cast<long>(i);
            if (star >= 0) return false;
        }
        return true;
    });
    if (star >= 0) fail_field(static_cast<size_t>(star), FieldStatus::Malformed, "named by a name* parameter");
    else if (!ok) fail_framing(why);
}

void FormScanner::end_part() {
    if (target_ < 0) return;
    const size_t i = static_cast<size_t>(target_);
    target_ = -1;
    if (fields_[i].value.empty()) fail_field(i, FieldStatus::Empty, "empty value");
    else fields_[i].status = FieldStatus::Found;
}

void FormScanner::finish_multipart() {
    switch (state_) {
    case State::Preamble:
        // No delimiter at all: an empty body has no fields, anything else is
        // not multipart.
        if (consumed_ > 0) fail_framing("no boundary delimiter in the body");
        break;
    case State::AfterDelim:
    case State::Headers:
    case State::Body:
        if (!decided()) fail_framing("body ends without the close delimiter");
        break;
    default:
        break;
    }
}

// ---- application/x-www-form-urlencoded ----

// One byte of a percent-encoded stream ('+' is a space): the decoded byte,
// -1 inside an escape, -2 when the byte breaks the escape in progress.
int FormScanner::pct_step(char c) {
    if (pct_ == 0) {
        if (c == '%') {
            pct_ = 1;
            return -1;
        }
        return c == '+' ? ' ' : static_cast<unsigned char>(c);
    }
    const int h = hexval(c);
    if (h < 0) return -2;
    if (pct_ == 1) {
        pct_ = 2;
        pct_digit_ = c;
        return -1;
    }
    pct_ = 0;
    return hexval(pct_digit_) * 16 + h;
}

void FormScanner::name_byte(int c) {
    if (name_over_) return;
    if (name_.size() >= max_name_) {
        name_over_ = true;
        return;
    }
    name_.push_back(static_cast<char>(c));
}

size_t FormScanner::urlencoded(const char *data, const char *end) {
    const char *p = data;
    while (p < end && !failed_) {
        if (state_ == State::Value && target_ < 0) {
            const char *amp = static_cast<const char *>(std::memchr(p, '&', static_cast<size_t>(end - p)));
            if (!amp) return static_cast<size_t>(end - data);
            p = amp + 1;
            state_ = State::Name;
            continue;
        }
        const char c = *p++;
        if (state_ == State::Value) {
            if (c == '&') {
                end_value();
                continue;
            }
            Field &f = fields_[static_cast<size_t>(target_)];
            const int d = pct_step(c);
            if (d == -1) continue;
            if (d == -2) fail_field(static_cast<size_t>(target_), FieldStatus::Malformed, "malformed percent escape");
            else if (d == 0) fail_field(static_cast<size_t>(target_), FieldStatus::Nul, "NUL byte in value");
            else if (f.value.size() >= max_len_) fail_field(static_cast<size_t>(target_), FieldStatus::TooLong, "value too long");
            else f.value.push_back(static_cast<char>(d));
        } else if (state_ == State::Name) {
            if (c == '&' || c == '=') {
                end_name(c == '=');
                continue;
            }
            if (name_over_) continue;
            int d = pct_step(c);
            if (d == -2) {
                // Kept literally, as lenient decoders do; the byte starts afresh.
                name_bad_ = true;
                name_byte('%');
                if (pct_ == 2) name_byte(pct_digit_);
                pct_ = 0;
                d = pct_step(c);
            }
            if (d >= 0) name_byte(d);
        } else {
            return static_cast<size_t>(end - data);
        }
    }
    return static_cast<size_t>(p - data);
}

void FormScanner::end_name(bool has_value) {
    if (pct_ != 0) {
        name_bad_ = true;
        name_byte('%');
        if (pct_ == 2) name_byte(pct_digit_);
        pct_ = 0;
    }
    long match = -1;
    for (size_t i = 0; !name_over_ && i < fields_.size(); ++i)
        if (fields_[i].name == name_) match = static_cast<long>(i);
    const bool bad = name_bad_;
    name_.clear();
    name_over_ = name_bad_ = false;
    target_ = -1;
    state_ = has_value ? State::Value : State::Name;
    if (match < 0) return;
    const size_t i = static_cast<size_t>(match);
    if (bad) fail_field(i, FieldStatus::Malformed, "malformed percent escape in the name");
    else if (fields_[i].seen) fail_field(i, FieldStatus::Duplicate, "repeated");
    else if (!has_value) fail_field(i, FieldStatus::Empty, "empty value");
    else target_ = match;
    fields_[i].seen = true;
}

void FormScanner::end_value() {
    if (target_ >= 0) {
        const size_t i = static_cast<size_t>(target_);
        if (pct_ != 0) fail_field(i, FieldStatus::Malformed, "malformed percent escape");
        else if (fields_[i].value.empty()) fail_field(i, FieldStatus::Empty, "empty value");
        else fields_[i].status = FieldStatus::Found;
    }
    pct_ = 0;
    target_ = -1;
    if (!failed_) state_ = State::Name;
}

}  // namespace pidlock
