#!/usr/bin/env python3
"""Every error, warning and notice the module logs has a message id of its
own (PIDLOCKnnn), given at exactly one call site, so operators and tests can
grep for it. Lists ids used at more than one call site and log calls without
an id; exits 1 if any. Prints `log-ids: N passed, M failed`.

    python3 scripts/check-log-ids.py [mod_pidlock]
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "mod_pidlock")
CALL = re.compile(r"\b(ap_log_(?:r|p|c|)error|ap_log_perror|ap_log_cerror|ap_log_rerror|ap_log_error)\s*\(")
ID = re.compile(r"PIDLOCK(\d{3})")
LEVEL = re.compile(r"APLOG_(EMERG|ALERT|CRIT|ERR|WARNING|NOTICE|INFO|DEBUG|TRACE\d)")


def calls(text):
    """Yields (line, level, ids, logs a startup finding) for each log call: the text up to the call's
    closing parenthesis."""
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
        yield (text.count("\n", 0, m.start()) + 1, lv.group(1) if lv else "?", ID.findall(body),
               "f.message" in body or re.search(r'"%s",\s*\w+\s*$', body.strip()) is not None)


def main():
    sites = {}
    missing = []
    for name in sorted(os.listdir(SRC)):
        if not name.endswith((".cc", ".h")):
            continue
        path = os.path.join(SRC, name)
        text = open(path, encoding="utf-8").read()
        for line, level, ids, finding in calls(text):
            where = "%s:%d" % (name, line)
            if not ids:
                # check_config logs each startup finding, and the cluster
                # tier's logger forwards ("%s", msg) core messages, whose
                # texts start with their own ids (counted below).
                if not finding and level not in ("INFO", "DEBUG") and not level.startswith("TRACE"):
                    missing.append(where)
                continue
            sites.setdefault(ids[0], []).append(where)
        # Startup findings carry their id in a snprintf'd message.
        for m in re.finditer(r'"(PIDLOCK\d{3}):', text):
            if "ap_log" not in text[max(0, m.start() - 300):m.start()]:
                sites.setdefault(m.group(1)[7:], []).append("%s:%d" % (name, text.count("\n", 0, m.start()) + 1))
    dup = {k: v for k, v in sites.items() if len(v) > 1}
    for k, v in sorted(dup.items()):
        print("FAIL PIDLOCK%s at %d call sites: %s" % (k, len(v), ", ".join(v)))
    for w in missing:
        print("FAIL log call without a message id at %s" % w)
    ok = not dup and not missing
    print("log-ids: %d ids, %d call sites" % (len(sites), sum(len(v) for v in sites.values())))
    print("log-ids: %d passed, %d failed" % (1 if ok else 0, 0 if ok else 1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
