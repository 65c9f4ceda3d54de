# mod_pidlock — build, test, run, bench. `make run` and `make test` first
# install what is missing (Debian packages) and then do the rest.
APXS      = $(shell command -v apxs || command -v apxs2)
CXX      ?= g++
BUILD    ?= build
HTTPD_INC = $(shell $(APXS) -q INCLUDEDIR)
APR_INC   = $(shell $(APXS) -q APR_INCLUDEDIR)
APU_INC   = $(shell $(APXS) -q APU_INCLUDEDIR)
LIBEXEC   = $(shell $(APXS) -q LIBEXECDIR)
SYSCONF   = $(shell $(APXS) -q SYSCONFDIR)

WARN      = -Wall -Wextra -Werror
# libpq (libpq-dev): the PostgreSQL tier (PidLockCluster) is part of the module.
PQ_INC    = $(shell pg_config --includedir 2>/dev/null)
CPPFLAGS_ALL = -I$(HTTPD_INC) -I$(APR_INC) -I$(APU_INC) -I$(PQ_INC) -DLINUX -D_REENTRANT -D_GNU_SOURCE
CXXFLAGS_ALL = -std=c++17 $(WARN) -fPIC -O2 -g -fvisibility=hidden

CORE_SRCS = mod_pidlock/pidlock_key.cc mod_pidlock/pidlock_table.cc \
            mod_pidlock/pidlock_render.cc mod_pidlock/pidlock_checks.cc \
            mod_pidlock/pidlock_locks.cc mod_pidlock/pidlock_form.cc mod_pidlock/pidlock_backend.cc \
            mod_pidlock/pidlock_exits.cc mod_pidlock/pidlock_gate.cc \
            mod_pidlock/pidlock_lease.cc mod_pidlock/pidlock_lease_pg.cc \
            mod_pidlock/pidlock_cluster.cc
GLUE_SRCS = mod_pidlock/mod_pidlock.cc mod_pidlock/mod_pidlock_config.cc mod_pidlock/mod_pidlock_lifecycle.cc \
            mod_pidlock/mod_pidlock_request.cc mod_pidlock/mod_pidlock_status.cc mod_pidlock/mod_pidlock_body.cc \
            mod_pidlock/mod_pidlock_watchdog.cc mod_pidlock/mod_pidlock_lease.cc
HEADERS   = $(wildcard mod_pidlock/*.h)
UNIT_SRCS = $(wildcard tests/unit/*.cc)
UNIT_HDRS = $(wildcard tests/unit/*.h)

MODULE    = $(BUILD)/mod_pidlock.so
BACKEND   = $(BUILD)/mod_pidlock_testbackend.so
UNIT      = $(BUILD)/unit_tests
UNIT_SAN  = $(BUILD)/unit_tests_asan
BENCH     = $(BUILD)/bench_table
FUZZ      = $(BUILD)/fuzz_keys
FUZZ_FORM = $(BUILD)/fuzz_form
FUZZ_LEASE = $(BUILD)/fuzz_lease
FUZZ_SECONDS ?= 60
CLANGXX   = $(shell command -v clang++-14 || command -v clang++)

.PHONY: all deps install run test test-run unit integration bench fuzz clean check-apxs deb

# Targets that compile go through deps first, so a fresh machine works; the
# recursive make then sees apxs and the headers.
all: deps
	@$(MAKE) --no-print-directory $(MODULE)

check-apxs:
	@[ -n "$(APXS)" ] || { echo "apxs not found: run 'make deps' (or 'sh scripts/install-deps.sh') first"; exit 1; }

deps:
	@sh scripts/install-deps.sh

$(BUILD): | check-apxs
	@mkdir -p $(BUILD)

# apxs compiles only C, so g++ compiles and links; module symbols stay
# hidden but for pidlock_module (exported by AP_MODULE_DECLARE_DATA).
# -fno-gnu-unique: no STB_GNU_UNIQUE symbol pins the old copy in memory,
# so a graceful restart loads a new build; the version script exports
# pidlock_module alone.
$(MODULE): $(CORE_SRCS) $(GLUE_SRCS) $(HEADERS) mod_pidlock/pidlock.map Makefile | $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) -fno-gnu-unique $(CPPFLAGS_ALL) -shared -Wl,--version-script=mod_pidlock/pidlock.map \
	    -o $@ $(CORE_SRCS) $(GLUE_SRCS) -lpq

# The same module with another table layout version, as a new release with a
# changed table would be: the graceful-upgrade test restarts onto it.
MODULE_L2 = $(BUILD)/mod_pidlock_layout2.so
$(MODULE_L2): $(CORE_SRCS) $(GLUE_SRCS) $(HEADERS) mod_pidlock/pidlock.map Makefile | $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) -fno-gnu-unique $(CPPFLAGS_ALL) -DPIDLOCK_LAYOUT_BUMP=100 -shared \
	    -Wl,--version-script=mod_pidlock/pidlock.map -o $@ $(CORE_SRCS) $(GLUE_SRCS) -lpq

$(BACKEND): tests/backend/mod_pidlock_testbackend.cc Makefile | $(BUILD)
	$(CXX) $(CXXFLAGS_ALL) $(CPPFLAGS_ALL) -shared -o $@ $<

$(UNIT): $(CORE_SRCS) $(HEADERS) $(UNIT_SRCS) $(UNIT_HDRS) Makefile | $(BUILD)
	$(CXX) -std=c++17 $(WARN) -O1 -g $(CPPFLAGS_ALL) -DPIDLOCK_CRASH_POINTS -Imod_pidlock -o $@ $(CORE_SRCS) $(UNIT_SRCS) \
	    -lCppUTest -lCppUTestExt -lapr-1 -lpq -lpthread

$(UNIT_SAN): $(CORE_SRCS) $(HEADERS) $(UNIT_SRCS) $(UNIT_HDRS) Makefile | $(BUILD)
	$(CXX) -std=c++17 $(WARN) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=undefined $(CPPFLAGS_ALL) -DPIDLOCK_CRASH_POINTS -Imod_pidlock -o $@ $(CORE_SRCS) $(UNIT_SRCS) \
	    -lCppUTest -lCppUTestExt -lapr-1 -lpq -lpthread

# The PostgreSQL advisory-lock rows of the bench (libpq, as the module).
PQ_FLAGS  = -DHAVE_LIBPQ
PQ_LIBS   = -lpq

$(BENCH): bench/bench_table.cc $(CORE_SRCS) $(HEADERS) Makefile | $(BUILD)
	$(CXX) -std=c++17 $(WARN) -O2 -g $(CPPFLAGS_ALL) $(PQ_FLAGS) -Imod_pidlock -o $@ bench/bench_table.cc $(CORE_SRCS) \
	    -lapr-1 $(PQ_LIBS) -lpthread

# libFuzzer (clang) over key extraction and the renderers; the seed corpus is
# tests/fuzz/corpus, what the fuzzer finds goes to $(BUILD)/fuzz-corpus.
$(FUZZ): tests/fuzz/fuzz_keys.cc $(CORE_SRCS) $(HEADERS) Makefile | $(BUILD)
	$(CLANGXX) -std=c++17 $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined -Imod_pidlock -o $@ \
	    tests/fuzz/fuzz_keys.cc mod_pidlock/pidlock_key.cc mod_pidlock/pidlock_render.cc \
	    mod_pidlock/pidlock_table.cc -lpthread

# The form-body scanner: whole, chunked and byte-wise feeds must agree.
$(FUZZ_FORM): tests/fuzz/fuzz_form.cc $(CORE_SRCS) $(HEADERS) Makefile | $(BUILD)
	$(CLANGXX) -std=c++17 $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined -Imod_pidlock -o $@ \
	    tests/fuzz/fuzz_form.cc mod_pidlock/pidlock_form.cc mod_pidlock/pidlock_key.cc

# The lease header parsers (If, Timeout, Lock-Token, LOCK body owner).
$(FUZZ_LEASE): tests/fuzz/fuzz_lease.cc $(CORE_SRCS) $(HEADERS) Makefile | $(BUILD)
	$(CLANGXX) -std=c++17 $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined -Imod_pidlock -o $@ \
	    tests/fuzz/fuzz_lease.cc mod_pidlock/pidlock_lease.cc mod_pidlock/pidlock_render.cc \
	    mod_pidlock/pidlock_table.cc -lpthread

fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZ) $(FUZZ_FORM) $(FUZZ_LEASE)
	@mkdir -p $(BUILD)/fuzz-corpus $(BUILD)/fuzz-corpus-form $(BUILD)/fuzz-corpus-lease
	$(FUZZ) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus tests/fuzz/corpus
	$(FUZZ_FORM) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus-form tests/fuzz/corpus_form
	$(FUZZ_LEASE) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus-lease tests/fuzz/corpus_lease

install: deps
	@$(MAKE) --no-print-directory $(MODULE)
	install -m 644 $(MODULE) $(DESTDIR)$(LIBEXEC)/mod_pidlock.so
	install -d $(DESTDIR)$(SYSCONF)/mods-available
	install -m 644 conf/pidlock.load conf/pidlock.conf $(DESTDIR)$(SYSCONF)/mods-available/

unit: deps
	@$(MAKE) --no-print-directory $(UNIT) $(UNIT_SAN)

test: deps
	@sh scripts/install-deps-browser.sh
	@sh scripts/install-deps-deb.sh
	@$(MAKE) --no-print-directory test-run

test-run: $(MODULE) $(MODULE_L2) $(BACKEND) $(UNIT) $(UNIT_SAN) $(FUZZ) $(FUZZ_FORM) $(FUZZ_LEASE)
	@sh tests/run_all.sh $(BUILD)

run: deps
	@$(MAKE) --no-print-directory $(MODULE) $(BACKEND)
	@sh scripts/demo.sh $(BUILD)

# BENCH_MODE=full for more rounds (about twenty minutes; quick: under three).
bench: deps
	@sh scripts/install-deps-bench.sh
	@$(MAKE) --no-print-directory $(BENCH) $(MODULE) $(BACKEND)
	@sh bench/run.sh $(BUILD) $(BENCH_MODE)

# The Debian package (debhelper + dh_apache2), built from a copy of the tree.
deb: deps
	@sh scripts/install-deps-deb.sh
	@sh scripts/build-deb.sh $(BUILD)

clean:
	rm -rf $(BUILD)
