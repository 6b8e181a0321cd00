# libregopt — GNU make build.
#   make            library (shared + static), examples, tests
#   make check      install missing Debian packages, build, run every test
#   make demo       install missing Debian packages, build, run the main demo
#   make install    PREFIX=/usr/local DESTDIR= ; make uninstall ; make clean

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PCDIR      ?= $(LIBDIR)/pkgconfig
DESTDIR    ?=
PKG_CONFIG ?= pkg-config
CXX        ?= c++
CFLAGS     ?= -O2 -g
# Debian's interpreter: python3-numpy and python3-torch live under it.
PYTHON     ?= /usr/bin/python3

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
LIB_CFLAGS := -std=c11 -fPIC -fvisibility=hidden $(WARN) -Iinclude
LIB_LIBS := -lm

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

SRC  := $(wildcard src/*.c)
OBJ  := $(patsubst src/%.c,build/obj/%.o,$(SRC))
TEST_SRC := $(filter-out test/header_c99.c,$(wildcard test/check_*.c))
EXAMPLES := examples/mlp examples/minimal examples/charlm examples/textcls examples/demo
APP_CFLAGS := -std=c11 $(WARN) -Iinclude
RPATH := -Wl,-rpath,$(abspath lib)

.PHONY: all lib check demo deps run-check run-demo install uninstall clean
all: lib $(EXAMPLES) $(MPI_EXAMPLES) test/check_regopt

lib: $(SHLIB) lib/$(SONAME) lib/libregopt.so $(STLIB) pkgconfig/regopt.pc

build/obj/%.o: src/%.c src/internal.h include/regopt.h
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
examples/%: examples/%.c examples/digits_mlp.h examples/cli.h lib
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(BLAS_CFLAGS) $< -o $@ \
	    -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm

examples/mpi_sam: examples/mpi_sam.c examples/digits_mlp.h lib
	$(MPICC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(BLAS_CFLAGS) $< -o $@ \
	    -Llib -lregopt $(RPATH) $(BLAS_LIBS) -lm

# The Check runner links the static archive, so tests may also reach
# internal functions (the Philox known-answer test does).
test/check_regopt: $(TEST_SRC) $(wildcard test/*.h) $(STLIB)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(APP_CFLAGS) $(CHECK_CFLAGS) -Isrc $(TEST_SRC) -o $@ \
	    $(STLIB) $(CHECK_LIBS) -lm

# The header alone, as strict C99 and as C++, linked to the shared library.
test/header_c99: test/header_c99.c include/regopt.h lib
	$(CC) -std=c99 -pedantic-errors $(WARN) -Iinclude $< -o $@ -Llib -lregopt $(RPATH)
test/header_cxx: test/header_cxx.cpp include/regopt.h lib
	$(CXX) -std=c++11 -pedantic-errors $(WARN) -Iinclude $< -o $@ -Llib -lregopt $(RPATH)

deps:
	@sh scripts/install-deps.sh

run-check: all test/header_c99 test/header_cxx
	./test/header_c99
	./test/header_cxx
	sh test/check_symbols.sh $(SHLIB) $(SONAME)
	./examples/minimal
	./examples/mlp --data data/digits.csv --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --method sam --bn --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --method asam --m-rows 16 --min-test-acc 0.95 --quiet
	./examples/mlp --data data/digits.csv --rdrop 1 --bn --min-test-acc 0.95 --quiet
	./examples/charlm --rdrop 1 --epochs 4 --max-bits 4.5
	./examples/textcls --smart 1 --bregman 1 --epochs 5 --min-acc 0.45
	@mkdir -p build
	OPENBLAS_NUM_THREADS=1 ./examples/demo --seeds 1 --epochs 6 --quiet \
	    --csv build/demo_test.csv --svg build/demo_test.svg
	@grep -q '</svg>' build/demo_test.svg && test $$(wc -l < build/demo_test.csv) -eq 7
	./examples/mlp --data data/digits.csv --smart 1 --bregman 1 --bn --min-test-acc 0.95 --quiet
	./test/check_regopt
	sh test/check_resume.sh examples/mlp data/digits.csv
	REGOPT_LIBRARY=$(CURDIR)/lib/$(SONAME) $(PYTHON) -m unittest discover -s python/tests
	@if $(PYTHON) -c 'import torch' 2>/dev/null; then \
	    echo REGOPT_LIBRARY=lib/$(SONAME) $(PYTHON) examples/torch_finetune.py --min-test-acc 0.9; \
	    REGOPT_LIBRARY=$(CURDIR)/lib/$(SONAME) $(PYTHON) examples/torch_finetune.py --min-test-acc 0.9 > build/torch_finetune.log || { cat build/torch_finetune.log; exit 1; }; tail -1 build/torch_finetune.log; \
	else echo 'check: no python3-torch, torch example skipped'; fi
	$(if $(HAVE_MPI),sh test/check_mpi.sh examples/mpi_sam data/digits.csv,@echo "check: no mpicc, MPI test skipped")

check: deps
	@$(MAKE) --no-print-directory run-check

# One BLAS thread: the demo's matrices are small, threads only add overhead.
run-demo: all
	OPENBLAS_NUM_THREADS=1 ./examples/demo --data data/digits.csv

demo: deps
	@$(MAKE) --no-print-directory run-demo

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PCDIR)
	install -m 644 include/regopt.h $(DESTDIR)$(INCLUDEDIR)/regopt.h
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf $(notdir $(SHLIB)) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libregopt.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	install -m 644 pkgconfig/regopt.pc $(DESTDIR)$(PCDIR)/regopt.pc

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/regopt.h $(DESTDIR)$(LIBDIR)/$(notdir $(SHLIB)) \
	    $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libregopt.so \
	    $(DESTDIR)$(LIBDIR)/libregopt.a $(DESTDIR)$(PCDIR)/regopt.pc

clean:
	rm -rf build lib pkgconfig/regopt.pc $(EXAMPLES) examples/mpi_sam test/check_regopt \
	    test/header_c99 test/header_cxx
