#!/usr/bin/env bash
# Assembles a build-only CUDA 13.0 toolkit from NVIDIA's PyPI wheels and builds q2 with CUDA.
#
#   scripts/cuda-toolkit.sh [DEST] [--no-build]
#
# DEST defaults to `.cuda-toolkit` in the repository root (git-ignored). The toolkit makes
# `cargo build --features cuda` (candle's CUDA backend, cudarc 0.19, and q2-quant's own kernels in
# crates/quant/kernels/*.cu, compiled to PTX by its build.rs) work on a machine WITHOUT a GPU, a
# driver or a system CUDA:
#   - nvcc, crt, nvvm, cccl, runtime, cublas, nvrtc 13.0.x and curand 10.4.0 from PyPI, in a venv;
#     nvcc 13.0 emits PTX ISA 9.0, which the CUDA 13.0 driver (R580) of the GPU machine can JIT;
#   - unversioned `lib*.so` links for the linker (the wheels only ship versioned sonames);
#   - a link-only `libcuda.so` stub (soname libcuda.so.1) exporting every cu* symbol cudarc binds:
#     the binary is linked against it here and loads the driver's real libcuda.so.1 there. Never
#     put DEST/root/lib64 on LD_LIBRARY_PATH at run time;
#   - a fake `nvidia-smi` for build scripts that ask it for the compute capability;
#   - DEST/env.sh exporting CUDA_ROOT, CUDA_PATH, PATH and CUDA_COMPUTE_CAP (default 90: H100/H200).
# Re-running is cheap: the wheels are installed only once (a stamp records the exact list).
#
# Unless --no-build is given it then runs
#   source DEST/env.sh && cargo build --release -p q2-repro --features cuda --bin q2
# (the `q2` binary lives in crates/repro; into $CARGO_TARGET_DIR if set, else target/). A clean
# CUDA build (candle's kernels for CUDA_COMPUTE_CAP, then everything else) takes 10–20 minutes on
# two cores.
#
# Running the carried binary on the GPU machine: it is dynamically linked against libcudart,
# libcublas(Lt), libcurand and libnvrtc, which are not installed system-wide there. Point
# LD_LIBRARY_PATH at PyTorch's wheel libraries, e.g.
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os, glob; print(":".join(sorted(
#       glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib")))))'):$LD_LIBRARY_PATH
# (the `nvidia/*/lib` folders of PyTorch's site-packages; libcuda.so.1 comes from the driver).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=""
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "cuda-toolkit.sh: unknown option $arg (usage: $0 [DEST] [--no-build])" >&2; exit 2 ;;
    *)
      if [[ -n "$DEST" ]]; then echo "cuda-toolkit.sh: more than one DEST given" >&2; exit 2; fi
      DEST=$arg ;;
  esac
done
DEST=$(realpath -m "${DEST:-$ROOT/.cuda-toolkit}")
say() { echo "== cuda-toolkit: $*"; }

for tool in python3 gcc cargo realpath; do
  command -v "$tool" >/dev/null || { echo "cuda-toolkit.sh: \`$tool\` is required but not on PATH" >&2; exit 1; }
done

# --- 1. the wheels -------------------------------------------------------------------------------
# Pinned to 13.0: a newer nvcc would emit a PTX ISA the R580 driver cannot JIT.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-cuda-nvrtc==13.0.88
  "nvidia-curand>=10.4.0,<10.4.1"
)
STAMP="$DEST/.wheels-installed"
mkdir -p "$DEST"
if [[ -x "$DEST/venv/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "${WHEELS[*]}" ]]; then
  say "wheels already installed in $DEST/venv (delete $STAMP to reinstall)"
else
  say "installing the CUDA 13.0 wheels into $DEST/venv (about 1 GB)"
  [[ -x "$DEST/venv/bin/python" ]] || python3 -m venv "$DEST/venv"
  "$DEST/venv/bin/pip" install -q --disable-pip-version-check "${WHEELS[@]}"
  printf '%s' "${WHEELS[*]}" > "$STAMP"
fi
T=$("$DEST/venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[[ -x "$T/bin/nvcc" ]] || { echo "cuda-toolkit.sh: no nvcc under $T/bin after installing the wheels" >&2; exit 1; }

# --- 2. the toolkit layout -----------------------------------------------------------------------
say "laying out $DEST/root from $T"
mkdir -p "$DEST/root/lib64"
for d in bin include nvvm lib; do ln -sfn "$T/$d" "$DEST/root/$d"; done
for l in cublas cublasLt nvrtc cudart; do
  [[ -e "$T/lib/lib$l.so.13" ]] || { echo "cuda-toolkit.sh: missing $T/lib/lib$l.so.13" >&2; exit 1; }
  ln -sf "../lib/lib$l.so.13" "$DEST/root/lib64/lib$l.so"
done
[[ -e "$T/lib/libcurand.so.10" ]] || { echo "cuda-toolkit.sh: missing $T/lib/libcurand.so.10" >&2; exit 1; }
ln -sf ../lib/libcurand.so.10 "$DEST/root/lib64/libcurand.so"

# --- 3. the libcuda link stub --------------------------------------------------------------------
# Every cu* function cudarc's driver bindings declare, from the cudarc version in Cargo.lock.
CUDARC_VER=$(awk '$1 == "name" && $3 == "\"cudarc\"" { getline; gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.lock" 2>/dev/null || true)
CUDARC_VER=${CUDARC_VER:-0.19.10}
REG="${CARGO_HOME:-$HOME/.cargo}/registry/src"
find_sys() { ls "$REG"/*/"cudarc-$CUDARC_VER"/src/driver/sys/mod.rs 2>/dev/null | head -1 || true; }
SYS=$(find_sys)
if [[ -z "$SYS" ]]; then
  say "fetching crate sources (cargo fetch) for cudarc $CUDARC_VER"
  (cd "$ROOT" && cargo fetch)
  SYS=$(find_sys)
fi
[[ -n "$SYS" ]] || { echo "cuda-toolkit.sh: cudarc-$CUDARC_VER sources not found under $REG after cargo fetch" >&2; exit 1; }
grep -ohE "fn cu[A-Za-z0-9_]+\(" "$SYS" | sed -e "s/^fn //" -e "s/(//" | sort -u \
  | awk '{print "void "$1"(void) {}"}' > "$DEST/libcuda_stub.c"
NSYM=$(wc -l < "$DEST/libcuda_stub.c")
[[ "$NSYM" -gt 100 ]] || { echo "cuda-toolkit.sh: only $NSYM cu* symbols found in $SYS" >&2; exit 1; }
gcc -shared -fPIC -o "$DEST/root/lib64/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$DEST/libcuda_stub.c"
ln -sf libcuda.so.1 "$DEST/root/lib64/libcuda.so"
say "libcuda.so link stub: $NSYM symbols from cudarc $CUDARC_VER"

# --- 4. fake nvidia-smi and env.sh ---------------------------------------------------------------
# Some build scripts run `nvidia-smi --query-gpu=compute_cap --format=csv` unconditionally.
mkdir -p "$DEST/fakebin"
printf '#!/bin/sh\necho compute_cap\necho "${FAKE_COMPUTE_CAP:-9.0}"\n' > "$DEST/fakebin/nvidia-smi"
chmod +x "$DEST/fakebin/nvidia-smi"
cat > "$DEST/env.sh" <<EOF
# Generated by scripts/cuda-toolkit.sh: the build-time CUDA 13.0 toolkit in $DEST.
export CUDA_ROOT=$DEST/root
export CUDA_PATH=$DEST/root
export PATH=$DEST/root/bin:$DEST/fakebin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
EOF
"$DEST/root/bin/nvcc" --version | tail -2 | sed 's/^/   /'
say "ok: source $DEST/env.sh"

# --- 5. the build --------------------------------------------------------------------------------
if [[ "$BUILD" == 1 ]]; then
  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  say "building q2 with --features cuda into $TARGET (a clean build takes 12–20 minutes)"
  # shellcheck disable=SC1091
  source "$DEST/env.sh"
  start=$SECONDS
  (cd "$ROOT" && cargo build --release -p q2-repro --features cuda --bin q2)
  BIN="$TARGET/release/q2"
  say "built $BIN in $((SECONDS - start)) s ($(du -h "$BIN" | cut -f1))"
  # The release profile keeps line tables; carried files must stay under 64 MiB in all.
  if [[ $(stat -c %s "$BIN") -gt $((64 * 1024 * 1024)) ]] && command -v strip >/dev/null; then
    strip --strip-debug -o "$BIN.stripped" "$BIN"
    say "over 64 MiB: wrote $BIN.stripped without debug info ($(du -h "$BIN.stripped" | cut -f1)); carry that one"
  fi
  say "on the GPU machine, set LD_LIBRARY_PATH to PyTorch's nvidia/*/lib folders (see the header)"
fi
