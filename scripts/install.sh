#!/usr/bin/env bash
# Install swaa_ext from this checkout: torch and the build tools first, then
# the extension (CMake + ninja; CUDA kernels too where nvcc and a CUDA torch
# are present).  Extra pip "extras" may be passed, e.g. `install.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -r requirements.txt
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
extras="${1:-hf}"
python -m pip install --no-build-isolation -e ".[${extras}]"
python -c "import swaa_ext; print('swaa_ext', swaa_ext.__version__, swaa_ext.build_info())"
