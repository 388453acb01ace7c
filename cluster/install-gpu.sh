#!/bin/sh
# Install modm with the `gpu` extra from a source tree (default: the current directory), into the active Python.
# Used by the Dockerfile and by the `ray up` cluster YAML's setup_commands, so both install the same way.
set -eu
src="${1:-.}"

pip install --no-cache-dir "${src}[gpu]"

# faiss-cpu (a base dependency) and faiss-gpu-cu12 (the gpu extra) both install the `faiss` package. Remove the
# CPU wheel, then reinstall the GPU wheel pip already chose, whose files the uninstall has just deleted.
faiss_gpu="$(pip freeze | grep -i '^faiss-gpu-cu12==')"
pip uninstall -y faiss-cpu
pip install --no-cache-dir --force-reinstall --no-deps "${faiss_gpu}"
python -c "import faiss"
