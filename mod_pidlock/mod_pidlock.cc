// mod_pidlock: the module structure and its hooks. The glue is split by
// concern (mod_pidlock_config.cc, _lifecycle.cc, _request.cc, _status.cc);
// the locking itself lives in the core (pidlock_*.cc), which knows nothing
// of httpd.
#include "mod_pidlock_glue.h"

#include "ap_mpm.h"
#include "http_config.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mod_status.h"
#include "mpm_common.h"

using namespace pidlock::glue;

namespace {

void register_hooks(apr_pool_t *) {
    APR_OPTIONAL_HOOK(ap, status_hook, mod_status_hook, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_pre_config(pre_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_check_config(check_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_post_config(post_config, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_child_init(child_init, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_child_status(child_status, nullptr, nullptr, APR_HOOK_MIDDLE);
    ap_hook_monitor(monitor, nullptr, nullptr, APR_HOOK_MIDDLE);
    // Last of the fixups: after authentication and authorization, so a client
    // that is refused never holds or waits on a lock.
    ap_hook_fixups(fixups, nullptr, nullptr, APR_HOOK_REALLY_LAST);
    // A sub-request locks when it runs, before any handler: lookups that are
    // never run (mod_autoindex's, one per file listed) take no lock.
    ap_hook_handler(subrequest_locks, nullptr, nullptr, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(status_handler, nullptr, nullptr, APR_HOOK_MIDDLE);
    // Before mod_http2 runs an upgraded request's HTTP/2 session in it.
    ap_hook_protocol_switch(protocol_switch, nullptr, nullptr, APR_HOOK_REALLY_FIRST);
    // Every request, locked or not: a client's own fence header goes.
    ap_hook_post_read_request(strip_fence, nullptr, nullptr, APR_HOOK_REALLY_FIRST);
    register_body_filters();
    // A connection filter, added to a connection by its first locking
    // request and kept: it sits right below the protocol filters, where the
    // response's EOS passes (PidLockRelease eos).
    g_release_filter = ap_register_output_filter(kReleaseFilter, release_filter, nullptr, AP_FTYPE_CONNECTION);
}

}  // namespace

extern "C" {
// STANDARD20_MODULE_STUFF, but named "mod_pidlock.c" rather than after this
// C++ file: httpd matches <IfModule mod_pidlock.c> against that name.
PIDLOCK_EXPORT module AP_MODULE_DECLARE_DATA pidlock_module = {
    MODULE_MAGIC_NUMBER_MAJOR,
    MODULE_MAGIC_NUMBER_MINOR,
    -1,
    "mod_pidlock.c",
    nullptr,
    nullptr,
    MODULE_MAGIC_COOKIE,
    nullptr,
    create_dir_config,
    merge_dir_config,
    create_server_config,
    merge_server_config,
    pidlock_cmds,
    register_hooks,
    AP_MODULE_FLAG_NONE
};
}
