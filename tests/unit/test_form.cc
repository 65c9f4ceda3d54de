#include <functional>
#include <string>
#include <vector>

#include "pidlock_form.h"

#include "CppUTest/TestHarness.h"

using namespace pidlock;

namespace {

const char *const kCT = "multipart/form-data; boundary=XyZ";

// Feeds `body` in the chunks `next(offset)` sizes, then finishes; the
// outcome as one comparable string: per name "status=value", then the error.
std::string run(const FormType &t, const std::string &body, std::vector<std::string> names,
                size_t max_len, const std::function<size_t(size_t)> &next) {
    FormScanner s(t, std::move(names), max_len);
    size_t off = 0;
    while (off < body.size()) {
        size_t n = next(off);
        if (n > body.size() - off) n = body.size() - off;
        s.feed(body.data() + off, n);
        off += n;
    }
    s.finish();
    std::string r;
    for (size_t i = 0; i < s.count(); ++i) {
        r += field_status_text(s.status(i));
        if (s.status(i) == FieldStatus::Found) r += "=" + s.value(i);
        r += "|";
    }
    return r + s.error();
}

std::string whole(const char *ct, const std::string &body, std::vector<std::string> names = {"pid"},
                  size_t max_len = 1024) {
    return run(form_type(ct), body, std::move(names), max_len, [&](size_t) { return body.size(); });
}

// The same outcome fed in one piece, split in two at every position, and a
// byte at a time; returns it.
std::string every_split(const char *ct, const std::string &body, std::vector<std::string> names = {"pid"},
                        size_t max_len = 1024) {
    const FormType t = form_type(ct);
    const std::string one = whole(ct, body, names, max_len);
    for (size_t at = 0; at <= body.size(); ++at) {
        const std::string two = run(t, body, names, max_len, [&](size_t off) { return off < at ? at - off : body.size(); });
        if (two != one) FAIL((std::string("split at ") + std::to_string(at) + ": " + two + " vs " + one).c_str());
    }
    STRCMP_EQUAL(one.c_str(), run(t, body, names, max_len, [](size_t) { return size_t{1}; }).c_str());
    return one;
}

std::string part(const std::string &disposition, const std::string &value, const char *nl = "\r\n") {
    return std::string("--XyZ") + nl + "Content-Disposition: " + disposition + nl + nl + value + nl;
}

const std::string kEnd = "--XyZ--\r\n";

std::string dataone_body(std::string &object) {
    object.clear();
    for (int i = 0; i < 3000; ++i) object.push_back(static_cast<char>(1 + (i * 7919) % 251));
    // Almost-delimiters inside the file: at line starts, mid-line, after CR.
    object += "\r\n--XyQ\r\n--Xy\n--X\r--XyY-\r\n-\r\n--\r\n\r\n--\r\n--Xy";
    return "preamble text\r\n" +
           part("form-data; name=\"pid\"", "urn:uuid:1234-abcd") +
           "--XyZ\r\nContent-Disposition: form-data; name=\"object\"; filename=\"obj.bin\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n" + object + "\r\n" +
           part("form-data; name=\"sysmeta\"; filename=\"sysmeta.xml\"", "<sysmeta>\n<id>urn:uuid:1234-abcd</id>\n</sysmeta>") +
           "--XyZ--\r\nepilogue\r\n";
}

}  // namespace

TEST_GROUP(FormType) {};

TEST(FormType, Kinds) {
    FormType t = form_type("multipart/form-data; boundary=abc");
    CHECK(t.kind == FormKind::Multipart);
    CHECK_FALSE(t.bad);
    STRCMP_EQUAL("abc", t.boundary.c_str());
    t = form_type("  Multipart/Form-Data ;charset=utf-8;  BOUNDARY = \"a b\\:c?\" ;");
    CHECK(t.kind == FormKind::Multipart);
    CHECK_FALSE(t.bad);
    STRCMP_EQUAL("a b:c?", t.boundary.c_str());
}

TEST(FormType, BoundaryRules) {
    CHECK_TRUE(form_type("multipart/form-data").bad);
    CHECK_TRUE(form_type("multipart/form-data; charset=utf-8").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=\"\"").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=a; boundary=a").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary*=utf-8''abc").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=\"abc").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=\"abc \"").bad);  // ends in a space
    CHECK_TRUE(form_type("multipart/form-data; boundary=a{b").bad);
    CHECK_TRUE(form_type("multipart/form-data; boundary=abc junk").bad);
    CHECK_TRUE(form_type(("multipart/form-data; boundary=" + std::string(71, 'a')).c_str()).bad);
    CHECK_FALSE(form_type(("multipart/form-data; boundary=" + std::string(70, 'a')).c_str()).bad);
    CHECK_FALSE(form_type("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW").bad);
    CHECK_FALSE(form_type("multipart/form-data; boundary=\"'()+_,-./:=? x\"").bad);
}

TEST(FormType, UrlEncodedAndOthers) {
    CHECK(form_type("application/x-www-form-urlencoded").kind == FormKind::UrlEncoded);
    CHECK(form_type("Application/X-WWW-Form-UrlEncoded; charset=UTF-8").kind == FormKind::UrlEncoded);
    CHECK(form_type(nullptr).kind == FormKind::None);
    CHECK(form_type("").kind == FormKind::None);
    CHECK(form_type("multipart/mixed; boundary=abc").kind == FormKind::None);
    CHECK(form_type("multipart/form-datax; boundary=abc").kind == FormKind::None);
    CHECK(form_type("application/x-www-form-urlencodedx").kind == FormKind::None);
    CHECK(form_type("text/plain").kind == FormKind::None);
    // No body parsing for other types: every name Absent.
    STRCMP_EQUAL("absent|", whole("text/plain", "pid=x").c_str());
    STRCMP_EQUAL("absent|", whole(nullptr, "pid=x").c_str());
}

TEST_GROUP(FormMultipart) {};

TEST(FormMultipart, ValueAsSent) {
    STRCMP_EQUAL("found=a%41+b c|", every_split(kCT, part("form-data; name=\"pid\"", "a%41+b c") + kEnd).c_str());
    // Line breaks inside the value are kept; only the one before the delimiter goes.
    STRCMP_EQUAL("found=a\r\nb\n|", whole(kCT, part("form-data; name=\"pid\"", "a\r\nb\n") + kEnd).c_str());
    STRCMP_EQUAL("found=a\r|", whole(kCT, part("form-data; name=\"pid\"", "a\r") + kEnd).c_str());
}

TEST(FormMultipart, DataOneBodySplitEverywhere) {
    std::string object;
    const std::string body = dataone_body(object);
    const std::string r = every_split(kCT, body, {"pid", "sysmeta", "object"}, 65536);
    STRCMP_EQUAL("found=urn:uuid:1234-abcd|absent|absent|", r.c_str());
    // object and sysmeta carry a filename: not fields. Without it, object's
    // bytes (binary, fake delimiters) come back exactly.
    std::string plain = body;
    plain.replace(plain.find("; filename=\"obj.bin\""), 20, "");
    FormScanner s(form_type(kCT), {"object", "pid"}, 65536);
    CHECK_TRUE(s.feed(plain.data(), plain.size()));
    CHECK_TRUE(s.finish());
    CHECK(s.status(0) == FieldStatus::Found);
    CHECK(s.value(0) == object);
    STRCMP_EQUAL("urn:uuid:1234-abcd", s.value(1).c_str());
    CHECK(s.consumed() == plain.size());
}

TEST(FormMultipart, FieldAfterLargePartInBoundedMemory) {
    FormScanner s(form_type(kCT), {"pid"}, 1024);
    const std::string head = "--XyZ\r\nContent-Disposition: form-data; name=\"object\"; filename=\"big\"\r\n\r\n";
    CHECK_TRUE(s.feed(head.data(), head.size()));
    std::string chunk(64 * 1024, 'x');
    for (size_t i = 0; i < chunk.size(); i += 97) chunk[i] = (i % 3) ? '-' : '\n';
    chunk.back() = '\r';  // chunks end in a held CR
    size_t max_buffered = 0;
    for (int i = 0; i < 128; ++i) {  // 8 MiB
        CHECK_TRUE(s.feed(chunk.data(), chunk.size()));
        if (s.buffered() > max_buffered) max_buffered = s.buffered();
        CHECK_FALSE(s.decided());
    }
    CHECK(max_buffered <= 5 + 2);
    const std::string tail = "\r\n" + part("form-data; name=pid", "P1") + kEnd;
    CHECK_TRUE(s.feed(tail.data(), tail.size()));
    CHECK_TRUE(s.decided());
    CHECK_TRUE(s.finish());
    STRCMP_EQUAL("P1", s.value(0).c_str());
    CHECK(s.consumed() == head.size() + 128 * chunk.size() + tail.size());
}

TEST(FormMultipart, PreambleAndEpilogue) {
    const std::string body = "This is a preamble.\r\n- --Xy --X\r\n\r\n" + part("form-data; name=pid", "v") +
                             "--XyZ--  trailing\r\nepilogue - --Xy -\r\n";
    STRCMP_EQUAL("found=v|", every_split(kCT, body).c_str());
    // No preamble, no line break after the close delimiter.
    STRCMP_EQUAL("found=v|", every_split(kCT, part("form-data; name=pid", "v") + "--XyZ--").c_str());
}

TEST(FormMultipart, NameSpellings) {
    const char *dispositions[] = {
        "form-data; name=\"pid\"",
        "form-data; name=pid",
        "form-data;name=pid",
        "Form-Data ;  NAME = \"pid\" ; ",
        "form-data; Name=pid; foo=\"x;y\\\"\"",
        "form-data; size=3; name=\"p\\id\"",
    };
    for (const char *d : dispositions)
        STRCMP_EQUAL((std::string(d) + ": found=v|").c_str(), (std::string(d) + ": " + whole(kCT, part(d, "v") + kEnd)).c_str());
    // Backslash escapes in the quoted name.
    STRCMP_EQUAL("found=v|", whole(kCT, part("form-data; name=\"a\\\"b\"", "v") + kEnd, {"a\"b"}).c_str());
    // Names compare exactly: no case folding, no decoding.
    STRCMP_EQUAL("absent|", whole(kCT, part("form-data; name=\"PID\"", "v") + kEnd).c_str());
    STRCMP_EQUAL("absent|", whole(kCT, part("form-data; name=\"p%69d\"", "v") + kEnd).c_str());
    // Other headers of the part, in any case and order.
    const std::string body = "--XyZ\r\ncontent-type: text/plain\r\nX-Other:1\r\nCONTENT-DISPOSITION :form-data; "
                             "name=\"pid\"  \r\nContent-Transfer-Encoding: 8bit\r\n\r\nv\r\n" + kEnd;
    STRCMP_EQUAL("found=v|", every_split(kCT, body).c_str());
}

TEST(FormMultipart, LineEndings) {
    // Bare LF everywhere, and mixed with CRLF: both accepted, the line break
    // before the delimiter (LF or CRLF) is framing.
    STRCMP_EQUAL("found=v|", every_split(kCT, part("form-data; name=pid", "v", "\n") + "--XyZ--\n").c_str());
    const std::string mixed = "--XyZ\nContent-Disposition: form-data; name=pid\r\n\nv\n--XyZ\r\n"
                              "Content-Disposition: form-data; name=x\n\r\nw\r\n--XyZ--";
    STRCMP_EQUAL("found=v|", every_split(kCT, mixed).c_str());
    // A lone CR is not a line break.
    STRCMP_EQUAL("malformed form body|boundary inside a line",
                 whole(kCT, "--XyZ\r\nContent-Disposition: form-data; name=pid\r\n\r\nv\r--XyZ--").c_str());
    // Transport padding after a delimiter.
    STRCMP_EQUAL("found=v|", every_split(kCT, "--XyZ \t \r\nContent-Disposition: form-data; name=pid\r\n\r\nv\r\n--XyZ\t\n"
                                              "Content-Disposition: form-data; name=x\r\n\r\n\r\n--XyZ--").c_str());
}

TEST(FormMultipart, EmptyPartBodies) {
    // A part whose delimiter follows the blank line at once is empty.
    STRCMP_EQUAL("empty value|field pid: empty value",
                 whole(kCT, "--XyZ\r\nContent-Disposition: form-data; name=pid\r\n\r\n--XyZ--").c_str());
    STRCMP_EQUAL("empty value|field pid: empty value", whole(kCT, part("form-data; name=pid", "") + kEnd).c_str());
    STRCMP_EQUAL("found=v|", whole(kCT, "--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\n--XyZ\r\n" +
                                            part("form-data; name=pid", "v").substr(7) + kEnd).c_str());
}

TEST(FormMultipart, TwoNames) {
    const std::string body = part("form-data; name=\"newPid\"", "B") + part("form-data; name=x", "--") +
                             part("form-data; name=\"pid\"", "A") + kEnd;
    STRCMP_EQUAL("found=A|found=B|", every_split(kCT, body, {"pid", "newPid"}).c_str());
    STRCMP_EQUAL("found=A|absent|", whole(kCT, part("form-data; name=\"pid\"", "A") + kEnd, {"pid", "newPid"}).c_str());
}

TEST(FormMultipart, DuplicateAfterFound) {
    FormScanner s(form_type(kCT), {"pid"}, 1024);
    const std::string first = part("form-data; name=pid", "A") + "--XyZ\r\nContent-Disposition: form-data; name=o\r\n\r\n";
    CHECK_TRUE(s.feed(first.data(), first.size()));
    CHECK_TRUE(s.decided());
    CHECK(s.status(0) == FieldStatus::Found);
    const std::string rest = std::string(100000, 'z') + "\r\n" + part("form-data; name=pid", "B") + kEnd;
    CHECK_FALSE(s.feed(rest.data(), rest.size()));
    CHECK(s.status(0) == FieldStatus::Duplicate);
    STRCMP_EQUAL("field pid: repeated", s.error());
    CHECK_FALSE(s.finish());
    CHECK(s.consumed() < first.size() + rest.size());
    STRCMP_EQUAL("field repeated|field pid: repeated",
                 every_split(kCT, part("form-data; name=pid", "A") + part("form-data; name=pid", "A") + kEnd).c_str());
}

TEST(FormMultipart, FileParts) {
    // A part with a filename is not the field...
    STRCMP_EQUAL("absent|", whole(kCT, part("form-data; name=pid; filename=\"p.txt\"", "v") + kEnd).c_str());
    STRCMP_EQUAL("absent|", whole(kCT, part("form-data; filename*=utf-8''p; name=pid", "v") + kEnd).c_str());
    // ...but it is an occurrence of the name: with the field, before or after, Duplicate.
    STRCMP_EQUAL("field repeated|field pid: repeated",
                 whole(kCT, part("form-data; name=pid", "v") + part("form-data; name=pid; filename=f", "w") + kEnd).c_str());
    STRCMP_EQUAL("field repeated|field pid: repeated",
                 whole(kCT, part("form-data; name=pid; filename=f", "w") + part("form-data; name=pid", "v") + kEnd).c_str());
}

TEST(FormMultipart, ValueRefusals) {
    STRCMP_EQUAL("NUL byte in value|field pid: NUL byte in value",
                 whole(kCT, part("form-data; name=pid", std::string("a\0b", 3)) + kEnd).c_str());
    STRCMP_EQUAL("found=abcde|", every_split(kCT, part("form-data; name=pid", "abcde") + kEnd, {"pid"}, 5).c_str());
    STRCMP_EQUAL("value longer than PidLockMaxKeyLength|field pid: value too long",
                 every_split(kCT, part("form-data; name=pid", "abcdef") + kEnd, {"pid"}, 5).c_str());
    // The limit holds while streaming: a huge value is refused early.
    FormScanner s(form_type(kCT), {"pid"}, 5);
    const std::string body = part("form-data; name=pid", std::string(1 << 20, 'a'));
    CHECK_FALSE(s.feed(body.data(), body.size()));
    CHECK(s.status(0) == FieldStatus::TooLong);
    CHECK(s.value(0).size() <= 5);
    // Other parts may hold anything.
    STRCMP_EQUAL("found=v|", whole(kCT, part("form-data; name=o", std::string("\0\0", 2)) + part("form-data; name=pid", "v") + kEnd).c_str());
}

TEST(FormMultipart, BadBoundary) {
    STRCMP_EQUAL("malformed form body|multipart/form-data without a valid boundary",
                 whole("multipart/form-data", part("form-data; name=pid", "v") + kEnd).c_str());
    // Wrong boundary: no delimiter in the body.
    STRCMP_EQUAL("malformed form body|no boundary delimiter in the body",
                 whole("multipart/form-data; boundary=Other", part("form-data; name=pid", "v") + kEnd).c_str());
    // An empty body has no fields.
    STRCMP_EQUAL("absent|", whole(kCT, "").c_str());
}

TEST(FormMultipart, BrokenFraming) {
    const std::string pid = part("form-data; name=pid", "v");
    struct Case { std::string body; const char *error; } cases[] = {
        {pid, "body ends without the close delimiter"},
        {pid.substr(0, pid.size() - 2), "body ends without the close delimiter"},
        {"--XyZ\r\nContent-Disposition: form-data; na", "body ends without the close delimiter"},
        {"--XyZ\r\nContent-Type: text/plain\r\n\r\nv\r\n" + pid + kEnd, "part without Content-Disposition"},
        {"--XyZ\r\nContent-Disposition form-data; name=pid\r\n\r\nv\r\n" + kEnd, "part header line without a name and colon"},
        {"--XyZ\r\nContent-Disposition: form-data;\r\n name=pid\r\n\r\nv\r\n" + kEnd, "folded part header line"},
        {"--XyZ\r\n: x\r\n\r\nv\r\n" + kEnd, "part header line without a name and colon"},
        {"--XyZx\r\n" + pid.substr(7) + kEnd, "garbage after a boundary"},
        {"--XyZ -\r\n" + pid.substr(7) + kEnd, "garbage after a boundary"},
        {"--XyZ-x\r\n" + pid.substr(7) + kEnd, "garbage after a boundary"},
        {"--XyZ\r\r\n" + pid.substr(7) + kEnd, "garbage after a boundary"},
        {"pre--XyZ\r\n" + pid.substr(7) + kEnd, "boundary inside a line"},
        {part("form-data; name=o", "a--XyZ") + pid + kEnd, "boundary inside a line"},
        {part("form-data; name=o", "a") + kEnd + pid + kEnd, "boundary after the close delimiter"},
        {part("form-data; name=o", "a") + "--XyZ--XyZ", "boundary after the close delimiter"},
        {"--XyZ\r\nContent-Disposition: form-data; name=x\r\nX: y--XyZ\r\n\r\nv\r\n" + kEnd, "boundary inside part headers"},
        {"--XyZ\r\nContent-Disposition: form-data; name=x\r\n--XyZ: y\r\n\r\nv\r\n" + kEnd, "boundary inside part headers"},
        {part("attachment; name=pid", "v") + kEnd, "Content-Disposition is not form-data"},
        {part("form-data; filename=x", "v") + kEnd, "part without a name"},
        {part("form-data; name=a; name=pid", "v") + kEnd, "name parameter repeated"},
        {part("form-data; name=\"pid", "v") + kEnd, "malformed Content-Disposition parameters"},
        {part("form-data; name", "v") + kEnd, "malformed Content-Disposition parameters"},
        {part("form-data; name=p\"id\"", "v") + kEnd, "malformed Content-Disposition parameters"},
        {part("form-data; name*=pid", "v") + kEnd, "name* parameter that does not decode"},
        {"--XyZ\r\nContent-Disposition: form-data; name=x\r\nContent-Disposition: form-data; name=pid\r\n\r\nv\r\n" + kEnd,
         "Content-Disposition repeated in a part"},
        {"--XyZ\r\nX: " + std::string(16384, 'a') + "\r\n\r\nv\r\n" + kEnd, "part headers longer than 16 KiB"},
    };
    for (const Case &c : cases) {
        const std::string expect = std::string("malformed form body|") + c.error;
        STRCMP_EQUAL(expect.c_str(), whole(kCT, c.body).c_str());
    }
    STRCMP_EQUAL("malformed form body|boundary inside a line",
                 every_split(kCT, part("form-data; name=o", "a\r\n--Xy\r--XyZ") + pid + kEnd).c_str());
}

TEST(FormMultipart, NameStar) {
    // name* that decodes to a watched name: refused; to another name: ignored.
    STRCMP_EQUAL("malformed form body|field pid: named by a name* parameter",
                 whole(kCT, part("form-data; name=x; name*=utf-8''p%69d", "v") + kEnd).c_str());
    STRCMP_EQUAL("found=v|", whole(kCT, part("form-data; name=pid; name*=utf-8'en'other", "v") + kEnd).c_str());
}

TEST(FormMultipart, FramingAfterDecided) {
    // A body that ends without its close delimiter once every field is
    // found is no error; broken framing still is.
    STRCMP_EQUAL("found=v|", whole(kCT, part("form-data; name=pid", "v") + "--XyZ\r\nContent-Disposition: form-data; name=o\r\n\r\nabc").c_str());
    // The value itself must end in a delimiter.
    STRCMP_EQUAL("malformed form body|body ends without the close delimiter",
                 whole(kCT, part("form-data; name=pid", "v")).c_str());
    STRCMP_EQUAL("found=v|part without Content-Disposition",
                 whole(kCT, part("form-data; name=pid", "v") + "--XyZ\r\n\r\nabc\r\n" + kEnd).c_str());
    // With a name still missing, the end of body is Malformed for it.
    STRCMP_EQUAL("found=v|malformed form body|body ends without the close delimiter",
                 whole(kCT, part("form-data; name=pid", "v") + "--XyZ\r\nContent-Disp", {"pid", "newPid"}).c_str());
}

TEST(FormMultipart, SelfOverlappingBoundary) {
    const char *ct = "multipart/form-data; boundary=\"-a-a-b\"";
    const std::string body = "---a-a-\r\n---a-a-b\r\nContent-Disposition: form-data; name=pid\r\n\r\n"
                             "---a-a-a-b-a---a-a-a\r\n---a-a-b--";
    STRCMP_EQUAL("found=---a-a-a-b-a---a-a-a|", every_split(ct, body).c_str());
}

TEST_GROUP(FormUrlEncoded) {};

namespace {
const char *const kUE = "application/x-www-form-urlencoded";
}

TEST(FormUrlEncoded, DecodedLikeQueryValues) {
    STRCMP_EQUAL("found=doi:10.5063/F1 x|", every_split(kUE, "a=1&pid=doi%3A10.5063%2FF1+x&b=2").c_str());
    STRCMP_EQUAL("found=%41|", whole(kUE, "pid=%2541").c_str());
    STRCMP_EQUAL("found=x|", every_split(kUE, "p%69d=x").c_str());
    STRCMP_EQUAL("found=a b|", whole(kUE, "x+y=1&pi%64=a+b").c_str());
    STRCMP_EQUAL("absent|", whole(kUE, "pidx=1&xpid=2&pid%zz=3").c_str());
    STRCMP_EQUAL("absent|", whole(kUE, "").c_str());
    // Only '&' separates.
    STRCMP_EQUAL("found=a;pid=b|", whole(kUE, "pid=a;pid=b").c_str());
    STRCMP_EQUAL("found=a=b|", whole(kUE, "pid=a=b&&").c_str());
}

TEST(FormUrlEncoded, Refusals) {
    STRCMP_EQUAL("empty value|field pid: empty value", whole(kUE, "pid=").c_str());
    STRCMP_EQUAL("empty value|field pid: empty value", whole(kUE, "x=1&pid&y=2").c_str());
    STRCMP_EQUAL("empty value|field pid: empty value", whole(kUE, "pid").c_str());
    STRCMP_EQUAL("malformed form body|field pid: malformed percent escape", every_split(kUE, "pid=a%4&x=1").c_str());
    STRCMP_EQUAL("malformed form body|field pid: malformed percent escape", whole(kUE, "pid=%zz").c_str());
    STRCMP_EQUAL("malformed form body|field pid: malformed percent escape", whole(kUE, "pid=a%").c_str());
    STRCMP_EQUAL("NUL byte in value|field pid: NUL byte in value", whole(kUE, "pid=a%00b").c_str());
    STRCMP_EQUAL("NUL byte in value|field pid: NUL byte in value", whole(kUE, std::string("pid=a\0b", 7)).c_str());
    STRCMP_EQUAL("found=ABCDE|", whole(kUE, "pid=%41%42%43%44%45", {"pid"}, 5).c_str());
    STRCMP_EQUAL("value longer than PidLockMaxKeyLength|field pid: value too long",
                 every_split(kUE, "pid=abcdef", {"pid"}, 5).c_str());
    // A malformed escape in a name that then reads as the watched one.
    STRCMP_EQUAL("malformed form body|field a%zz: malformed percent escape in the name",
                 every_split(kUE, "a%zz=1", {"a%zz"}).c_str());
    STRCMP_EQUAL("malformed form body|field a%4: malformed percent escape in the name",
                 whole(kUE, "a%4=1", {"a%4"}).c_str());
}

TEST(FormUrlEncoded, Duplicates) {
    STRCMP_EQUAL("field repeated|field pid: repeated", every_split(kUE, "pid=a&x=1&p%69d=b").c_str());
    STRCMP_EQUAL("field repeated|field pid: repeated", whole(kUE, "pid=a&pid").c_str());
    FormScanner s(form_type(kUE), {"pid", "newPid"}, 1024);
    CHECK_TRUE(s.feed("newPid=B&pid=A&", 15));
    CHECK_TRUE(s.decided());
    CHECK_FALSE(s.feed("x=1&newPid=C", 12));
    CHECK(s.status(0) == FieldStatus::Found);
    CHECK(s.status(1) == FieldStatus::Duplicate);
}

TEST(FormUrlEncoded, HugeOtherNamesAndValuesStream) {
    FormScanner s(form_type(kUE), {"pid"}, 64);
    const std::string big(64 * 1024, 'n');
    CHECK_TRUE(s.feed("x=", 2));
    for (int i = 0; i < 64; ++i) CHECK_TRUE(s.feed(big.data(), big.size()));
    CHECK_TRUE(s.feed("&", 1));
    for (int i = 0; i < 64; ++i) {
        CHECK_TRUE(s.feed(big.data(), big.size()));
        CHECK(s.buffered() <= 4);
    }
    CHECK_TRUE(s.feed("=1&pid=v", 8));
    CHECK_TRUE(s.finish());
    STRCMP_EQUAL("v", s.value(0).c_str());
}
