#!/usr/bin/python3
"""layer-check.py [OBJDIR] -- check that src/ depends one way (src/README.md).

src/ has one folder per role. A folder may use its own files and the
folders of lower layers only:

    checkpoint -> trainer -> reg -> model, optim -> core -> include/regopt.h

model and optim share a layer and may not use each other. Two checks:

- includes: every #include "..." of src/<dir>/*.[ch] names a header by its
  path from src/ ("core/core.h") in its own folder or a lower layer, or the
  public "regopt.h"; system headers (<...>) are free;
- symbols (when OBJDIR, the build's object tree build/obj, is given): every
  internal ro_* symbol an object file uses is defined by an object of its
  own folder or a lower layer (an include can point down while a call
  points up; the linker would not mind, the layering would).

Exits 1 naming every wrong-way dependency. Standard library plus nm(1).
"""
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
LAYER = {"core": 0, "model": 1, "optim": 1, "reg": 2, "trainer": 3, "checkpoint": 4}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def allowed(src_dir, dep_dir):
    """May a file of src_dir use one of dep_dir?"""
    if src_dir == dep_dir:
        return True
    return LAYER[dep_dir] < LAYER[src_dir]


def folders_known():
    problems = []
    for path in sorted(glob.glob(os.path.join(ROOT, "src", "*"))):
        name = os.path.basename(path)
        if os.path.isdir(path) and name not in LAYER:
            problems.append("src/%s/: a folder the layering does not know "
                            "(add it to src/README.md and LAYER here)" % name)
    for path in glob.glob(os.path.join(ROOT, "src", "*.[ch]")):
        problems.append("src/%s: a source file outside the role folders"
                        % os.path.basename(path))
    return problems


def meson_lists_every_source():
    """meson.build names its sources one by one: a new file must be in it."""
    with open(os.path.join(ROOT, "meson.build"), encoding="utf-8") as f:
        meson = f.read()
    problems = []
    for d in LAYER:
        for path in sorted(glob.glob(os.path.join(ROOT, "src", d, "*.c"))):
            rel = os.path.relpath(path, ROOT)
            if "'%s'" % rel not in meson:
                problems.append("%s: missing from lib_src in meson.build" % rel)
    # the Makefile takes test/check_*.c by wildcard; meson's check_src must agree
    for path in sorted(glob.glob(os.path.join(ROOT, "test", "check_*.c"))):
        rel = os.path.relpath(path, ROOT)
        if "'%s'" % rel not in meson:
            problems.append("%s: missing from check_src in meson.build" % rel)
    return problems


def check_includes():
    problems = []
    for d in LAYER:
        for path in sorted(glob.glob(os.path.join(ROOT, "src", d, "*.[ch]"))):
            rel = os.path.relpath(path, ROOT)
            with open(path, encoding="utf-8") as f:
                for no, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    inc = m.group(1)
                    if inc == "regopt.h":
                        continue
                    dep = inc.split("/")[0] if "/" in inc else None
                    if dep not in LAYER or not os.path.exists(os.path.join(ROOT, "src", inc)):
                        problems.append('%s:%d: #include "%s" is not a header of src/ named '
                                        'by its path from src/' % (rel, no, inc))
                    elif not allowed(d, dep):
                        problems.append('%s:%d: #include "%s" points the wrong way (%s/ is '
                                        'not below %s/)' % (rel, no, inc, dep, d))
    return problems


def symbols(obj, flag):
    out = subprocess.run(["nm", flag, obj], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[-1].startswith("ro_"):
            names.add(parts[-1])
    return names


def check_symbols(objdir):
    owner, uses = {}, []
    for d in LAYER:
        for obj in sorted(glob.glob(os.path.join(objdir, d, "*.o"))):
            for name in symbols(obj, "--defined-only"):
                owner[name] = d
            uses.append((d, obj, symbols(obj, "--undefined-only")))
    if not uses:
        return ["%s: no object files (build the library first)" % objdir]
    problems = []
    for d, obj, names in uses:
        for name in sorted(names):
            dep = owner.get(name)
            if dep is not None and not allowed(d, dep):
                problems.append("%s uses %s, defined in src/%s/ (not below %s/)"
                                % (os.path.relpath(obj, ROOT), name, dep, d))
    return problems


def main(argv):
    problems = folders_known() + meson_lists_every_source() + check_includes()
    if len(argv) > 1:
        problems += check_symbols(argv[1])
    for p in problems:
        sys.stderr.write("layer-check: " + p + "\n")
    if problems:
        return 1
    print("layer-check: src/ depends one way (%s)"
          % ("includes and symbols" if len(argv) > 1 else "includes"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
