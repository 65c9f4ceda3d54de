// libFuzzer target: the form-body scanner fed arbitrary bodies, whole, in
// random chunks and a byte at a time. Asserts the outcome does not depend on
// how the body is split, found values keep the limits, memory stays bounded,
// an accepted multipart body has its boundary only at line starts, and
// Content-Type parsing yields only valid boundaries.
//
// Input: byte 0 picks the kind (bit 0) and max_len (the rest); byte 1 the
// boundary; bytes 2-3 seed the chunk sizes; the rest is the body.
#include <cassert>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "pidlock_form.h"

using namespace pidlock;

namespace {

struct Outcome {
    bool ok;
    std::vector<FieldStatus> status;
    std::vector<std::string> value;
    std::string error;
    bool operator==(const Outcome &o) const {
        return ok == o.ok && status == o.status && value == o.value && error == o.error;
    }
};

const char *const kBoundaries[] = {"XyZ", "-a-a-b", "a", "----WebKitFormBoundary7MA4YWxkTrZu0gW"};

// chunk: 0 = whole, 1 = a byte at a time, else an xorshift seed for sizes.
Outcome scan(const FormType &t, const std::string &body, size_t max_len, uint32_t chunk) {
    FormScanner s(t, {"pid", "newPid"}, max_len);
    const size_t bound = 16 * 1024 + t.boundary.size() + 4 + 6;
    size_t off = 0;
    while (off < body.size()) {
        size_t n = body.size() - off;
        if (chunk == 1) {
            n = 1;
        } else if (chunk != 0) {
            chunk ^= chunk << 13;
            chunk ^= chunk >> 17;
            chunk ^= chunk << 5;
            const size_t r = chunk % 8 == 0 ? chunk % 4096 : chunk % 16;
            if (r + 1 < n) n = r + 1;
        }
        const bool fed = s.feed(body.data() + off, n);
        assert(fed == !s.failed());
        assert(s.buffered() <= bound);
        off += n;
    }
    Outcome o;
    o.ok = s.finish();
    if (o.ok) assert(s.consumed() == body.size());
    assert(s.consumed() <= body.size());
    for (size_t i = 0; i < s.count(); ++i) {
        const FieldStatus st = s.status(i);
        assert(st != FieldStatus::Pending || !o.ok);
        if (st == FieldStatus::Found) {
            assert(!s.value(i).empty() && s.value(i).size() <= max_len);
            assert(s.value(i).find('\0') == std::string::npos);
        } else if (o.ok) {
            assert(st == FieldStatus::Absent);
        }
        o.status.push_back(st);
        o.value.push_back(st == FieldStatus::Found ? s.value(i) : std::string());
    }
    o.error = s.error();
    assert(o.ok == o.error.empty());
    return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    const bool multipart = (data[0] & 1) == 0;
    const size_t max_len = 1 + (data[0] >> 1) % 64;
    const char *boundary = kBoundaries[data[1] % (sizeof kBoundaries / sizeof *kBoundaries)];
    const uint32_t seed = 2u + (static_cast<uint32_t>(data[2]) << 8 | data[3]);
    const std::string body(reinterpret_cast<const char *>(data + 4), size - 4);

    const std::string ct = multipart ? std::string("multipart/form-data; boundary=\"") + boundary + "\""
                                     : "application/x-www-form-urlencoded";
    const FormType t = form_type(ct.c_str());
    assert(t.kind == (multipart ? FormKind::Multipart : FormKind::UrlEncoded) && !t.bad);

    const Outcome whole = scan(t, body, max_len, 0);
    if (multipart && whole.ok) {
        // Accepted: every --BOUNDARY (a parser that splits anywhere would
        // find) begins a line.
        const std::string d = std::string("--") + boundary;
        for (size_t at = body.find(d); at != std::string::npos; at = body.find(d, at + d.size()))
            assert(at == 0 || body[at - 1] == '\n');
    }
    assert(scan(t, body, max_len, 1) == whole);
    assert(scan(t, body, max_len, seed) == whole);

    // The body read as a Content-Type value.
    const FormType any = form_type(std::string(body.c_str()).c_str());
    if (any.kind == FormKind::Multipart && !any.bad) {
        assert(!any.boundary.empty() && any.boundary.size() <= 70);
        assert(any.boundary.find_first_of("\r\n\"") == std::string::npos);
    }
    return 0;
}
