# Sourced by the GPU scripts. On an offline GPU machine FLASHMLA_DEPS_DIR may hold the
# nvidia-cutlass wheel, an unpacked libdlpack-dev (dlpack/usr/include) and an unpacked googletest
# source package (gtest/usr/src/googletest): this unpacks the wheel once per shell (unless
# CUTLASS_DIR is already set) and exports CUTLASS_DIR, DLPACK_ROOT and GTEST_SOURCE_DIR for them.
# install_peer_wheels installs the peer kernels that bench/bench.py times beside ours (the wheels of
# FLASHMLA_PEER_WHEELS, default sgl_flash_mla-*.whl in FLASHMLA_DEPS_DIR; without their
# dependencies) into a fresh folder and prints it, for PYTHONPATH.
install_peer_wheels() {
  local site wheel
  site=$(mktemp -d)
  for wheel in ${FLASHMLA_PEER_WHEELS:-${FLASHMLA_DEPS_DIR:-.}/sgl_flash_mla-*.whl}; do
    [[ -f "$wheel" ]] && python3 -m pip install -q --no-index --no-deps --target "$site" "$wheel" >&2
  done
  echo "$site"
}
if [[ -n "${FLASHMLA_DEPS_DIR:-}" ]]; then
  if [[ -z "${CUTLASS_DIR:-}" ]]; then
    _site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --target "$_site" "$FLASHMLA_DEPS_DIR"/nvidia_cutlass-*.whl
    export CUTLASS_DIR="$_site/cutlass_library/source/include"
  fi
  [[ -d "$FLASHMLA_DEPS_DIR/dlpack/usr" ]] && export DLPACK_ROOT="$FLASHMLA_DEPS_DIR/dlpack/usr"
  [[ -d "$FLASHMLA_DEPS_DIR/gtest/usr/src/googletest" ]] &&
    export GTEST_SOURCE_DIR="$FLASHMLA_DEPS_DIR/gtest/usr/src/googletest"
fi
