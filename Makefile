# libregopt — GNU make build.
#   make            library (shared + static), examples, tests
#   make check      install missing Debian packages, build, run every test
#   make demo       install missing Debian packages, build, run the main demo
#   make demo-fashion  the same methods on Fashion-MNIST (about 9 min on an idle 2-core machine)
#   make install    PREFIX=/usr/local DESTDIR= (library, header, regopt.pc and the
#                   CMake package regoptConfig.cmake) ; make uninstall ; make clean

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PCDIR      ?= $(LIBDIR)/pkgconfig
CMAKEDIR   ?= $(LIBDIR)/cmake/regopt
DESTDIR    ?=
PKG_CONFIG ?= pkg-config
CXX        ?= c++
CFLAGS     ?= -O2 -g
# Debian's interpreter: python3-numpy and python3-torch live under it.
PYTHON     ?= /usr/bin/python3
# SANITIZE=1: everything built with ASan + UBSan, the first report fatal
# (make check-asan builds so in a copy of the tree, build/asan/).
# GCC warns that instrumented code "may truncate" snprintf output where the
# plain build sees none (check_rdrop*.c's message buffers); truncating a
# message is harmless and snprintf-safe, so that warning is off here only.
ifdef SANITIZE
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
override CFLAGS += $(SAN_FLAGS) -Wno-format-truncation
# Open MPI 4.1 does not free what MPI_Init allocates, and reports it from
# plugins it has unloaded, so no suppression can name it: the MPI run checks
# memory errors but not leaks (check_parallel.c runs the same library paths
# with LeakSanitizer on).
MPI_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
endif

# The version lives in the header only.
hdr_version = $(shell sed -n 's/^\#define REGOPT_VERSION_$(1) \([0-9][0-9]*\)$$/\1/p' include/regopt.h)
MAJOR   := $(call hdr_version,MAJOR)
MINOR   := $(call hdr_version,MINOR)
PATCH   := $(call hdr_version,PATCH)
VERSION := $(MAJOR).$(MINOR).$(PATCH)
SONAME  := libregopt.so.$(MAJOR)
SHLIB   := lib/libregopt.so.$(VERSION)
STLIB   := lib/libregopt.a

WARN     := -Wall -Wextra -Wpedantic -Werror
LIB_CFLAGS := -std=c11 -ffp-contract=off -fPIC -fvisibility=hidden $(WARN) -Iinclude -Isrc
LIB_LIBS := -lm -pthread

# CBLAS (examples, benchmarks): cblas.pc, then openblas.pc, then blas.pc.
BLAS_PC     := $(firstword $(foreach p,cblas openblas blas,$(shell $(PKG_CONFIG) --exists $(p) 2>/dev/null && echo $(p))))
BLAS_CFLAGS := $(if $(BLAS_PC),$(shell $(PKG_CONFIG) --cflags $(BLAS_PC)))
BLAS_LIBS   := $(if $(BLAS_PC),$(shell $(PKG_CONFIG) --libs $(BLAS_PC)),-lcblas)
CHECK_CFLAGS := $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell $(PKG_CONFIG) --libs check 2>/dev/null)

# Open MPI (the data-parallel example and its test) where mpicc is found.
MPICC    ?= mpicc
HAVE_MPI := $(shell command -v $(MPICC) >/dev/null 2>&1 && echo yes)
MPI_EXAMPLES := $(if $(HAVE_MPI),examples/mpi_sam)

# LibTorch (Debian's libtorch-dev) for the C++ adapter's example
# (include/regopt_torch.hpp, examples/libtorch_sam.cpp), where installed. Not
# under the sanitizers: LibTorch itself is not instrumented.
TORCH_INC    ?= /usr/include/torch/csrc/api/include
TORCH_LIBS   ?= -ltorch -ltorch_cpu -lc10
HAVE_TORCH   := $(if $(SANITIZE),,$(shell test -f $(TORCH_INC)/torch/torch.h && echo yes))
TORCH_EXAMPLES := $(if $(HAVE_TORCH),examples/libtorch_sam)

# src/ is laid out by role (src/README.md): core, model, optim, reg,
# trainer, checkpoint; every file includes by its path from src/.
SRC_DIRS := core model optim reg trainer checkpoint
SRC  := $(foreach d,$(SRC_DIRS),$(wildcard src/$(d)/*.c))
HDR  := $(foreach d,$(SRC_DIRS),$(wildcard src/$(d)/*.h))
OBJ  := $(patsubst src/%.c,build/obj/%.o,$(SRC))
TEST_SRC := $(filter-out test/header_c99.c,$(wildcard test/check_*.c))
EXAMPLES := examples/mlp examples/minimal examples/charlm examples/textcls examples/demo \
            examples/user_rdrop examples/js_rdrop examples/demo_fashion examples/backend
APP_CFLAGS := -std=c11 $(WARN) -Iinclude
RPATH := -Wl,-rpath,$(abspath lib)

.PHONY: all lib check demo deps run-check run-demo install uninstall clean check-tsan deb deb-test \
        demo-fashion run-demo-fashion
all: lib $(EXAMPLES) $(MPI_EXAMPLES) $(TORCH_EXAMPLES) test/check_regopt

lib: $(SHLIB) lib/$(SONAME) lib/libregopt.so $(STLIB) pkgconfig/regopt.pc

build/obj/%.o: src/%.c $(HDR) include/regopt.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@

$(SHLIB): $(OBJ) src/regopt.map
	@mkdir -p lib
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/regopt.map \
	    -Wl,--no-undefined $(LDFLAGS) -o $@ $(OBJ) $(LIB_LIBS)

lib/$(SONAME): $(SHLIB)
	ln -sf $(notdir $(SHLIB)) $@
lib/libregopt.so: lib/$(SONAME)
	ln -sf $(SONAME) $@

$(STLIB): $(OBJ)
	@mkdir -p lib
	rm -f $@
	$(AR) rcs $@ $(OBJ)

pkgconfig/regopt.pc: pkgconfig/regopt.pc.in include/regopt.h
	sed -e 's|@prefix@|$(PREFIX)|' -e 's|@libdir@|$(LIBDIR)|' \
	    -e 's|@includedir@|$(INCLUDEDIR)|' -e 's|@version@|$(VERSION)|' $< > $@

# Examples link the shared library, so the exported ABI is what they use.
examples/%: examples/%.c examples/digits_mlp.h examples/half_host.h examples/cli.h lib
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(BLAS_CFLAGS) $< -o $@ \
	    -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm

examples/demo: examples/demo_chart.h

# Fashion-MNIST on the benchmark's host network (bench/host_mlp.c).
examples/demo_fashion: examples/demo_fashion.c examples/fashion_data.h examples/fashion_protocol.h \
    examples/fashion_run.h examples/fashion_tune.h examples/fashion_report.h examples/curves_chart.h \
    examples/demo_methods.h examples/cli.h bench/host_mlp.c bench/host_mlp.h lib
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(BLAS_CFLAGS) examples/demo_fashion.c \
	    bench/host_mlp.c -o $@ -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm

examples/mpi_sam: examples/mpi_sam.c examples/digits_mlp.h lib
	$(MPICC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(BLAS_CFLAGS) $< -o $@ \
	    -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm

# C++17, LibTorch's headers as system headers (their warnings are not ours);
# the library an order-only prerequisite: relinking a shared library's user is
# not needed, and this compile takes minutes.
examples/libtorch_sam: examples/libtorch_sam.cpp include/regopt_torch.hpp include/regopt.h | lib
	$(CXX) -std=c++17 $(CPPFLAGS) $(CFLAGS) $(WARN) -Iinclude -isystem $(TORCH_INC) $< -o $@ \
	    -Llib -lregopt $(RPATH) $(TORCH_LIBS)

# The Check runner links the static archive, so tests may also reach
# internal functions (the Philox known-answer test does).
test/check_regopt: $(TEST_SRC) $(wildcard test/*.h) $(STLIB)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(CHECK_CFLAGS) -Isrc $(TEST_SRC) -o $@ \
	    $(STLIB) $(CHECK_LIBS) -lm -pthread

# The header alone, as strict C99 and as C++, linked to the shared library.
test/header_c99: test/header_c99.c include/regopt.h lib
	$(CC) -std=c99 -pedantic-errors $(WARN) $(SAN_FLAGS) -Iinclude $< -o $@ -Llib -lregopt $(RPATH)
test/header_cxx: test/header_cxx.cpp include/regopt.h lib
	$(CXX) -std=c++11 -pedantic-errors $(WARN) $(SAN_FLAGS) -Iinclude $< -o $@ -Llib -lregopt $(RPATH)
# A C++ host whose callback throws through the library (regopt_trainer_recover).
test/abandon_cxx: test/abandon_cxx.cpp include/regopt.h lib
	$(CXX) -std=c++11 $(WARN) $(SAN_FLAGS) -Iinclude $< -o $@ -Llib -lregopt $(RPATH)

deps:
	@sh scripts/install-deps.sh

run-check: all test/header_c99 test/header_cxx test/abandon_cxx
	$(PYTHON) scripts/layer-check.py build/obj
	./test/header_c99
	./test/header_cxx
	./test/abandon_cxx
	sh test/check_symbols.sh $(SHLIB) $(SONAME)
	./examples/minimal
	./examples/mlp --data data/digits.csv --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --method sam --bn --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --method sam --bn --epochs 10 --probe --quiet
	./examples/mlp --data data/digits.csv --method asam --m-rows 16 --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --rdrop 1 --bn --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --precision bf16 --method sam --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --precision fp16 --smart 1 --bregman 1 --bn --epochs 20 --min-test-acc 0.93 --quiet
	./examples/charlm --rdrop 1 --epochs 4 --max-bits 4.5
	./examples/textcls --smart 1 --bregman 1 --epochs 5 --min-acc 0.45
	./examples/textcls --teacher-kl 1 --epochs 5 --min-acc 0.45
	./examples/textcls --adv freelb --epochs 5 --min-acc 0.45
	./examples/textcls --adv vat --labelled 0.1 --epochs 5 --min-acc 0.33
	./examples/user_rdrop --check
	./examples/backend --data data/digits.csv --check
ifdef HAVE_TORCH
	OMP_NUM_THREADS=1 ./examples/libtorch_sam --check
	OMP_NUM_THREADS=1 ./examples/libtorch_sam --epochs 3 --min-test-acc 0.9
else
	@echo "run-check: no LibTorch ($(TORCH_INC)/torch/torch.h): examples/libtorch_sam skipped"
endif
	./examples/user_rdrop --steps 100 --max-rel 1e-6
	./examples/js_rdrop --check
	./examples/js_rdrop --epochs 6 --min-test-acc 0.9
	@mkdir -p build
	OPENBLAS_NUM_THREADS=1 ./examples/demo --seeds 1 --epochs 6 --quiet \
	    --csv build/demo_test.csv --svg build/demo_test.svg --svg2 build/demo_test_sam.svg \
	    --svg3 build/demo_test_more.svg \
	    --flat-csv build/demo_test_flatness.csv --flat-svg build/demo_test_flatness.svg
	@grep -q '</svg>' build/demo_test.svg && grep -q '</svg>' build/demo_test_sam.svg && \
	    test $$(wc -l < build/demo_test.csv) -eq 7
	@# one flatness row per method (1 seed) plus the header = the curves' columns
	@grep -q '</svg>' build/demo_test_flatness.svg && \
	    test $$(wc -l < build/demo_test_flatness.csv) -eq \
	        $$(head -1 build/demo_test.csv | tr ',' '\n' | wc -l)
	./examples/mlp --data data/digits.csv --smart 1 --bregman 1 --bn --min-test-acc 0.95 --quiet
	@# demo-fashion reduced: 300 images, one epoch, every method, both protocols;
	@# exit 77 when dataset-fashion-mnist is not installed (make deps installs it)
	@echo "./examples/demo_fashion --clean-train 300 --noisy-train 300 --clean-epochs 1 ..."
	@rc=0; OPENBLAS_NUM_THREADS=2 ./examples/demo_fashion --clean-train 300 --noisy-train 300 \
	    --clean-epochs 1 --noisy-epochs 1 --test 500 --quiet --csv build/demo_fashion_test.csv \
	    --svg build/demo_fashion_test.svg > build/demo_fashion_test.log || rc=$$?; \
	if [ $$rc -eq 77 ]; then cat build/demo_fashion_test.log; \
	elif [ $$rc -ne 0 ]; then cat build/demo_fashion_test.log; exit 1; \
	else grep -q '</svg>' build/demo_fashion_test.svg && \
	    test $$(grep -c '^RESULT' build/demo_fashion_test.log) -eq 20 && \
	    test $$(wc -l < build/demo_fashion_test.csv) -eq 21 && \
	    grep '^wall time' build/demo_fashion_test.log; fi
	./test/check_regopt
	sh test/check_resume.sh examples/mlp data/digits.csv
	CC='$(CC)' sh test/check_dispatch.sh build/dispatch
ifndef SANITIZE
	REGOPT_LIBRARY=$(CURDIR)/lib/$(SONAME) $(PYTHON) -m unittest discover -s python/tests
	@if $(PYTHON) -c 'import torch' 2>/dev/null; then \
	    echo REGOPT_LIBRARY=lib/$(SONAME) $(PYTHON) examples/torch_finetune.py --min-test-acc 0.9; \
	    REGOPT_LIBRARY=$(CURDIR)/lib/$(SONAME) $(PYTHON) examples/torch_finetune.py --min-test-acc 0.9 > build/torch_finetune.log || { cat build/torch_finetune.log; exit 1; }; tail -1 build/torch_finetune.log; \
	    echo REGOPT_LIBRARY=lib/$(SONAME) $(PYTHON) examples/torch_loop.py --min-test-acc 0.9; \
	    REGOPT_LIBRARY=$(CURDIR)/lib/$(SONAME) $(PYTHON) examples/torch_loop.py --min-test-acc 0.9 > build/torch_loop.log || { cat build/torch_loop.log; exit 1; }; tail -1 build/torch_loop.log; \
	else echo 'check: no python3-torch, torch example skipped'; fi
else
	@echo 'check: SANITIZE: Python tests skipped (python3 would have to load the ASan runtime first)'
endif
	$(if $(HAVE_MPI),$(MPI_ENV) sh test/check_mpi.sh examples/mpi_sam data/digits.csv,@echo "check: no mpicc, MPI test skipped")

check: deps
	@$(MAKE) --no-print-directory run-check

# One BLAS thread: the demo's matrices are small, threads only add overhead.
run-demo: all
	OPENBLAS_NUM_THREADS=1 ./examples/demo --data data/digits.csv
	@echo
	@echo "At benchmark scale: make demo-fashion (Fashion-MNIST, 60,000 images clean and"
	@echo "10,000 with 40 % noisy labels, the same methods; README, \"At benchmark scale\")"

# Both cores: two OpenBLAS threads and trainer.threads 2 (--threads).
run-demo-fashion: all
	OPENBLAS_NUM_THREADS=2 ./examples/demo_fashion --threads 2

demo-fashion: deps
	@$(MAKE) --no-print-directory run-demo-fashion

demo: deps
	@$(MAKE) --no-print-directory run-demo

# regopt.pc is written for this install's PREFIX, not copied: make cannot
# see a changed variable, so pkgconfig/regopt.pc keeps the first build's.
install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PCDIR)
	install -m 644 include/regopt.h $(DESTDIR)$(INCLUDEDIR)/regopt.h
	install -m 644 include/regopt_torch.hpp $(DESTDIR)$(INCLUDEDIR)/regopt_torch.hpp
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf $(notdir $(SHLIB)) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libregopt.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	sed -e 's|@prefix@|$(PREFIX)|' -e 's|@libdir@|$(LIBDIR)|' \
	    -e 's|@includedir@|$(INCLUDEDIR)|' -e 's|@version@|$(VERSION)|' \
	    pkgconfig/regopt.pc.in > $(DESTDIR)$(PCDIR)/regopt.pc
	chmod 644 $(DESTDIR)$(PCDIR)/regopt.pc
	install -d $(DESTDIR)$(CMAKEDIR)
	for f in regoptConfig regoptConfigVersion; do \
	    sed -e 's|@version@|$(VERSION)|g' -e 's|@major@|$(MAJOR)|g' \
	        -e "s|@prefix_rel@|$$(realpath -m --relative-to=$(CMAKEDIR) $(PREFIX))|" \
	        -e "s|@libdir_rel@|$$(realpath -m --relative-to=$(PREFIX) $(LIBDIR))|" \
	        -e "s|@includedir_rel@|$$(realpath -m --relative-to=$(PREFIX) $(INCLUDEDIR))|" \
	        cmake/$$f.cmake.in > $(DESTDIR)$(CMAKEDIR)/$$f.cmake && \
	    chmod 644 $(DESTDIR)$(CMAKEDIR)/$$f.cmake || exit 1; \
	done

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/regopt.h $(DESTDIR)$(INCLUDEDIR)/regopt_torch.hpp \
	    $(DESTDIR)$(LIBDIR)/$(notdir $(SHLIB)) \
	    $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libregopt.so \
	    $(DESTDIR)$(LIBDIR)/libregopt.a $(DESTDIR)$(PCDIR)/regopt.pc \
	    $(DESTDIR)$(CMAKEDIR)/regoptConfig.cmake $(DESTDIR)$(CMAKEDIR)/regoptConfigVersion.cmake
	rmdir $(DESTDIR)$(CMAKEDIR) $(DESTDIR)$(LIBDIR)/cmake 2>/dev/null || true

clean:
	rm -rf build lib pkgconfig/regopt.pc $(EXAMPLES) examples/mpi_sam examples/libtorch_sam \
	    test/check_regopt \
	    test/header_c99 test/header_cxx test/abandon_cxx

# ---- benchmarks (bench/, see bench/bench.c) -------------------------------
# Not part of `make check`: check only adds bench-smoke, a run of a few
# steps of the small model (about a second), so the program cannot rot.
#   make bench                      every benchmark, then PyTorch vs libregopt
#   make bench BENCH_THREADS=2      BLAS threads, the same on both sides
# Debian 12's OpenBLAS (0.3.21) does not know recent CPUs and falls back to
# older kernels: some Intel CPUs run as a Prescott (SGEMM five times slower),
# AMD Zen 5 as a Haswell (AVX2, half the rate). So on a CPU with the AVX-512
# subsets of Skylake-X `make bench` asks for those kernels, unless
# OPENBLAS_CORETYPE is already set or BENCH_CORETYPE= (empty) is given. The
# setting reaches PyTorch too, which links the same OpenBLAS.
BENCH_THREADS ?= 1
BENCH_ARGS    ?=
BENCH_CORETYPE ?= $(or $(OPENBLAS_CORETYPE),$(shell for f in avx512f avx512bw avx512dq \
    avx512vl avx512cd; do grep -qw $$f /proc/cpuinfo 2>/dev/null || exit 0; done; echo SkylakeX))
BENCH_ENV := OPENBLAS_NUM_THREADS=$(BENCH_THREADS) \
    $(if $(BENCH_CORETYPE),OPENBLAS_CORETYPE=$(BENCH_CORETYPE))
.PHONY: bench bench-smoke bench-clean
bench/bench: bench/bench.c bench/methods.c bench/rates.c bench/traffic.c bench/bench.h bench/host_mlp.c bench/host_mlp.h \
    examples/cli.h lib
	$(CC) $(CPPFLAGS) $(CFLAGS) -std=c99 $(WARN) -Iinclude $(BLAS_CFLAGS) bench/bench.c \
	    bench/methods.c bench/rates.c bench/traffic.c bench/host_mlp.c -o $@ -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm -pthread

bench: bench/bench
	$(BENCH_ENV) ./bench/bench $(BENCH_ARGS)
	@if $(PYTHON) -c 'import torch' 2>/dev/null; then \
	    echo "$(BENCH_ENV) $(PYTHON) bench/vs_torch.py --threads $(BENCH_THREADS)"; \
	    $(BENCH_ENV) $(PYTHON) bench/vs_torch.py --threads $(BENCH_THREADS); \
	else echo 'bench: no python3-torch, PyTorch comparison skipped'; fi
ifdef HAVE_TORCH
	@$(MAKE) --no-print-directory examples/libtorch_sam
	OMP_NUM_THREADS=$(BENCH_THREADS) ./examples/libtorch_sam --bench
endif

bench-smoke: bench/bench
	@mkdir -p build
	OPENBLAS_NUM_THREADS=1 ./bench/bench --smoke > build/bench_smoke.log || \
	    { cat build/bench_smoke.log; exit 1; }

bench-clean:
	rm -f bench/bench

run-check: bench-smoke
clean: bench-clean

# ---- release guards: ABI, single file, install, sanitizers, fuzzing ------
#   make abi-check           the ABI against the baseline in abi/ (abidiff)
#   make abi-dump            after a public API change: rewrite abi/, commit it
#                            with a CHANGELOG "ABI" note
#   make amalgamation        dist/regopt.c + dist/regopt.h, the single-file build
#   make check-amalgamation  Check suites and examples built from dist/ only
#   make install-test        install into a temporary prefix, build consumers
#                            (pkg-config shared/static, meson, C++), uninstall
#   make check-asan          run-check and the fuzz corpus under ASan + UBSan,
#                            in a copy of the tree (build/asan/)
#   make check-tsan          the thread, pool and guard suites under ThreadSanitizer
#   make check-valgrind      the C examples under memcheck (the Check suite runs
#                            under ASan + LeakSanitizer in check-asan)
#   make fuzz                libFuzzer binaries (clang-14) in build/fuzz/
#   make fuzz-replay         each harness replays fuzz/corpus/<name>/ (no clang)
# A harness is one file, fuzz/fuzz_<name>.c: these rules find it.
FUZZ_CC    ?= clang-14
FUZZ_NAMES := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_FLAGS := -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
# Leaks are errors; memcheck's "still reachable" (OpenBLAS's thread pool,
# the dynamic loader) is not a leak.
VALGRIND   := valgrind -q --error-exitcode=1 --leak-check=full \
              --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
.PHONY: abi-check abi-dump amalgamation check-amalgamation install-test check-asan \
        check-valgrind fuzz fuzz-replay

abi-check:
	sh scripts/abi-check.sh
abi-dump:
	sh scripts/abi-check.sh --update

amalgamation:
	$(PYTHON) scripts/amalgamate.py dist
check-amalgamation:
	CC="$(CC)" PYTHON="$(PYTHON)" sh scripts/amalgamate-check.sh

install-test:
	sh test/install_test.sh

# Debian packages (libregopt1, libregopt-dev, python3-regopt) into build/deb,
# built from a copy of the tree, checked by lintian; deb-test installs them.
deb:
	sh scripts/make-deb.sh build/deb
deb-test: deb
	sh test/deb_test.sh build/deb

# A copy, so the sanitized objects never mix with the normal build's.
check-asan: deps
	rm -rf build/asan
	mkdir -p build/asan
	tar -cf - --exclude=./.git --exclude='./build*' --exclude=./lib --exclude=./dist . | \
	    tar -xf - -C build/asan
	$(MAKE) -C build/asan --no-print-directory clean
	$(MAKE) -C build/asan --no-print-directory SANITIZE=1 all test/header_c99 test/header_cxx test/abandon_cxx
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(MAKE) -C build/asan --no-print-directory SANITIZE=1 run-check
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(MAKE) -C build/asan --no-print-directory SANITIZE=1 fuzz-replay

# ThreadSanitizer: the suites that use threads (trainers on several threads,
# the worker pool, fork with workers running), one binary from the sources.
# die_after_fork=0: the fork test's child starts threads of its own again.
TSAN_SUITES := threads pool guard
check-tsan: deps
	@mkdir -p build/tsan
	$(CC) -std=c11 -O1 -g -fsanitize=thread -fno-omit-frame-pointer -ffp-contract=off $(WARN) \
	    -Wno-format-truncation -Iinclude -Isrc $(CHECK_CFLAGS) $(TEST_SRC) $(SRC) \
	    -o build/tsan/check_regopt $(CHECK_LIBS) -lm -pthread
	for s in $(TSAN_SUITES); do \
	    CK_RUN_SUITE=$$s TSAN_OPTIONS="halt_on_error=1 die_after_fork=0" \
	        ./build/tsan/check_regopt || exit 1; \
	done

# Small runs: memcheck is some 30 times slower, and every code path of an
# example is taken in its first epoch (charlm on the first lines of its text).
check-valgrind: all
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/minimal
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/mlp --data data/digits.csv --epochs 1 \
	    --method sam --bn --rdrop 1 --quiet
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/mlp --data data/digits.csv --epochs 1 \
	    --method asam --m-rows 16 --smart 1 --bregman 1 --quiet
	@mkdir -p build
	head -n 80 /usr/share/common-licenses/GPL-3 > build/charlm_vg.txt
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/charlm --text build/charlm_vg.txt --rdrop 1 \
	    --epochs 1 --hidden 32
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/textcls --smart 1 --bregman 1 --epochs 1
	OPENBLAS_NUM_THREADS=1 $(VALGRIND) ./examples/demo --seeds 1 --epochs 1 --quiet \
	    --csv build/demo_vg.csv --svg build/demo_vg.svg --svg2 build/demo_vg_sam.svg \
	    --svg3 build/demo_vg_more.svg \
	    --flat-csv build/demo_vg_flatness.csv --flat-svg build/demo_vg_flatness.svg

fuzz: $(FUZZ_NAMES:%=build/fuzz/fuzz_%)
build/fuzz/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(SRC) $(HDR) include/regopt.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -Iinclude -Isrc $< $(SRC) -lm -pthread -o $@

build/fuzz/replay_%: fuzz/fuzz_%.c fuzz/replay_main.c fuzz/fuzz.h $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $< fuzz/replay_main.c -o $@ $(STLIB) -lm -pthread
fuzz-replay: $(FUZZ_NAMES:%=build/fuzz/replay_%)
	@for n in $(FUZZ_NAMES); do \
	    echo "build/fuzz/replay_$$n fuzz/corpus/$$n"; \
	    ./build/fuzz/replay_$$n fuzz/corpus/$$n || exit 1; \
	done
