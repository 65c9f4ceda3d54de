#!/usr/bin/env python3
"""Every error, warning and notice the module logs has a message id of its
own (PIDLOCKnnn), given at exactly one call site, so operators and tests can
grep for it. Lists ids used at more than one call site and log calls without
an id. Then checks the operator's reference, docs/messages.md: every id the
module logs has a row there, every row's id is still logged, and each row's
level and message text agree with the code (the message's fixed parts, in
order; `<...>` in the doc stands for what the code fills in). Exits 1 on any
failure. Prints `log-ids: N passed, M failed` (one count per check).

    python3 scripts/check-log-ids.py [mod_pidlock [docs/messages.md]]
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "mod_pidlock")
DOC = sys.argv[2] if len(sys.argv) > 2 else os.path.join(SRC, "..", "docs", "messages.md")
CALL = re.compile(r"\b(ap_log_(?:r|p|c|)error|ap_log_perror|ap_log_cerror|ap_log_rerror|ap_log_error)\s*\(")
ID = re.compile(r"PIDLOCK(\d{3})")
LEVEL = re.compile(r"APLOG_(EMERG|ALERT|CRIT|ERR|WARNING|NOTICE|INFO|DEBUG|TRACE\d)")
# A log call whose id is chosen at run time: "PIDLOCK%s: ...", with the
# ids as string literals among its arguments.
COMPOSED = re.compile(r'"PIDLOCK%s')
COMPOSED_ID = re.compile(r'"(\d{3})"')

# docs/messages.md levels, as httpd prints them, and the APLOG_ names.
DOC_LEVELS = {"emerg": "EMERG", "alert": "ALERT", "crit": "CRIT", "error": "ERR", "warn": "WARNING",
              "notice": "NOTICE", "info": "INFO", "debug": "DEBUG"}
# The cluster tier's logger takes syslog numbers.
SYSLOG_LEVELS = {"0": "EMERG", "1": "ALERT", "2": "CRIT", "3": "ERR", "4": "WARNING", "5": "NOTICE",
                 "6": "INFO", "7": "DEBUG"}


def calls(text):
    """Yields (line, level, ids, logs a startup finding, id composed) for each log call: the text up
    to the call's closing parenthesis."""
    for m in CALL.finditer(text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            c = text[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            elif c == '"':
                i += 1
                while i < len(text) and text[i] != '"':
                    i += 2 if text[i] == "\\" else 1
            i += 1
        body = text[m.start():i]
        lv = LEVEL.search(body)
        composed = COMPOSED.search(body) is not None
        ids = COMPOSED_ID.findall(body) if composed else ID.findall(body)
        yield (text.count("\n", 0, m.start()) + 1, lv.group(1) if lv else "?", ids,
               "f.message" in body or re.search(r'"%s",\s*\w+\s*$', body.strip()) is not None, composed)


# ------------------------------------------------ the messages' fixed text

TOKEN = re.compile(r"""
    (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_][A-Za-z_0-9]*)*)
  | (?P<number>\d[\w.]*)
  | (?P<scope>::)
  | (?P<arrow>->)
  | (?P<punct>[^\s\w])
  | (?P<space>\s+)
""", re.X | re.S)
CONVERSION = re.compile(r"%[-+ #0]*(?:\d+|\*)?(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcsp]")


def tokens(text):
    """(kind, text, offset) of the source's tokens, comments and spaces left out."""
    out = []
    for m in TOKEN.finditer(text):
        kind = m.lastgroup
        if kind not in ("comment", "space"):
            out.append((kind, m.group(), m.start()))
    return out


def unquote(lit):
    body = lit[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def fixed_parts(toks, i):
    """The fixed parts of the message whose first string literal is toks[i]: adjacent literals
    joined, split where a printf conversion, a format macro (APR_SIZE_T_FMT, PRIu64) or a value
    concatenated with `+` fills something in. Ends at the message's expression's end."""
    parts, run = [], []
    depth = base = 0

    def flush():
        if run:
            s = "".join(run)
            run.clear()
            parts.extend(p for p in CONVERSION.split(s) if p.strip())

    j = i
    while j < len(toks):
        kind, t, _ = toks[j]
        if kind == "string":
            if depth == base:
                run.append(unquote(t))
            else:
                flush()
        elif t in "([{":
            flush()
            depth += 1
        elif t in ")]}":
            flush()
            depth -= 1
            if depth < base:
                if j + 1 < len(toks) and toks[j + 1][1] == "+":
                    base = depth
                else:
                    break
        elif depth == base and t in (",", ";", ":"):
            break
        else:
            # A format macro ends a literal with "%": the conversion it completes.
            if kind == "ident" and run and run[-1].endswith("%"):
                run[-1] = re.sub(r"%[-+ #0]*\d*$", "", run[-1])
            flush()
        j += 1
    flush()
    return parts


def open_brackets(toks, i):
    """Indexes of the brackets open around toks[i], innermost first."""
    depth = 0
    for j in range(i - 1, -1, -1):
        t = toks[j][1]
        if t in ")]}":
            depth += 1
        elif t in "([{":
            if depth:
                depth -= 1
            else:
                yield j


def callee(toks, j):
    """The name before the bracket toks[j] (its last `::` part), or the bracket."""
    return toks[j - 1][1].split("::")[-1] if j and toks[j - 1][0] == "ident" else toks[j][1]


def enclosing(toks, i):
    """The callee names of the brackets open around toks[i], innermost first."""
    return [callee(toks, j) for j in open_brackets(toks, i)]


def call_span(toks, i, name):
    """(index of its name, index of its `)`) of the innermost call of `name` around toks[i]."""
    j = next(j for j in open_brackets(toks, i) if callee(toks, j) == name)
    k, d = j, 0
    while k < len(toks):
        if toks[k][1] in "([{":
            d += 1
        elif toks[k][1] in ")]}":
            d -= 1
            if d == 0:
                break
        k += 1
    return j - 1, k


def top_level_args(toks, start, end):
    """The argument token lists of the call whose name is toks[start]."""
    args, cur, depth = [], [], 0
    for kind, t, off in toks[start + 2:end]:
        if t in "([{":
            depth += 1
        elif t in ")]}":
            depth -= 1
        if t == "," and depth == 0:
            args.append(cur)
            cur = []
        else:
            cur.append((kind, t, off))
    args.append(cur)
    return args


def messages(path):
    """(id, line, level or None, fixed parts) for each message in one source file."""
    text = open(path, encoding="utf-8").read()
    toks = tokens(text)
    out = []
    for i, (kind, t, off) in enumerate(toks):
        if kind != "string":
            continue
        m = re.match(r'"PIDLOCK(\d{3}|%s):', t)
        if not m:
            continue
        line = text.count("\n", 0, off) + 1
        parts = fixed_parts(toks, i)
        names = enclosing(toks, i)
        level = None
        log = next((n for n in names if CALL.match(n + "(")), None)
        if log:
            start, end = call_span(toks, i, log)
            lv = LEVEL.search(" ".join(x[1] for x in toks[start:end]))
            level = lv.group(1) if lv else None
            ids = [m.group(1)] if m.group(1) != "%s" else \
                [x[1][1:-1] for x in toks[start:end] if x[0] == "string" and re.fullmatch(r'"\d{3}"', x[1])]
        else:
            ids = [m.group(1)]
            if "log" in names:
                # The cluster tier: log(LEVEL, message), LEVEL a number or `c ? A : B`.
                start, end = call_span(toks, i, "log")
                first, second = top_level_args(toks, start, end)[:2]
                nums = [x[1] for x in first if x[0] == "number"]
                if len(nums) == 1:
                    level = SYSLOG_LEVELS.get(nums[0])
                elif len(nums) == 2:
                    before = [x for x in second if x[2] < off]
                    level = SYSLOG_LEVELS.get(nums[1] if any(x[1] == ":" for x in before) else nums[0])
            else:
                # A startup finding: {true, ...} refuses (emerg), {false, ...} warns.
                after = text[off:off + 1500]
                before = text[max(0, off - 200):off]
                f = re.search(r"Finding\{(true|false)\s*,[^;]*$", before) or \
                    re.search(r"push_back\(\{(true|false)\s*,", after)
                if f:
                    level = "EMERG" if f.group(1) == "true" else "WARNING"
        for k in ids:
            out.append((k, line, level, parts))
    return out


def doc_rows(path):
    """{id: [(line, level, message cell)]} of docs/messages.md's table rows."""
    rows = {}
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        m = re.match(r"\|\s*PIDLOCK(\d{3})\s*\|", raw)
        if not m:
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", raw.strip())[1:-1]]
        rows.setdefault(m.group(1), []).append((n, cells[1] if len(cells) > 1 else "",
                                                cells[2] if len(cells) > 2 else ""))
    return rows


def check_doc(sites, names):
    """Failures of docs/messages.md against the code."""
    fails = []
    if not os.path.exists(DOC):
        return ["FAIL %s is missing" % DOC]
    rows = doc_rows(DOC)
    doc_name = os.path.relpath(DOC)
    for k in sorted(set(sites) - set(rows)):
        fails.append("FAIL PIDLOCK%s is logged (%s) but has no row in %s" % (k, ", ".join(sites[k]), doc_name))
    for k in sorted(set(rows) - set(sites)):
        fails.append("FAIL %s:%d lists PIDLOCK%s, which mod_pidlock/ no longer logs"
                     % (doc_name, rows[k][0][0], k))
    for k, v in sorted(rows.items()):
        if len(v) > 1:
            fails.append("FAIL %s lists PIDLOCK%s %d times (lines %s)"
                         % (doc_name, k, len(v), ", ".join(str(x[0]) for x in v)))
    msgs = []
    for name in names:
        msgs += [(name,) + m for m in messages(os.path.join(SRC, name))]
    seen = set()
    for name, k, line, level, parts in msgs:
        seen.add(k)
        if k not in rows:
            continue
        dline, dlevel, cell = rows[k][0]
        where = "%s:%d" % (name, line)
        if level is None:
            fails.append("FAIL PIDLOCK%s at %s: cannot tell its level from the code" % (k, where))
        elif DOC_LEVELS.get(dlevel) != level:
            fails.append("FAIL %s:%d: PIDLOCK%s is logged at APLOG_%s (%s), the doc says `%s`"
                         % (doc_name, dline, k, level, where, dlevel))
        pos = 0
        for p in parts:
            at = cell.find(p, pos)
            if at < 0:
                fails.append("FAIL %s:%d: PIDLOCK%s's message lacks %r (in order), as logged at %s"
                             % (doc_name, dline, k, p, where))
                break
            pos = at + len(p)
    for k in sorted(set(sites) - seen):
        fails.append("FAIL PIDLOCK%s at %s: cannot read its message text" % (k, ", ".join(sites[k])))
    return fails


def main():
    sites = {}
    missing = []
    names = sorted(n for n in os.listdir(SRC) if n.endswith((".cc", ".h")))
    for name in names:
        path = os.path.join(SRC, name)
        text = open(path, encoding="utf-8").read()
        for line, level, ids, finding, composed in calls(text):
            where = "%s:%d" % (name, line)
            if not ids:
                # check_config logs each startup finding, and the cluster
                # tier's logger forwards ("%s", msg) core messages, whose
                # texts start with their own ids (counted below).
                if not finding and level not in ("INFO", "DEBUG") and not level.startswith("TRACE"):
                    missing.append(where)
                continue
            # A composed id ("PIDLOCK%s"): each of its ids is logged here.
            for k in (dict.fromkeys(ids) if composed else ids[:1]):
                sites.setdefault(k, []).append(where)
        # Startup findings carry their id in a snprintf'd message.
        for m in re.finditer(r'"(PIDLOCK\d{3}):', text):
            if "ap_log" not in text[max(0, m.start() - 300):m.start()]:
                sites.setdefault(m.group(1)[7:], []).append("%s:%d" % (name, text.count("\n", 0, m.start()) + 1))
    dup = {k: v for k, v in sites.items() if len(v) > 1}
    for k, v in sorted(dup.items()):
        print("FAIL PIDLOCK%s at %d call sites: %s" % (k, len(v), ", ".join(v)))
    for w in missing:
        print("FAIL log call without a message id at %s" % w)
    doc_fails = check_doc(sites, names)
    for f in doc_fails:
        print(f)
    results = [not dup and not missing, not doc_fails]
    print("log-ids: %d ids, %d call sites; %s" % (len(sites), sum(len(v) for v in sites.values()),
                                                  "every id in docs/messages.md" if not doc_fails
                                                  else "docs/messages.md out of step"))
    passed = sum(1 for r in results if r)
    print("log-ids: %d passed, %d failed" % (passed, len(results) - passed))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
