#!/bin/sh
# check-torch-cuda.sh — on a machine with a CUDA device, check the torch
# adapter's GPU path (TorchModel(backend="torch"), regopt/_torch_backend.py)
# in one command: build the library, then run the CUDA tests of
# python/tests/test_torch_backend.py (every method and optimizer on the
# device against the library's own CPU path, dropout seeded and reproducible
# there, a CUDA module refused without the backend) and the backend's
# operation tests.
#
#   sh scripts/check-torch-cuda.sh            fails without a CUDA device
#   PYTHON=python3.11 sh scripts/check-torch-cuda.sh
#
# Without a device the CUDA tests skip; this script then fails instead of
# reporting a pass that checked nothing.
set -eu
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
PYTHON=${PYTHON:-python3}

"$PYTHON" -c "
import sys, torch
if not torch.cuda.is_available():
    sys.exit('check-torch-cuda.sh: torch %s sees no CUDA device (torch.cuda.is_available() '
             'is False); run it on a machine with one' % torch.__version__)
print('torch %s, CUDA device: %s' % (torch.__version__, torch.cuda.get_device_name(0)))"

$MAKE -s lib
lib=$(ls lib/libregopt.so.*.*.* | head -n 1)
REGOPT_LIBRARY=$PWD/$lib "$PYTHON" -m unittest -v \
    python/tests/test_torch_backend.py python/tests/test_torch_backend_ops.py
