"""The binding as a package: python/pyproject.toml's version is the
binding's and the header's, and the library search finds an install through
pkg-config (regopt/_lib.py's order: REGOPT_LIBRARY, the repository's lib/,
pkg-config, the system)."""
import os
import re
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import regopt  # noqa: E402
from regopt import _lib  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def header_version():
    with open(os.path.join(ROOT, "include", "regopt.h")) as f:
        text = f.read()
    return tuple(int(re.search(r"#define REGOPT_VERSION_%s (\d+)" % part, text).group(1))
                 for part in ("MAJOR", "MINOR", "PATCH"))


class PackageTest(unittest.TestCase):
    def test_versions_agree(self):
        with open(os.path.join(ROOT, "python", "pyproject.toml")) as f:
            declared = re.search(r'^version = "([0-9.]+)"$', f.read(), re.M).group(1)
        self.assertEqual(declared, regopt.__version__)
        self.assertEqual(tuple(int(x) for x in declared.split(".")), _lib.BINDING_VERSION)
        self.assertEqual(_lib.BINDING_VERSION, header_version())

    def test_pkg_config_libdir_is_searched(self):
        with tempfile.TemporaryDirectory() as tmp:
            libdir = os.path.join(tmp, "lib")
            os.makedirs(os.path.join(libdir, "pkgconfig"))
            so = os.path.join(libdir, "libregopt.so.%d" % _lib.BINDING_VERSION[0])
            open(so, "wb").close()
            with open(os.path.join(libdir, "pkgconfig", "regopt.pc"), "w") as f:
                f.write("prefix=%s\nlibdir=%s\nincludedir=%s/include\n\nName: regopt\n"
                        "Description: test\nVersion: 1.0.0\nLibs: -L${libdir} -lregopt\n"
                        "Cflags: -I${includedir}\n" % (tmp, libdir, tmp))
            env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(libdir, "pkgconfig"))
            env.pop("REGOPT_LIBRARY", None)
            with mock.patch.dict(os.environ, env, clear=True):
                found = _lib._candidates()
            self.assertIn(("pkg-config", so), found)
            # after the repository's lib/ (when there is one), before the system
            origins = [o for o, _ in found]
            self.assertLess(origins.index("pkg-config"),
                            origins.index("system") if "system" in origins else len(origins))

    def test_explicit_choice_is_final(self):
        with mock.patch.dict(os.environ, {"REGOPT_LIBRARY": "/nonexistent/libregopt.so.1"}):
            self.assertEqual(_lib._candidates(),
                             [("REGOPT_LIBRARY", "/nonexistent/libregopt.so.1")])

    def test_no_pkg_config_is_not_an_error(self):
        with mock.patch.dict(os.environ, {"PKG_CONFIG": "/nonexistent/pkg-config"}):
            self.assertIsNone(_lib._pkg_config_libdir())


if __name__ == "__main__":
    unittest.main()
