#!/usr/bin/python3
"""amalgamate.py [OUTDIR] -- write OUTDIR/regopt.c and OUTDIR/regopt.h (default dist/).

The single-file build for embedding: src's headers and every src/*/*.c in one
translation unit, so an embedder adds two files to their build and nothing of
libregopt's internals can clash with their symbols:

- the internal #include lines are dropped (the header comes once, at the top);
- every file-scope ro_* function declaration and definition becomes static;
- the macros a .c file defines are #undef'd after it, so one file's helper
  macro (keys.c's D, I, ...) cannot change the meaning of a later file;
- feature-test macros (_POSIX_C_SOURCE, ...) are hoisted above every system
  #include, where they must be to take effect;
- #line directives keep compiler messages and sanitizer reports pointing at
  src/, so a problem seen in an embedding is found in the real source.

File-scope static names must be unique across src/*/*.c; a clash is reported
here (rename it in src) rather than as a compiler error deep in the output.
Standard library only: this runs wherever python3 does.
"""
import glob
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The role folders of src/, lowest layer first (src/README.md): sources
# follow in this order, so each file comes after everything it uses.
FOLDERS = ["core", "model", "optim", "reg", "trainer", "checkpoint"]
INTERNAL_INCLUDE = re.compile(
    r'^\s*#\s*include\s*"((%s)/[a-z_]+\.h|regopt\.h)"' % "|".join(FOLDERS))
# The internal headers, inlined in this order (each includes only those
# before it).
HEADERS = ["core/core.h", "model/model.h", "optim/optim.h", "reg/reg.h",
           "reg/sam_ascent.h", "reg/adv.h", "trainer/pipeline.h", "trainer/trainer.h",
           "checkpoint/checkpoint.h"]
FEATURE_MACRO = re.compile(r"^\s*#\s*define\s+(_[A-Z0-9_]*SOURCE)\b.*$")
DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_][A-Za-z0-9_]*)")
# A file-scope declaration or definition of an ro_ function starting in
# column 0: return type, then the name, then "(".
RO_FUNC = re.compile(r"^(?!static\b|typedef\b|extern\b|return\b)"
                     r"[A-Za-z_][A-Za-z0-9_ \t*]*\bro_[A-Za-z0-9_]+[ \t]*\(")
# A file-scope ro_ object declared or defined in column 0 (the regularizers'
# operation tables): "extern const ro_reg_ops ro_x, ...;" or "const ro_reg_ops ro_x = {".
RO_OBJECT = re.compile(r"^(extern\s+)?const\s+ro_[a-z_]+\s+ro_[A-Za-z0-9_]+\s*[,;=]")
# The same with the return type on the line before.
RO_FUNC_NAME_ONLY = re.compile(r"^ro_[A-Za-z0-9_]+[ \t]*\(")
# A file-scope static function or object: its name is what precedes "(",
# "[", "=" or ";" on the first line.
STATIC_NAME = re.compile(r"^static\b[^(=;\[]*?\b([A-Za-z_][A-Za-z0-9_]*)[ \t]*[(\[=;]")


def fail(msg):
    sys.stderr.write("amalgamate: " + msg + "\n")
    sys.exit(1)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def transform(lines, rel, hoisted):
    """The lines of one source file for the amalgamation (same line count)."""
    out = []
    for line in lines:
        if INTERNAL_INCLUDE.match(line):
            out.append("/* amalgamation: " + line.strip() + " is above */")
            continue
        m = FEATURE_MACRO.match(line)
        if m:
            hoisted.append((m.group(1), line.strip(), rel))
            out.append("/* amalgamation: feature-test macro %s moved to the top */" % m.group(1))
            continue
        if RO_OBJECT.match(line):  # the methods' ops tables: internal too
            line = "static " + re.sub(r"^extern\s+", "", line)
        elif RO_FUNC.match(line):
            line = "static " + line
        elif RO_FUNC_NAME_ONLY.match(line):
            j = len(out) - 1
            while j >= 0 and not out[j].strip():
                j -= 1
            if j < 0:
                fail("%s: cannot find the return type of: %s" % (rel, line))
            if not out[j].startswith("static"):
                out[j] = "static " + out[j]
        out.append(line)
    return out


def file_statics(lines):
    names = set()
    for line in lines:
        m = STATIC_NAME.match(line)
        if m and "inline" not in line.split(m.group(1))[0]:
            names.add(m.group(1))
    return names


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "dist")
    header = os.path.join(ROOT, "include", "regopt.h")
    headers = [os.path.join(ROOT, "src", h) for h in HEADERS]
    sources = []
    for folder in FOLDERS:
        sources += sorted(glob.glob(os.path.join(ROOT, "src", folder, "*.c")))
    if not sources:
        fail("no src/*/*.c under " + ROOT)
    listed = set(os.path.join(ROOT, "src", h) for h in HEADERS)
    for path in glob.glob(os.path.join(ROOT, "src", "*", "*.h")):
        if path not in listed:
            fail("%s is not in HEADERS: add it in its layer's place" % os.path.relpath(path, ROOT))

    # Clashing file-scope statics would be redefinitions in one unit.
    seen = {}
    for path in sources:
        rel = os.path.relpath(path, ROOT)
        for name in file_statics(read(path)):
            if name in seen:
                fail("file-scope static '%s' is in both %s and %s; rename one in src "
                     "(one translation unit cannot hold both)" % (name, seen[name], rel))
            seen[name] = rel

    hoisted = []
    body = []
    for path in headers + sources:
        rel = os.path.relpath(path, ROOT)
        lines = read(path)
        if lines and lines[-1] == "":
            lines.pop()
        body.append("")
        body.append("/* ==== %s %s */" % (rel, "=" * max(0, 66 - len(rel))))
        body.append('#line 1 "%s"' % rel)
        body.extend(transform(lines, rel, hoisted))
        if path not in headers:
            macros = []
            for line in lines:
                m = DEFINE.match(line)
                if m and m.group(1) not in macros and not FEATURE_MACRO.match(line):
                    macros.append(m.group(1))
            if macros:
                body.append("/* amalgamation: %s's own macros end here */" % rel)
                body.extend("#undef " + name for name in macros)

    # One definition per feature-test macro, ahead of every system header.
    feature_lines, seen_feature = [], {}
    for name, line, rel in hoisted:
        value = re.sub(r"/\*.*?\*/", "", line).split(None, 2)[2:] or [""]
        if name in seen_feature:
            if seen_feature[name][0] != value[0].strip():
                fail("%s defines %s as %r, %s as %r: make them agree"
                     % (seen_feature[name][1], name, seen_feature[name][0], rel, value[0].strip()))
            continue
        seen_feature[name] = (value[0].strip(), rel)
        feature_lines.append(line)

    banner = ("/* Generated by scripts/amalgamate.py from libregopt's include/regopt.h,\n"
              " * src/ headers and every src .c file: do not edit, regenerate with\n"
              " * `make amalgamation`. Compile this one file (C11: it uses _Thread_local)\n"
              " * with regopt.h beside it; only the regopt_* API has external linkage. */\n")
    os.makedirs(outdir, exist_ok=True)
    tmp_c = os.path.join(outdir, "regopt.c.tmp")
    with open(tmp_c, "w", encoding="utf-8") as f:
        f.write(banner)
        f.write("#define REGOPT_AMALGAMATION 1\n")
        for line in feature_lines:
            f.write(line + "\n")
        f.write('#include "regopt.h"\n')
        f.write("\n".join(body) + "\n")
    tmp_h = os.path.join(outdir, "regopt.h.tmp")
    with open(tmp_h, "w", encoding="utf-8") as f:
        f.write("/* Copied from libregopt's include/regopt.h by scripts/amalgamate.py. */\n")
        f.write("\n".join(read(header)).rstrip("\n") + "\n")
    os.replace(tmp_c, os.path.join(outdir, "regopt.c"))
    os.replace(tmp_h, os.path.join(outdir, "regopt.h"))
    print("amalgamate: %s/regopt.c (%d sources) and %s/regopt.h"
          % (os.path.relpath(outdir), len(sources), os.path.relpath(outdir)))


if __name__ == "__main__":
    main()
