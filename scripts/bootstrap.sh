#!/usr/bin/env bash
# Install Tributary and everything its tests and bundled databases need, into the current Python.
#
# torch comes first and only where none is importable: `torch==2.13.0` is the CPU wheel these
# machines keep on local disk, while any looser request would pull a multi-GB CUDA build. The
# package itself asks only for torch>=2.2, so an existing (GPU) torch is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "bootstrap: installing torch==2.13.0 (CPU)" >&2
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
echo "bootstrap: installing tributary with its test, datasets, tpch, local-model, plot, baselines and serve extras" >&2
"$PYTHON" -m pip install --quiet -e ".[test,datasets,tpch,local,plot,baselines,serve]"
echo "bootstrap: installing the example plugin package examples/tributary-counts" >&2
"$PYTHON" -m pip install --quiet --no-deps -e examples/tributary-counts
