#include "pidlock_render.h"

#include <cinttypes>
#include <cstdio>
#include <ctime>

namespace pidlock {

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 if it is not one.
size_t utf8_seq_len(const std::string &s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    const size_t left = s.size() - i;
    auto cont = [&](size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(i + 1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
        if (c == 0xE0 && b(i + 1) < 0xA0) return 0;  // overlong
        if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // surrogates
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
        if (c == 0xF0 && b(i + 1) < 0x90) return 0;
        if (c == 0xF4 && b(i + 1) >= 0x90) return 0;
        return 4;
    }
    return 0;
}

void append_u64(std::string &out, uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%" PRIu64, v);
    out += buf;
}

void append_i64(std::string &out, int64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%" PRId64, v);
    out += buf;
}

std::string format_duration(int64_t us) {
    char buf[48];
    if (us < 1000) std::snprintf(buf, sizeof buf, "%" PRId64 " µs", us);
    else if (us < 1000000) std::snprintf(buf, sizeof buf, "%.1f ms", us / 1000.0);
    else if (us < 600000000) std::snprintf(buf, sizeof buf, "%.1f s", us / 1e6);
    else std::snprintf(buf, sizeof buf, "%.1f min", us / 6e7);
    return buf;
}

}  // namespace

bool json_string(std::string &out, const std::string &s) {
    bool valid = true;
    out.push_back('"');
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        const size_t n = utf8_seq_len(s, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";  // U+FFFD
            valid = false;
            ++i;
            continue;
        }
        if (n > 1) {
            out.append(s, i, n);
            i += n;
            continue;
        }
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '<': out += "\\u003c"; break;  // safe inside <script> too
        default:
            if (c < 0x20 || c == 0x7F) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out.push_back(static_cast<char>(c));
            }
        }
        ++i;
    }
    out.push_back('"');
    return valid;
}

void html_escape(std::string &out, const std::string &s) {
    for (char ch : s) {
        switch (ch) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default:
            if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t') out += "\xEF\xBF\xBD";
            else out.push_back(ch);
        }
    }
}

std::string hex_bytes(const std::string &s) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size() * 2);
    for (unsigned char c : s) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out;
}

std::string iso8601_utc(int64_t us) {
    const time_t secs = static_cast<time_t>(us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>((us % 1000000) / 1000));
    return buf;
}

std::string render_status_json(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us) {
    std::string o;
    o.reserve(512 + snap.locks.size() * 400);
    o += "{\"version\": ";
    json_string(o, facts.version);
    o += ", \"backend\": ";
    json_string(o, facts.backend);
    o += ", \"mutex\": ";
    json_string(o, facts.mutex);
    o += ", \"mpm\": ";
    json_string(o, facts.mpm);
    o += ", \"generation\": ";
    append_u64(o, snap.generation);
    o += ",\n \"table\": {\"capacity\": ";
    append_u64(o, snap.capacity);
    o += ", \"used\": ";
    append_u64(o, snap.used);
    o += ", \"high_water\": ";
    append_u64(o, snap.high_water);
    o += ", \"key_max\": ";
    append_u64(o, snap.key_cap);
    o += ", \"stripes\": ";
    append_u64(o, snap.stripes);
    const Counters &c = snap.counters;
    const std::pair<const char *, uint64_t> counters[] = {
        {"acquired_read", c.acquired_read}, {"acquired_write", c.acquired_write},
        {"waited", c.waited}, {"timeouts", c.timeouts}, {"bad_keys", c.bad_keys},
        {"reaped", c.reaped}, {"broken", c.broken}, {"full", c.full}};
    o += "},\n \"counters\": {";
    bool first = true;
    for (const auto &kv : counters) {
        if (!first) o += ", ";
        first = false;
        o += '"';
        o += kv.first;
        o += "\": ";
        append_u64(o, kv.second);
    }
    o += "},\n \"locks\": [";
    first = true;
    for (const LockView &l : snap.locks) {
        o += first ? "\n  {" : ",\n  {";
        first = false;
        o += "\"key\": ";
        if (!json_string(o, l.key)) {
            o += ", \"key_hex\": \"";
            o += hex_bytes(l.key);
            o += '"';
        }
        o += ", \"mode\": \"";
        o += mode_name(l.mode);
        o += "\", \"waiting_read\": ";
        append_u64(o, l.waiting_read);
        o += ", \"waiting_write\": ";
        append_u64(o, l.waiting_write);
        o += ", \"holders\": [";
        bool hfirst = true;
        std::string waiters;
        for (const HolderView &h : l.holders) {
            std::string &dst = h.waiting ? waiters : o;
            if (h.waiting ? !waiters.empty() : !hfirst) dst += ", ";
            if (!h.waiting) hfirst = false;
            dst += "{\"pid\": ";
            append_i64(dst, h.pid);
            dst += ", \"mode\": \"";
            dst += mode_name(h.mode);
            dst += "\", \"method\": ";
            json_string(dst, h.method);
            dst += ", \"uri\": ";
            json_string(dst, h.uri);
            dst += ", \"client\": ";
            json_string(dst, h.client);
            dst += ", \"user\": ";
            if (h.has_user) json_string(dst, h.user); else dst += "null";
            dst += ", \"since\": \"";
            dst += iso8601_utc(h.since_us);
            dst += h.waiting ? "\", \"waited_ms\": " : "\", \"held_ms\": ";
            append_i64(dst, now_us > h.since_us ? (now_us - h.since_us) / 1000 : 0);
            dst += '}';
        }
        o += "], \"waiters\": [";
        o += waiters;
        o += "]}";
    }
    o += "]}\n";
    return o;
}

std::string render_status_auto(const TableSnapshot &snap, const ServerFacts &facts) {
    std::string o;
    auto line = [&](const char *name, uint64_t v) {
        o += name;
        o += ": ";
        append_u64(o, v);
        o += '\n';
    };
    o += "Version: " + facts.version + "\n";
    o += "Backend: " + facts.backend + "\n";
    o += "Mutex: " + facts.mutex + "\n";
    o += "MPM: " + facts.mpm + "\n";
    line("Generation", snap.generation);
    line("TableCapacity", snap.capacity);
    line("TableUsed", snap.used);
    line("TableHighWater", snap.high_water);
    uint64_t held = 0, wr = 0, ww = 0;
    for (const LockView &l : snap.locks) {
        wr += l.waiting_read;
        ww += l.waiting_write;
        for (const HolderView &h : l.holders) held += h.waiting ? 0 : 1;
    }
    line("Holders", held);
    line("WaitingRead", wr);
    line("WaitingWrite", ww);
    const Counters &c = snap.counters;
    line("AcquiredRead", c.acquired_read);
    line("AcquiredWrite", c.acquired_write);
    line("Waited", c.waited);
    line("Timeouts", c.timeouts);
    line("BadKeys", c.bad_keys);
    line("Reaped", c.reaped);
    line("Broken", c.broken);
    line("Full", c.full);
    return o;
}

std::string render_status_html(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us) {
    std::string o;
    o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<title>mod_pidlock status</title>"
         "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
         "td,th{border:1px solid #999;padding:2px 6px;text-align:left}</style>"
         "</head><body>\n<h1>mod_pidlock status</h1>\n<p>";
    auto fact = [&](const char *name, const std::string &v) {
        o += name;
        o += ": <b>";
        html_escape(o, v);
        o += "</b>; ";
    };
    fact("version", facts.version);
    fact("backend", facts.backend);
    fact("mutex", facts.mutex);
    fact("MPM", facts.mpm);
    o += "generation ";
    append_u64(o, snap.generation);
    o += "</p>\n<p>table: capacity ";
    append_u64(o, snap.capacity);
    o += ", used ";
    append_u64(o, snap.used);
    o += ", high water ";
    append_u64(o, snap.high_water);
    const Counters &c = snap.counters;
    o += "</p>\n<p>acquired read ";
    append_u64(o, c.acquired_read);
    o += ", acquired write ";
    append_u64(o, c.acquired_write);
    o += ", waited ";
    append_u64(o, c.waited);
    o += ", timeouts ";
    append_u64(o, c.timeouts);
    o += ", bad keys ";
    append_u64(o, c.bad_keys);
    o += ", reaped ";
    append_u64(o, c.reaped);
    o += ", broken ";
    append_u64(o, c.broken);
    o += "</p>\n<table>\n<tr><th>key</th><th>mode</th><th>state</th><th>pid</th>"
         "<th>method</th><th>URI</th><th>client</th><th>user</th><th>since</th>"
         "<th>for</th><th>waiting read/write</th></tr>\n";
    for (const LockView &l : snap.locks) {
        for (const HolderView &h : l.holders) {
            o += "<tr><td>";
            html_escape(o, l.key);
            o += "</td><td>";
            o += mode_name(h.mode);
            o += h.waiting ? "</td><td>waiting</td><td>" : "</td><td>holding</td><td>";
            append_i64(o, h.pid);
            o += "</td><td>";
            html_escape(o, h.method);
            o += "</td><td>";
            html_escape(o, h.uri);
            o += "</td><td>";
            html_escape(o, h.client);
            o += "</td><td>";
            if (h.has_user) html_escape(o, h.user); else o += "-";
            o += "</td><td>";
            o += iso8601_utc(h.since_us);
            o += "</td><td>";
            html_escape(o, format_duration(now_us > h.since_us ? now_us - h.since_us : 0));
            o += "</td><td>";
            append_u64(o, l.waiting_read);
            o += " / ";
            append_u64(o, l.waiting_write);
            o += "</td></tr>\n";
        }
    }
    o += "</table>\n</body></html>\n";
    return o;
}

std::string render_busy_json(const BusyReport &rep, double timeout_s) {
    std::string o = "{\"error\": \"lock not available\", \"key\": ";
    if (!json_string(o, rep.key)) {
        o += ", \"key_hex\": \"";
        o += hex_bytes(rep.key);
        o += '"';
    }
    o += ", \"mode_held\": \"";
    o += mode_name(rep.held_mode);
    o += "\", \"holders\": ";
    append_u64(o, rep.holders);
    o += ", \"waiting_read\": ";
    append_u64(o, rep.waiting_read);
    o += ", \"waiting_write\": ";
    append_u64(o, rep.waiting_write);
    o += ", \"held_ms\": ";
    append_i64(o, rep.held_us / 1000);
    char buf[40];
    std::snprintf(buf, sizeof buf, ", \"waited_s\": %.3f}\n", timeout_s);
    o += buf;
    return o;
}

std::string render_busy_text(const BusyReport &rep, double timeout_s) {
    std::string o = "Lock not available after ";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.3f", timeout_s);
    o += buf;
    o += " s.\nkey: ";
    // Plain text, but still no raw control bytes into a terminal.
    for (char ch : rep.key) {
        const unsigned char u = static_cast<unsigned char>(ch);
        if (u < 0x20 || u == 0x7F) {
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            o += buf;
        } else {
            o.push_back(ch);
        }
    }
    o += "\nmode held: ";
    o += mode_name(rep.held_mode);
    o += "\nholders: ";
    append_u64(o, rep.holders);
    o += "\nwaiting: ";
    append_u64(o, rep.waiting_read);
    o += " read, ";
    append_u64(o, rep.waiting_write);
    o += " write\nheld for: ";
    o += format_duration(rep.held_us);
    o += "\n";
    return o;
}

}  // namespace pidlock
