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

std::string text_escape(const std::string &s) {
    std::string o;
    char buf[8];
    for (char ch : s) {
        const unsigned char u = static_cast<unsigned char>(ch);
        if (u < 0x20 || u == 0x7F) {
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            o += buf;
        } else {
            o.push_back(ch);
        }
    }
    return o;
}

std::string status_uri(const std::string &uri, bool show_query) {
    const size_t q = uri.find('?');
    if (show_query || q == std::string::npos) return uri;
    return uri.substr(0, q + 1) + "\xE2\x80\xA6";  // U+2026
}

bool key_fits_form(const std::string &key) {
    for (size_t i = 0; i < key.size();) {
        const unsigned char c = static_cast<unsigned char>(key[i]);
        if (c < 0x20 || c == 0x7F) return false;
        const size_t n = utf8_seq_len(key, i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

namespace {

// "key": the key as a JSON string, and "key_hex" with its raw bytes where
// they are not valid UTF-8.
void json_key_fields(std::string &o, const std::string &key) {
    o += "\"key\": ";
    if (!json_string(o, key)) {
        o += ", \"key_hex\": \"";
        o += hex_bytes(key);
        o += '"';
    }
}

// The cluster tier's numbers, named once for every format.
struct ClusterField {
    const char *name;   // JSON
    const char *label;  // HTML
    int64_t value;
};
std::vector<ClusterField> cluster_fields(const ClusterView &c) {
    return {{"connections", "PostgreSQL connections", c.connections},
            {"held", "Requests holding cluster locks", c.held},
            {"waiting", "Requests waiting in PostgreSQL", c.waiting},
            {"lost", "Cluster locks lost while held", c.lost},
            {"errors", "PostgreSQL errors", c.errors}};
}

}  // namespace

std::string render_status_json(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us, bool show_query, const StatusExtra *extra) {
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
        {"reaped", c.reaped}, {"broken", c.broken}, {"full", c.full}, {"repairs", c.repairs},
        {"refused_waiters", c.refused_waiters}, {"client_gone", c.client_gone}};
    o += "},\n \"counters\": {";
    bool first = true;
    auto counter = [&](const char *name, uint64_t v) {
        if (!first) o += ", ";
        first = false;
        o += '"';
        o += name;
        o += "\": ";
        append_u64(o, v);
    };
    for (const auto &kv : counters) counter(kv.first, kv.second);
    if (extra)
        for (const auto &kv : extra->counters) counter(kv.first, kv.second);
    if (snap.cluster.on) {
        o += "},\n \"cluster\": {\"backend\": ";
        json_string(o, snap.cluster.backend);
        for (const ClusterField &f : cluster_fields(snap.cluster)) {
            o += ", \"";
            o += f.name;
            o += "\": ";
            o += std::to_string(f.value);
        }
        o += ", \"remote\": [";
        bool first_remote = true;
        for (const RemoteHolder &h : snap.cluster.remote) {
            o += first_remote ? "{" : ", {";
            first_remote = false;
            json_key_fields(o, h.key);
            o += ", \"mode\": \"";
            o += mode_name(h.mode);
            o += "\", \"session\": ";
            o += std::to_string(h.session);
            o += ", \"application\": ";
            json_string(o, h.application);
            o += ", \"client\": ";
            json_string(o, h.client);
            o += ", \"since\": ";
            json_string(o, iso8601_utc(h.since_us));
            o += "}";
        }
        o += "]";
    }
    o += "},\n \"locks\": [";
    first = true;
    for (const LockView &l : snap.locks) {
        o += first ? "\n  {" : ",\n  {";
        first = false;
        json_key_fields(o, l.key);
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
            json_string(dst, status_uri(h.uri, show_query));
            dst += ", \"client\": ";
            json_string(dst, h.client);
            dst += ", \"user\": ";
            if (h.has_user) json_string(dst, h.user); else dst += "null";
            dst += ", \"since\": \"";
            dst += iso8601_utc(h.since_us);
            dst += h.waiting ? "\", \"waited_ms\": " : "\", \"held_ms\": ";
            append_i64(dst, now_us > h.since_us ? (now_us - h.since_us) / 1000 : 0);
            // Holders of one request (PidLockKeys all) share this number.
            dst += ", \"request\": ";
            append_i64(dst, static_cast<int64_t>(h.request));
            dst += '}';
        }
        o += "], \"waiters\": [";
        o += waiters;
        o += "]}";
    }
    o += "]";
    if (extra) o += extra->json_members;
    o += "}\n";
    return o;
}

namespace {

struct Totals {
    uint64_t holders = 0, waiting_read = 0, waiting_write = 0;
};

Totals totals(const TableSnapshot &snap) {
    Totals t;
    for (const LockView &l : snap.locks) {
        t.waiting_read += l.waiting_read;
        t.waiting_write += l.waiting_write;
        for (const HolderView &h : l.holders) t.holders += h.waiting ? 0 : 1;
    }
    return t;
}

// Facts are ours, but keep them to one line whatever they hold.
std::string one_line(const std::string &s) {
    std::string o;
    for (char c : s) o.push_back(c == '\n' || c == '\r' ? ' ' : c);
    return o;
}

}  // namespace

std::string render_status_auto(const TableSnapshot &snap, const ServerFacts &facts,
                               const char *prefix, const StatusExtra *extra) {
    std::string o;
    auto text = [&](const char *name, const std::string &v) {
        o += prefix;
        o += name;
        o += ": ";
        o += one_line(v);
        o += '\n';
    };
    auto line = [&](const char *name, uint64_t v) {
        o += prefix;
        o += name;
        o += ": ";
        append_u64(o, v);
        o += '\n';
    };
    text("Version", facts.version);
    text("Backend", facts.backend);
    text("Mutex", facts.mutex);
    text("MPM", facts.mpm);
    line("Generation", snap.generation);
    line("TableCapacity", snap.capacity);
    line("TableUsed", snap.used);
    line("TableHighWater", snap.high_water);
    const Totals t = totals(snap);
    line("Holders", t.holders);
    line("WaitingRead", t.waiting_read);
    line("WaitingWrite", t.waiting_write);
    const Counters &c = snap.counters;
    line("AcquiredRead", c.acquired_read);
    line("AcquiredWrite", c.acquired_write);
    line("Waited", c.waited);
    line("Timeouts", c.timeouts);
    line("BadKeys", c.bad_keys);
    line("Reaped", c.reaped);
    line("Broken", c.broken);
    line("Full", c.full);
    line("Repairs", c.repairs);
    line("RefusedWaiters", c.refused_waiters);
    line("ClientGone", c.client_gone);
    if (extra)
        for (const auto &l : extra->auto_lines) line(l.first.c_str(), l.second);
    return o;
}

std::string render_mod_status_section(const TableSnapshot &snap, const ServerFacts &facts,
                                      size_t max_locks, const StatusExtra *extra) {
    std::string o = "<hr>\n<h2>PidLock</h2>\n<dl>\n";
    auto item = [&](const char *name, const std::string &v) {
        o += "<dt>";
        o += name;
        o += ": ";
        html_escape(o, v);
        o += "</dt>\n";
    };
    const Counters &c = snap.counters;
    item("Backend", facts.backend + ", mutex " + facts.mutex);
    item("Table", std::to_string(snap.used) + " of " + std::to_string(snap.capacity) +
                      " keys in use, high water " + std::to_string(snap.high_water));
    item("Acquired", std::to_string(c.acquired_read) + " read, " + std::to_string(c.acquired_write) + " write");
    item("Waited / timed out", std::to_string(c.waited) + " / " + std::to_string(c.timeouts));
    item("Reaped / broken / repairs",
         std::to_string(c.reaped) + " / " + std::to_string(c.broken) + " / " + std::to_string(c.repairs));
    if (extra)
        for (const auto &i : extra->mod_status_items) item(i.first.c_str(), i.second);
    o += "</dl>\n";
    if (snap.locks.empty()) return o;
    o += "<table border=\"0\"><tr><th>key</th><th>mode</th><th>holders</th><th>waiting r/w</th></tr>\n";
    size_t shown = 0;
    for (const LockView &l : snap.locks) {
        if (shown++ == max_locks) break;
        size_t holding = 0;
        for (const HolderView &h : l.holders) holding += h.waiting ? 0 : 1;
        o += "<tr><td>";
        html_escape(o, l.key);
        o += "</td><td>";
        o += mode_name(l.mode);
        o += "</td><td>" + std::to_string(holding) + "</td><td>" + std::to_string(l.waiting_read) + " / " +
             std::to_string(l.waiting_write) + "</td></tr>\n";
    }
    o += "</table>\n";
    return o;
}

std::string render_status_metrics(const TableSnapshot &snap, const ServerFacts &facts,
                                  const StatusExtra *extra) {
    std::string o;
    auto head = [&](const char *name, const char *type, const char *help) {
        o += "# HELP ";
        o += name;
        o += ' ';
        o += help;
        o += "\n# TYPE ";
        o += name;
        o += ' ';
        o += type;
        o += '\n';
    };
    auto sample = [&](const char *name, const char *labels, uint64_t v) {
        o += name;
        o += labels;
        o += ' ';
        append_u64(o, v);
        o += '\n';
    };
    // Label values are escaped as the format requires (\\, \", \n).
    auto label = [](const std::string &v) {
        std::string e;
        for (char c : v) {
            if (c == '\\' || c == '"') e.push_back('\\');
            if (c == '\n') { e += "\\n"; continue; }
            e.push_back(c);
        }
        return e;
    };
    const Counters &c = snap.counters;
    head("pidlock_info", "gauge", "mod_pidlock version, backend, mutex mechanism and MPM.");
    o += "pidlock_info{version=\"" + label(facts.version) + "\",backend=\"" + label(facts.backend) +
         "\",mutex=\"" + label(facts.mutex) + "\",mpm=\"" + label(facts.mpm) + "\"} 1\n";
    head("pidlock_acquired_total", "counter", "Locks acquired, by mode.");
    sample("pidlock_acquired_total", "{mode=\"read\"}", c.acquired_read);
    sample("pidlock_acquired_total", "{mode=\"write\"}", c.acquired_write);
    head("pidlock_waited_total", "counter", "Requests that had to wait for their lock.");
    sample("pidlock_waited_total", "", c.waited);
    head("pidlock_timeouts_total", "counter", "Requests refused because the lock was not had in time.");
    sample("pidlock_timeouts_total", "", c.timeouts);
    head("pidlock_bad_keys_total", "counter", "Requests refused for a malformed, empty or over-long key.");
    sample("pidlock_bad_keys_total", "", c.bad_keys);
    head("pidlock_reaped_total", "counter", "Locks or waits of dead processes released.");
    sample("pidlock_reaped_total", "", c.reaped);
    head("pidlock_broken_total", "counter", "Holders released by a break from the status page.");
    sample("pidlock_broken_total", "", c.broken);
    head("pidlock_table_full_total", "counter", "Requests refused because the lock table was full.");
    sample("pidlock_table_full_total", "", c.full);
    head("pidlock_repairs_total", "counter", "Table rebuilds after a process died inside its critical section.");
    sample("pidlock_repairs_total", "", c.repairs);
    head("pidlock_refused_waiters_total", "counter", "Requests refused at once: PidLockMaxWaiters were already waiting.");
    sample("pidlock_refused_waiters_total", "", c.refused_waiters);
    head("pidlock_client_gone_total", "counter", "Waits ended because the client hung up (the handler never ran).");
    sample("pidlock_client_gone_total", "", c.client_gone);
    head("pidlock_table_capacity", "gauge", "Distinct keys the table can hold.");
    sample("pidlock_table_capacity", "", snap.capacity);
    head("pidlock_table_used", "gauge", "Distinct keys held or waited for now.");
    sample("pidlock_table_used", "", snap.used);
    head("pidlock_table_high_water", "gauge", "Most distinct keys at once since the table was made.");
    sample("pidlock_table_high_water", "", snap.high_water);
    const Totals t = totals(snap);
    head("pidlock_holders", "gauge", "Requests holding a lock now.");
    sample("pidlock_holders", "", t.holders);
    head("pidlock_waiting", "gauge", "Requests waiting for a lock now, by mode.");
    sample("pidlock_waiting", "{mode=\"read\"}", t.waiting_read);
    sample("pidlock_waiting", "{mode=\"write\"}", t.waiting_write);
    head("pidlock_wait_seconds", "histogram", "How long requests that waited waited (granted or not).");
    uint64_t cum = 0;
    char le[64];
    for (size_t b = 0; b < kWaitBuckets; ++b) {
        cum += c.wait_buckets[b];
        if (b + 1 < kWaitBuckets) std::snprintf(le, sizeof le, "{le=\"%g\"}", kWaitBounds[b]);
        else std::snprintf(le, sizeof le, "{le=\"+Inf\"}");
        sample("pidlock_wait_seconds_bucket", le, cum);
    }
    char sum[64];
    std::snprintf(sum, sizeof sum, "pidlock_wait_seconds_sum %.6f\n", static_cast<double>(c.wait_sum_us) / 1e6);
    o += sum;
    sample("pidlock_wait_seconds_count", "", cum);
    if (extra) o += extra->metrics;
    return o;
}

std::string render_status_html(const TableSnapshot &snap, const ServerFacts &facts,
                               int64_t now_us, const PageOptions &opt) {
    std::string o;
    o.reserve(2048 + snap.locks.size() * 600);
    o += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    if (opt.refresh_s > 0) {
        o += "<meta http-equiv=\"refresh\" content=\"";
        append_u64(o, static_cast<uint64_t>(opt.refresh_s));
        o += "\">\n";
    }
    o += "<title>mod_pidlock status</title>\n<style>\n"
         "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\n"
         "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\n"
         "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;"
         "vertical-align:top}\nth{background:#eee}td.n{text-align:right}\n"
         "tr.stale td{background:#fdd}tr.waiting td{color:#666;font-style:italic}\n"
         "td.t{white-space:nowrap}\n"
         "code{font-family:ui-monospace,monospace;word-break:break-all}\n"
         "form{margin:0}button{cursor:pointer}\n</style>\n</head>\n<body>\n<h1>mod_pidlock status</h1>\n"
         "<table class=\"summary\">\n";
    auto row = [&](const char *name, const std::string &v) {
        o += "<tr><th>";
        o += name;
        o += "</th><td>";
        html_escape(o, v);
        o += "</td></tr>\n";
    };
    auto num = [](uint64_t v) { return std::to_string(v); };
    row("Version", facts.version);
    row("Backend", facts.backend);
    row("Mutex", facts.mutex);
    row("MPM", facts.mpm);
    row("Generation", num(snap.generation));
    row("Table", num(snap.used) + " of " + num(snap.capacity) + " keys in use, high water " +
                     num(snap.high_water));
    const Counters &c = snap.counters;
    row("Acquired", num(c.acquired_read) + " read, " + num(c.acquired_write) + " write");
    row("Waited / timed out", num(c.waited) + " / " + num(c.timeouts));
    row("Bad keys / table full", num(c.bad_keys) + " / " + num(c.full));
    row("Reaped / broken / repairs", num(c.reaped) + " / " + num(c.broken) + " / " + num(c.repairs));
    if (snap.cluster.on) {
        row("Cluster", snap.cluster.backend + " (every lock is also taken there)");
        for (const ClusterField &f : cluster_fields(snap.cluster)) row(f.label, std::to_string(f.value));
    }
    o += "</table>\n";
    if (!snap.cluster.remote.empty()) {
        o += "<h2>Held on other hosts (keys this host waits for in PostgreSQL)</h2>\n"
             "<table class=\"locks\">\n<tr><th>key</th><th>mode</th><th>session</th><th>application</th>"
             "<th>client</th><th>since</th></tr>\n";
        for (const RemoteHolder &h : snap.cluster.remote) {
            o += "<tr><td><code>";
            html_escape(o, h.key);
            o += "</code></td><td>";
            o += mode_name(h.mode);
            o += "</td><td>" + std::to_string(h.session) + "</td><td>";
            html_escape(o, h.application);
            o += "</td><td>";
            html_escape(o, h.client);
            o += "</td><td class=\"t\">";
            html_escape(o, iso8601_utc(h.since_us));
            o += "</td></tr>\n";
        }
        o += "</table>\n";
    }
    o += "<h2>Locks";
    const Totals t = totals(snap);
    auto count = [&](uint64_t n, const char *one, const char *many) {
        return num(n) + " " + (n == 1 ? one : many);
    };
    o += " (" + count(snap.locks.size(), "key", "keys") + ", " + count(t.holders, "holder", "holders") + ", " +
         num(t.waiting_read + t.waiting_write) + " waiting)";
    o += "</h2>\n";
    if (snap.locks.empty()) {
        o += "<p>No locks are held.</p>\n";
    } else {
        o += "<table class=\"locks\">\n<tr><th>key</th><th>mode</th><th>state</th><th>pid</th>"
             "<th>method</th><th>URI</th><th>client</th><th>user</th><th>since</th><th>for</th>"
             "<th>waiting r/w</th>";
        if (opt.actions) o += "<th></th>";
        o += "</tr>\n";
        for (const LockView &l : snap.locks) {
            bool first = true;
            const size_t span = l.holders.empty() ? 1 : l.holders.size();
            for (size_t i = 0; i < span; ++i) {
                const HolderView *h = l.holders.empty() ? nullptr : &l.holders[i];
                const int64_t held = h && now_us > h->since_us ? now_us - h->since_us : 0;
                const bool stale = h && !h->waiting && held > opt.stale_us;
                o += "<tr";
                if (stale) o += " class=\"stale\"";
                else if (h && h->waiting) o += " class=\"waiting\"";
                o += ">";
                if (first) {
                    o += "<td rowspan=\"";
                    append_u64(o, span);
                    o += "\"><code>";
                    html_escape(o, l.key);
                    o += "</code></td>";
                }
                if (h) {
                    o += "<td>";
                    o += mode_name(h->mode);
                    o += h->waiting ? "</td><td>waiting" : "</td><td>holding";
                    o += "</td><td class=\"n\">";
                    append_i64(o, h->pid);
                    o += "</td><td>";
                    html_escape(o, h->method);
                    o += "</td><td><code>";
                    html_escape(o, status_uri(h->uri, opt.show_query));
                    o += "</code></td><td>";
                    html_escape(o, h->client);
                    o += "</td><td>";
                    if (h->has_user) html_escape(o, h->user); else o += "&ndash;";
                    o += "</td><td class=\"t\">";
                    o += iso8601_utc(h->since_us);
                    o += "</td><td class=\"n t\">";
                    html_escape(o, format_duration(held));
                    o += "</td>";
                } else {
                    o += "<td colspan=\"9\">no holder</td>";
                }
                if (first) {
                    o += "<td class=\"n\" rowspan=\"";
                    append_u64(o, span);
                    o += "\">";
                    append_u64(o, l.waiting_read);
                    o += " / ";
                    append_u64(o, l.waiting_write);
                    o += "</td>";
                    if (opt.actions) {
                        o += "<td rowspan=\"";
                        append_u64(o, span);
                        o += "\"><form method=\"post\" action=\"";
                        html_escape(o, opt.form_action);
                        o += "\"><input type=\"hidden\" name=\"action\" value=\"break\">";
                        // Keys a form would mangle (invalid UTF-8 and
                        // control bytes become U+FFFD) travel as hex.
                        if (key_fits_form(l.key)) {
                            o += "<input type=\"hidden\" name=\"key\" value=\"";
                            html_escape(o, l.key);
                        } else {
                            o += "<input type=\"hidden\" name=\"key_hex\" value=\"";
                            o += hex_bytes(l.key);
                        }
                        o += "\"><input type=\"hidden\" name=\"nonce\" value=\"";
                        html_escape(o, opt.nonce);
                        o += "\"><button type=\"submit\" class=\"break\">Break</button></form></td>";
                    }
                    first = false;
                }
                o += "</tr>\n";
            }
        }
        o += "</table>\n";
    }
    if (opt.extra) o += opt.extra->html;
    o += "<p>Oldest first. Rows in red have been held longer than ";
    html_escape(o, format_duration(opt.stale_us));
    o += " (<code>?stale=SECONDS</code>). Also as <a href=\"?json\">JSON</a>, "
         "<a href=\"?auto\">text</a>, <a href=\"?metrics\">Prometheus metrics</a>.</p>\n"
         "</body>\n</html>\n";
    return o;
}

std::string render_busy_json(const BusyReport &rep, double timeout_s) {
    std::string o = "{\"error\": \"lock not available\", ";
    json_key_fields(o, rep.key);
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
    if (rep.too_many_waiting) o += ", \"too_many_waiting\": true";
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
    o += rep.too_many_waiting ? " s: too many requests are waiting for it.\nkey: " : " s.\nkey: ";
    o += text_escape(rep.key);
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
