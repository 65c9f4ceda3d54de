# mod_pidlock — build, test, run, bench.
#
#   make            the module (build/mod_pidlock.so); installs nothing
#   make deps       installs the Debian packages the build, tests and demo need
#   make run        deps + module + a demo httpd on 127.0.0.1:8089 (restarts it)
#   make stop       stops the demo `make run` started (by its pid file)
#   make test       deps + every test suite (tests/run_all.sh)
#   make deb        the Debian package (build/libapache2-mod-pidlock_*.deb)
#   make bench, make fuzz, make install, make clean
#
# Every source compiles once per flavour into an object under $(BUILD)/obj/
# with its dependencies (-MMD -MP), so touching a header rebuilds only what
# includes it. Sources are found by wildcard: the core is
# mod_pidlock/pidlock_*.cc (a static library, $(BUILD)/libpidlock.a, linked
# into the module, the unit tests and the benchmark), the httpd glue
# mod_pidlock/mod_pidlock*.cc, the unit tests tests/unit/*.cc, the fuzzers
# tests/fuzz/fuzz_*.cc (one binary each). Flavours that need other compiler
# flags have their own objects: variants that recompile only the files using
# their macro (the unit tests' crash points, PIDLOCK_CRASH_POINTS; the
# upgrade test's second table layout, PIDLOCK_LAYOUT_BUMP; the bench's naive
# PostgreSQL design, PIDLOCK_BENCH_NAIVE), the ASan/UBSan
# unit tests, and the clang libFuzzer builds.
APXS     := $(shell command -v apxs || command -v apxs2)
BUILD    ?= build
OBJ       = $(BUILD)/obj
ifneq ($(APXS),)
HTTPD_INC := $(shell $(APXS) -q INCLUDEDIR)
APR_INC   := $(shell $(APXS) -q APR_INCLUDEDIR)
APU_INC   := $(shell $(APXS) -q APU_INCLUDEDIR)
LIBEXEC   := $(shell $(APXS) -q LIBEXECDIR)
SYSCONF   := $(shell $(APXS) -q SYSCONFDIR)
endif
# libpq (libpq-dev): the PostgreSQL tier (PidLockCluster) is part of the module.
PQ_INC   := $(shell pg_config --includedir 2>/dev/null)
CLANGXX  := $(shell command -v clang++-14 || command -v clang++)
# The version the module reports (status page, startup log line): the
# package's, from debian/changelog, so a package build reports its own.
VERSION  := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)

WARN      = -Wall -Wextra -Werror
INCS      = -I$(HTTPD_INC) -I$(APR_INC) -I$(APU_INC) -I$(PQ_INC)
DEFS      = -DLINUX -D_REENTRANT -D_GNU_SOURCE -DPIDLOCK_VERSION='"$(VERSION)"'
# CPPFLAGS, CXXFLAGS and LDFLAGS from the environment (dpkg-buildflags'
# hardening in a package build) come after the project's own.
BASE      = -std=c++17 $(WARN) -g $(INCS) $(DEFS)
# The module's code: position independent (linked into a shared object),
# hidden but for pidlock_module, and -fno-gnu-unique: no STB_GNU_UNIQUE
# symbol pins an old copy in memory, so a graceful restart loads a new build.
# Link-time optimization: the request path crosses the glue, the backend and
# the table, and LTO inlines across them (callgrind: about 100 instructions
# a request fewer). Fat objects, so that links without LTO (the unit tests
# over the crash-point core) still find ordinary code in them.
LTO       = -flto=auto -ffat-lto-objects
MOD_FLAGS = $(BASE) -O2 -fPIC -fvisibility=hidden -fno-gnu-unique $(LTO) $(CPPFLAGS) $(CXXFLAGS)
MOD_LINK  = -O2 $(LTO) -fPIC
TEST_FLAGS = $(BASE) -O1 -Imod_pidlock -DPIDLOCK_CRASH_POINTS $(CPPFLAGS) $(CXXFLAGS)
SAN_FLAGS = $(BASE) -O1 -Imod_pidlock -DPIDLOCK_CRASH_POINTS -fsanitize=address,undefined \
            -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# libFuzzer: objects with fuzzer-no-link, binaries link the fuzzer's main.
FUZZ_FLAGS = -std=c++17 $(WARN) -g -O1 $(INCS) $(DEFS) -Imod_pidlock \
             -fsanitize=fuzzer-no-link,address,undefined
DEPFLAGS  = -MMD -MP

CORE_SRCS  = $(sort $(wildcard mod_pidlock/pidlock_*.cc))
GLUE_SRCS  = $(sort $(wildcard mod_pidlock/mod_pidlock*.cc))
UNIT_SRCS  = $(sort $(wildcard tests/unit/*.cc))
FUZZ_SRCS  = $(sort $(wildcard tests/fuzz/fuzz_*.cc))

CORE_OBJS  = $(CORE_SRCS:mod_pidlock/%.cc=$(OBJ)/core/%.o)
GLUE_OBJS  = $(GLUE_SRCS:mod_pidlock/%.cc=$(OBJ)/glue/%.o)
UNIT_OBJS  = $(UNIT_SRCS:tests/unit/%.cc=$(OBJ)/unit/%.o)
SAN_OBJS   = $(CORE_SRCS:mod_pidlock/%.cc=$(OBJ)/asan/core/%.o) $(UNIT_SRCS:tests/unit/%.cc=$(OBJ)/asan/unit/%.o)
FUZZ_CORE  = $(CORE_SRCS:mod_pidlock/%.cc=$(OBJ)/fuzz/core/%.o)
BENCH_OBJ  = $(OBJ)/bench/bench_table.o
BACKEND_OBJ = $(OBJ)/backend/mod_pidlock_testbackend.o

CORE_LIB  = $(BUILD)/libpidlock.a
CRASH_LIB = $(BUILD)/libpidlock_crash.a
FUZZ_LIB  = $(OBJ)/fuzz/libpidlock.a
MODULE    = $(BUILD)/mod_pidlock.so
# The same module with another table layout version, as a new release with a
# changed table would be: the graceful-upgrade test restarts onto it.
MODULE_L2 = $(BUILD)/mod_pidlock_layout2.so
# Bench only, never installed: the naive PostgreSQL design (no local tier,
# one session-level advisory lock per request) that `make bench` compares
# the tier with (PIDLOCK_BENCH_NAIVE in pidlock_cluster.cc).
NAIVE     = $(BUILD)/mod_pidlock_naive.so
BACKEND   = $(BUILD)/mod_pidlock_testbackend.so
UNIT      = $(BUILD)/unit_tests
UNIT_SAN  = $(BUILD)/unit_tests_asan
BENCH     = $(BUILD)/bench_table
FUZZERS   = $(FUZZ_SRCS:tests/fuzz/%.cc=$(BUILD)/%)
FUZZ      = $(BUILD)/fuzz_keys
FUZZ_SECONDS ?= 60
# make test compiles with one job per CPU.
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)

UNIT_LIBS = -lCppUTest -lCppUTestExt -lapr-1 -lpq -lpthread

# Objects made through pattern rules are kept (no intermediate files).
.SECONDARY:

.PHONY: all deps install run stop test test-run unit integration bench fuzz clean check-apxs deb

all: $(MODULE)

APXS_MISSING = apxs not found: run 'make deps' (or 'sh scripts/install-deps.sh') first
check-apxs:
	@[ -n "$(APXS)" ] || { echo "$(APXS_MISSING)"; exit 1; }

# Goals that compile need apxs's paths; those that install it first recurse.
ifeq ($(APXS),)
ifneq ($(filter-out deps test run stop install unit fuzz bench deb clean check-apxs,$(or $(MAKECMDGOALS),all)),)
$(error $(APXS_MISSING))
endif
endif

deps:
	@sh scripts/install-deps.sh

# A flavour's objects depend on a file holding its compile command, rewritten
# only when the command changes: new flags rebuild that flavour, nothing else.
ifneq ($(MAKECMDGOALS),clean)
flags_stamp = $(shell mkdir -p $(OBJ)/$(1) && { printf '%s\n' "$(subst ",\",$(2))" | \
                cmp -s - $(OBJ)/$(1)/.flags || printf '%s\n' "$(subst ",\",$(2))" > $(OBJ)/$(1)/.flags; })
$(call flags_stamp,core,$(CXX) $(MOD_FLAGS))
$(call flags_stamp,glue,$(CXX) $(MOD_FLAGS))
$(call flags_stamp,crash,$(CXX) $(MOD_FLAGS) -DPIDLOCK_CRASH_POINTS)
$(call flags_stamp,layout2,$(CXX) $(MOD_FLAGS) -DPIDLOCK_LAYOUT_BUMP=100)
$(call flags_stamp,naive,$(CXX) $(MOD_FLAGS) -DPIDLOCK_BENCH_NAIVE)
$(call flags_stamp,unit,$(CXX) $(TEST_FLAGS))
$(call flags_stamp,asan,$(CXX) $(SAN_FLAGS))
$(call flags_stamp,fuzz,$(CLANGXX) $(FUZZ_FLAGS))
$(call flags_stamp,bench,$(CXX) $(MOD_FLAGS) -Imod_pidlock -DHAVE_LIBPQ)
$(call flags_stamp,backend,$(CXX) $(MOD_FLAGS))
endif

$(OBJ)/core/%.o: mod_pidlock/%.cc $(OBJ)/core/.flags
	$(CXX) $(MOD_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/glue/%.o: mod_pidlock/%.cc $(OBJ)/glue/.flags
	$(CXX) $(MOD_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/unit/%.o: tests/unit/%.cc $(OBJ)/unit/.flags
	$(CXX) $(TEST_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/asan/core/%.o: mod_pidlock/%.cc $(OBJ)/asan/.flags
	@mkdir -p $(@D)
	$(CXX) $(SAN_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/asan/unit/%.o: tests/unit/%.cc $(OBJ)/asan/.flags
	@mkdir -p $(@D)
	$(CXX) $(SAN_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/fuzz/core/%.o: mod_pidlock/%.cc $(OBJ)/fuzz/.flags
	@mkdir -p $(@D)
	$(CLANGXX) $(FUZZ_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(OBJ)/fuzz/%.o: tests/fuzz/%.cc $(OBJ)/fuzz/.flags
	$(CLANGXX) $(FUZZ_FLAGS) $(DEPFLAGS) -c -o $@ $<
$(BENCH_OBJ): bench/bench_table.cc $(OBJ)/bench/.flags
	$(CXX) $(MOD_FLAGS) -Imod_pidlock -DHAVE_LIBPQ $(DEPFLAGS) -c -o $@ $<
$(BACKEND_OBJ): tests/backend/mod_pidlock_testbackend.cc $(OBJ)/backend/.flags
	$(CXX) $(MOD_FLAGS) $(DEPFLAGS) -c -o $@ $<

# The core, once, as a static library.
$(CORE_LIB): $(CORE_OBJS)
	@rm -f $@
	ar rcs $@ $^
# $(call variant,NAME,MACRO,FLAGS): the module's sources that use MACRO
# (grep), compiled again with FLAGS into $(OBJ)/NAME/; NAME_CORE and
# NAME_GLUE are the core and glue objects with those swapped in, and
# $(BUILD)/libpidlock_NAME.a the core library made of them.
define variant
$(1)_SRCS := $$(shell grep -l $(2) $$(CORE_SRCS) $$(GLUE_SRCS) 2>/dev/null)
$(1)_OBJS = $$($(1)_SRCS:mod_pidlock/%.cc=$$(OBJ)/$(1)/%.o)
$(1)_CORE = $$(filter-out $$($(1)_SRCS:mod_pidlock/%.cc=$$(OBJ)/core/%.o),$$(CORE_OBJS)) $$(filter $$(OBJ)/$(1)/pidlock_%,$$($(1)_OBJS))
$(1)_GLUE = $$(filter-out $$($(1)_SRCS:mod_pidlock/%.cc=$$(OBJ)/glue/%.o),$$(GLUE_OBJS)) $$(filter $$(OBJ)/$(1)/mod_pidlock%,$$($(1)_OBJS))
$$(OBJ)/$(1)/%.o: mod_pidlock/%.cc $$(OBJ)/$(1)/.flags
	$$(CXX) $$(MOD_FLAGS) $(3) $$(DEPFLAGS) -c -o $$@ $$<
$$(BUILD)/libpidlock_$(1).a: $$($(1)_CORE)
	@rm -f $$@
	ar rcs $$@ $$^
endef
$(eval $(call variant,crash,PIDLOCK_CRASH_POINTS,-DPIDLOCK_CRASH_POINTS))
$(eval $(call variant,layout2,PIDLOCK_LAYOUT_BUMP,-DPIDLOCK_LAYOUT_BUMP=100))
$(eval $(call variant,naive,PIDLOCK_BENCH_NAIVE,-DPIDLOCK_BENCH_NAIVE))
$(FUZZ_LIB): $(FUZZ_CORE)
	@rm -f $@
	ar rcs $@ $^

# apxs compiles only C, so g++ links; the version script exports
# pidlock_module alone (tests/run_all.sh checks it).
$(MODULE): $(GLUE_OBJS) $(CORE_LIB) mod_pidlock/pidlock.map
	$(CXX) -shared $(MOD_LINK) -Wl,--version-script=mod_pidlock/pidlock.map $(LDFLAGS) -o $@ $(GLUE_OBJS) $(CORE_LIB) -lpq
$(MODULE_L2): $(layout2_GLUE) $(BUILD)/libpidlock_layout2.a mod_pidlock/pidlock.map
	$(CXX) -shared $(MOD_LINK) -Wl,--version-script=mod_pidlock/pidlock.map $(LDFLAGS) -o $@ $(layout2_GLUE) $(BUILD)/libpidlock_layout2.a -lpq
$(NAIVE): $(naive_GLUE) $(BUILD)/libpidlock_naive.a mod_pidlock/pidlock.map
	$(CXX) -shared $(MOD_LINK) -Wl,--version-script=mod_pidlock/pidlock.map $(LDFLAGS) -o $@ $(naive_GLUE) $(BUILD)/libpidlock_naive.a -lpq

$(BACKEND): $(BACKEND_OBJ)
	$(CXX) -shared $(MOD_LINK) $(LDFLAGS) -o $@ $^

$(UNIT): $(UNIT_OBJS) $(CRASH_LIB)
	$(CXX) $(LDFLAGS) -o $@ $(UNIT_OBJS) $(CRASH_LIB) $(UNIT_LIBS)

$(UNIT_SAN): $(SAN_OBJS)
	$(CXX) -fsanitize=address,undefined -o $@ $(filter $(OBJ)/asan/unit/%,$^) $(filter $(OBJ)/asan/core/%,$^) $(UNIT_LIBS)

# The PostgreSQL advisory-lock rows of the bench (libpq, as the module).
$(BENCH): $(BENCH_OBJ) $(CORE_LIB)
	$(CXX) $(MOD_LINK) $(LDFLAGS) -o $@ $^ -lapr-1 -lpq -lpthread

# libFuzzer (clang) over key extraction and the renderers, the form-body
# scanner, the lease parsers: one binary per tests/fuzz/fuzz_*.cc. The seed
# corpora are tests/fuzz/corpus*, what a fuzzer finds goes to $(BUILD)/fuzz-corpus*.
$(BUILD)/fuzz_%: $(OBJ)/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(CLANGXX) -fsanitize=fuzzer,address,undefined -o $@ $^ -lpthread

fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZERS)
	@mkdir -p $(BUILD)/fuzz-corpus $(BUILD)/fuzz-corpus-form $(BUILD)/fuzz-corpus-lease
	$(BUILD)/fuzz_keys -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus tests/fuzz/corpus
	$(BUILD)/fuzz_form -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus-form tests/fuzz/corpus_form
	$(BUILD)/fuzz_lease -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus-lease tests/fuzz/corpus_lease

install: deps
	@$(MAKE) --no-print-directory $(MODULE)
	install -d $(DESTDIR)$(LIBEXEC)
	install -m 644 $(MODULE) $(DESTDIR)$(LIBEXEC)/mod_pidlock.so
	install -d $(DESTDIR)$(SYSCONF)/mods-available
	install -m 644 conf/pidlock.load conf/pidlock.conf $(DESTDIR)$(SYSCONF)/mods-available/

unit: deps
	@$(MAKE) --no-print-directory $(UNIT) $(UNIT_SAN)

test: deps
	@sh scripts/install-deps-browser.sh
	@sh scripts/install-deps-deb.sh
	@$(MAKE) --no-print-directory -j$(JOBS) test-run

test-run: $(MODULE) $(MODULE_L2) $(BACKEND) $(UNIT) $(UNIT_SAN) $(FUZZERS)
	@sh tests/run_all.sh $(BUILD)

run: deps
	@$(MAKE) --no-print-directory $(MODULE) $(BACKEND)
	@sh scripts/demo.sh $(BUILD)

stop:
	@sh scripts/demo.sh --stop

# BENCH_MODE=full for more rounds (about twenty minutes; quick: under three).
bench: deps
	@sh scripts/install-deps-bench.sh
	@$(MAKE) --no-print-directory $(BENCH) $(MODULE) $(BACKEND) $(NAIVE)
	@sh bench/run.sh $(BUILD) $(BENCH_MODE)

# The Debian package (debhelper + dh_apache2), built from a copy of the tree.
deb: deps
	@sh scripts/install-deps-deb.sh
	@sh scripts/build-deb.sh $(BUILD)

clean:
	rm -rf $(BUILD)

-include $(wildcard $(OBJ)/*/*.d $(OBJ)/*/*/*.d)
