# relayd -- reliable on-disk spooling relay to BigQuery.
#
#   make            build relayd and relayctl into build/
#   make deps       install the Debian packages (root or sudo)
#   make test       the whole test suite (unit, integration, ASan+UBSan, short fuzz)
#   make asan       build with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/
#   make bench      benchmarks that print figures (see docs/benchmarks.md); builds
#                   build/fastsink, the fast BigQuery sink the delivery figures use
#   make profile    instructions per delivered row per delivery path (callgrind)
#   make fuzz       run the fuzz targets for FUZZ_SECONDS each (default 300)
#   make run        install deps, build, and start relayd with a local config
#   make valgrind   unit tests under valgrind --leak-check=full
#   make deb        build/relayd_<version>_<arch>.deb (packaging/, tools/mkdeb.sh)

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
PY      := /usr/bin/python3

PKG_CONFIG ?= pkg-config
PKGS     := lmdb jansson zlib libdeflate libisal libcurl openssl libprotobuf-c grpc libsystemd libmicrohttpd msgpack
# Nothing probes the machine when this file is parsed: the flags are computed
# the first time a recipe uses them (after `deps` has installed the packages),
# then kept. The targets that install packages (test, run, bench, deb) build in
# a fresh $(MAKE) after `deps`, so a clean machine works on the first try.
PKG_CFLAGS = $(eval PKG_CFLAGS := $$(shell $(PKG_CONFIG) --cflags $(PKGS)))$(PKG_CFLAGS)
PKG_LIBS   = $(eval PKG_LIBS := $$(shell $(PKG_CONFIG) --libs $(PKGS)))$(PKG_LIBS)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wformat=2 -Wno-unused-parameter -Wno-format-truncation
OPT     ?= -O2
# Hardening for the release build (the sanitizer builds bring their own checks)
HARDEN  ?= -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection
HARDEN_LD ?= -Wl,-z,relro,-z,now
# CFLAGS, CPPFLAGS and LDFLAGS from the environment are honoured (dpkg-buildflags
# for the .deb); ours come after theirs.
CFLAGS  ?=
CPPFLAGS ?=
CFLAGS  += $(CPPFLAGS) -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) $(HARDEN) -Iinclude -I$(BUILD)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS += $(HARDEN_LD) $(EXTRA_LDFLAGS)
LIBS     = $(PKG_LIBS) -lpthread

MAINS   := src/relayd.c src/relayctl.c
LIBSRC  := $(filter-out $(MAINS),$(wildcard src/*.c))
PROTOS  := $(wildcard proto/*.proto)
GENSRC  := $(PROTOS:proto/%.proto=$(BUILD)/gen/%.pb-c.c)
GENHDR  := $(GENSRC:.c=.h)
LIBOBJ  := $(LIBSRC:src/%.c=$(BUILD)/obj/%.o) $(GENSRC:$(BUILD)/gen/%.c=$(BUILD)/obj/gen-%.o)
UNITSRC := $(wildcard tests/unit/test_*.c)
UNITBIN := $(UNITSRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOLSRC := $(wildcard tests/tools/*.c)
TOOLBIN := $(TOOLSRC:tests/tools/%.c=$(BUILD)/tools/%)
BENCHSRC:= $(wildcard tests/bench/*.c)
BENCHBIN:= $(BENCHSRC:tests/bench/%.c=$(BUILD)/bench/%)
# librelayclient (src/client/, include/relayclient.h): libc only, for producers
LIBDIR  ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
RELAY_VERSION_STR = $(shell sed -n 's/^\#define[[:space:]]*RELAY_VERSION[[:space:]]*"\([^"]*\)".*/\1/p' include/version.h)
CLIENTLIBS := $(BUILD)/librelayclient.a $(BUILD)/librelayclient.so.1 $(BUILD)/librelayclient.so \
              $(BUILD)/relayclient.pc

.PHONY: all deps test unit asan bench profile fuzz fuzz-smoke run clean install valgrind check-deps deb \
        fresh-check parse-check test-suite systemd-check
.SECONDARY:

all: $(BUILD)/relayd $(BUILD)/relayctl $(CLIENTLIBS) $(BUILD)/fastsink

deps:
	@./tools/install-deps.sh

# Fails with the list of missing packages (and how to install them) instead of
# a compiler or linker error when `make` runs before `make deps`.
check-deps $(BUILD)/.deps-ok:
	@./tools/install-deps.sh --check
	@mkdir -p $(BUILD) && touch $(BUILD)/.deps-ok

# Parses this Makefile and does nothing: tests/run.py runs it with a PATH whose
# pkg-config, protoc-c, apt-get and dpkg-query only log, to prove that nothing
# probes the machine at parse time.
parse-check:
	@:

$(BUILD)/obj/%.o: src/%.c $(wildcard include/*.h) $(GENHDR) | $(BUILD)/obj $(BUILD)/.deps-ok
	$(CC) $(CFLAGS) -c -o $@ $<

# protobuf-c code generated from proto/ (the Storage Write API messages)
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto $(PROTOS) | $(BUILD)/.deps-ok
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

$(BUILD)/obj/gen-%.o: $(BUILD)/gen/%.c $(GENHDR) | $(BUILD)/obj
	$(CC) -std=c11 -g $(OPT) -Wall -Werror -I$(BUILD)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS) -c -o $@ $<

# tools/fastsink: the fast BigQuery sink for benchmarks (docs/emulator.md); its
# own program, linked with the generated protobuf-c messages only
SINKSRC := $(wildcard tools/fastsink/*.c)
SINKOBJ := $(SINKSRC:tools/fastsink/%.c=$(BUILD)/obj/fastsink/%.o)
$(BUILD)/obj/fastsink/%.o: tools/fastsink/%.c tools/fastsink/fastsink.h $(GENHDR) | $(BUILD)/.deps-ok
	@mkdir -p $(BUILD)/obj/fastsink
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/fastsink: $(SINKOBJ) $(GENSRC:$(BUILD)/gen/%.c=$(BUILD)/obj/gen-%.o)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/librelay.a: $(LIBOBJ)
	ar rcs $@ $^

$(BUILD)/relayd: $(BUILD)/obj/relayd.o $(BUILD)/librelay.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/relayctl: $(BUILD)/obj/relayctl.o $(BUILD)/librelay.a $(BUILD)/librelayclient.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/obj/client/%.o: src/client/%.c include/relayclient.h
	@mkdir -p $(BUILD)/obj/client
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj/client/%.pic.o: src/client/%.c include/relayclient.h
	@mkdir -p $(BUILD)/obj/client
	$(CC) $(CFLAGS) -fPIC -c -o $@ $<

$(BUILD)/librelayclient.a: $(BUILD)/obj/client/relayclient.o
	ar rcs $@ $^

$(BUILD)/librelayclient.so.1: $(BUILD)/obj/client/relayclient.pic.o
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-soname,librelayclient.so.1 -o $@ $^

$(BUILD)/librelayclient.so: $(BUILD)/librelayclient.so.1
	ln -sf librelayclient.so.1 $@

# pkg-config file; `make install` writes it again for its own PREFIX/LIBDIR
$(BUILD)/relayclient.pc: src/client/relayclient.pc.in include/version.h
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(RELAY_VERSION_STR)|' $< > $@

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/librelay.a | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelay.a $(LIBS) -lcmocka

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/librelay.a | $(BUILD)/tools
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelay.a $(LIBS)

# the client's test programs link librelayclient alone (libc only)
$(BUILD)/tools/client_%: tests/tools/client_%.c $(BUILD)/librelayclient.a | $(BUILD)/tools
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelayclient.a

# the documented example (docs/client.md), built as a user would, against the header alone
$(BUILD)/examples/client_example: docs/examples/client_example.c $(BUILD)/librelayclient.a
	@mkdir -p $(BUILD)/examples
	$(CC) -std=c11 -g $(OPT) -Wall -Wextra -Werror -Iinclude $(EXTRA_CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelayclient.a

$(BUILD)/bench/bench_client: tests/bench/bench_client.c $(BUILD)/librelayclient.a | $(BUILD)/bench
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelayclient.a

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/librelay.a | $(BUILD)/bench
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/librelay.a $(LIBS)

$(BUILD)/obj $(BUILD)/tests $(BUILD)/bench $(BUILD)/tools:
	mkdir -p $@

$(BUILD)/tools/faultinject.so: tests/preload/faultinject.c | $(BUILD)/tools
	$(CC) -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -shared -o $@ $< -ldl

unit: all $(UNITBIN) $(TOOLBIN) $(BUILD)/tools/faultinject.so $(BUILD)/examples/client_example \
      $(BUILD)/bench/bench_fill

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 HARDEN= \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" unit

# The fuzz targets are built with clang's libFuzzer; the library sources are
# compiled once with the fuzzing instrumentation into build-fuzz/obj.
FUZZSRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZBIN := $(FUZZSRC:tests/fuzz/%.c=build-fuzz/%)
FUZZOBJ := $(LIBSRC:src/%.c=build-fuzz/obj/%.o)
FUZZFLAGS  = -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Ibuild-fuzz/gen $(PKG_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined
FUZZGEN := $(PROTOS:proto/%.proto=build-fuzz/gen/%.pb-c.c)
build-fuzz/gen/%.pb-c.c build-fuzz/gen/%.pb-c.h: proto/%.proto $(PROTOS)
	@mkdir -p build-fuzz/gen
	protoc-c --c_out=build-fuzz/gen -Iproto $<
build-fuzz/obj/%.o: src/%.c $(wildcard include/*.h) $(FUZZGEN)
	@mkdir -p build-fuzz/obj
	clang $(FUZZFLAGS) -c -o $@ $<
# librelayclient's target links the client alone (libc only)
build-fuzz/obj/client/relayclient.o: src/client/relayclient.c include/relayclient.h
	@mkdir -p build-fuzz/obj/client
	clang $(FUZZFLAGS) -c -o $@ $<
build-fuzz/fuzz_client: tests/fuzz/fuzz_client.c build-fuzz/obj/client/relayclient.o
	clang $(FUZZFLAGS) -fsanitize=fuzzer -o $@ $^
build-fuzz/%: tests/fuzz/%.c $(FUZZOBJ) $(FUZZGEN)
	clang $(FUZZFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZOBJ) $(FUZZGEN) $(PKG_LIBS) -lpthread

FUZZ_SECONDS ?= 300
fuzz: $(FUZZBIN)
	@for f in $(FUZZBIN); do n=$$(basename $$f); mkdir -p build-fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus-$$n tests/fuzz/corpus/$${n#fuzz_} || exit 1; done

fuzz-smoke: $(FUZZBIN)

# The README's commands. Each installs the packages first, then builds in a new
# make (whose recipes see the freshly installed pkg-config files).
test: deps
	@$(MAKE) --no-print-directory test-suite

test-suite: all unit asan fuzz-smoke
	$(PY) tests/run.py

valgrind: unit
	@for t in $(UNITBIN); do valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --error-exitcode=1 $$t >/dev/null || { echo "valgrind: $$t failed"; exit 1; }; done; echo "valgrind: clean"

bench: deps
	@$(MAKE) --no-print-directory all $(BENCHBIN)
	$(PY) tests/bench/run.py

# Marginal instructions per delivered row on each delivery path (callgrind;
# tests/bench/profile.py, PROFILE_BUILD=dir for another build's relayd).
profile: deps
	@$(MAKE) --no-print-directory all $(BENCHBIN)
	$(PY) tests/bench/profile.py --annotate

run: deps
	@$(MAKE) --no-print-directory all
	@./tools/run-local.sh

# The .deb is built the Debian way: CFLAGS/CPPFLAGS/LDFLAGS from dpkg-buildflags
# (with our hardening and warnings added), in its own build directory.
deb: deps
	@export DEB_BUILD_MAINT_OPTIONS="$${DEB_BUILD_MAINT_OPTIONS:-hardening=+all}"; \
	  CFLAGS="$$(dpkg-buildflags --get CFLAGS)" CPPFLAGS="$$(dpkg-buildflags --get CPPFLAGS)" \
	  LDFLAGS="$$(dpkg-buildflags --get LDFLAGS)" \
	  $(MAKE) --no-print-directory BUILD=build-deb HARDEN= HARDEN_LD= all
	./tools/mkdeb.sh build-deb build

# A clean machine, as closely as this one allows: removes the project's -dev
# packages, clones HEAD afresh and runs the README's commands there
# (docs/fresh-check.md). FRESH=run|test|both, FRESH_REV=<commit> (default HEAD).
FRESH ?= both
FRESH_REV ?= HEAD
fresh-check:
	./tools/fresh-check.sh $(FRESH) $(FRESH_REV)

# The packaged unit under a real systemd as PID 1 (systemd-nspawn --boot of a
# fresh Debian 12 root with the .deb installed): notify, socket access, reload,
# journal, stop. Needs root and apt (docs/packaging.md).
systemd-check: deb
	./tools/systemd-check.sh build/relayd_$$(sed -n 's/^#define[[:space:]]*RELAY_VERSION[[:space:]]*"\([^"]*\)".*/\1/p' include/version.h)_$$(dpkg --print-architecture).deb

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/sbin
	install -m 0755 $(BUILD)/relayd $(DESTDIR)$(PREFIX)/sbin/relayd
	install -m 0755 $(BUILD)/relayctl $(DESTDIR)$(PREFIX)/bin/relayctl
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 docs/man/relayctl.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 docs/man/relayd.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 0644 docs/man/relayd.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man3
	install -m 0644 include/relayclient.h $(DESTDIR)$(INCLUDEDIR)/relayclient.h
	install -m 0644 $(BUILD)/librelayclient.a $(DESTDIR)$(LIBDIR)/librelayclient.a
	install -m 0755 $(BUILD)/librelayclient.so.1 $(DESTDIR)$(LIBDIR)/librelayclient.so.1
	ln -sf librelayclient.so.1 $(DESTDIR)$(LIBDIR)/librelayclient.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(RELAY_VERSION_STR)|' src/client/relayclient.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/relayclient.pc
	install -m 0644 docs/man/relayclient.3 $(DESTDIR)$(PREFIX)/share/man/man3/

clean:
	rm -rf build build-asan build-fuzz build-deb
