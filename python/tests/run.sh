#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment outside the source tree (nothing
# from the tree on sys.path, no PyTorch), and runs the Python tests against the installed package.
#
#   python/tests/run.sh                   # the wheel as CI builds it (cargo's dev profile: reuses the test build)
#   GPT2C_WHEEL_PROFILE=release python/tests/run.sh   # the wheel a release uploads
#   GPT2C_WHEEL=path/to/gpt2c-….whl python/tests/run.sh   # test a wheel built before
#
# Needs: .venv with maturin (.ci/run makes it), a Python >= 3.9 for the fresh environment
# (PYTHON, default python3), PyPI (or pip's cache) for onnxruntime, pytest and openai.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
profile=${GPT2C_WHEEL_PROFILE:-dev}
wheel=${GPT2C_WHEEL:-}
if [ -z "$wheel" ]; then
    out="$repo/target/wheels/$profile"
    rm -rf "$out"
    echo "--- maturin build --profile $profile"
    .venv/bin/maturin build --profile "$profile" --locked --out "$out" --interpreter .venv/bin/python --quiet
    wheel=$(ls "$out"/gpt2c-*.whl)
fi
echo "--- wheel: $wheel ($(du -h "$wheel" | cut -f1))"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel" pytest==9.2.0 openai==3.57.0

# From a folder outside the tree, with the tree given as data only (GPT2C_SOURCE).
cd "$scratch"
export GPT2C_SOURCE="$repo"
export GPT2C_SHARED="${GPT2C_SHARED:-$repo/../shared}"
unset ORT_DYLIB_PATH PYTHONPATH
"$scratch/venv/bin/python" -m pytest -p no:cacheprovider --import-mode=importlib -q \
    --rootdir "$repo/python/tests" "$repo/python/tests" "$@"
