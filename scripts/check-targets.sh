#!/usr/bin/env bash
# Type-checks the plugin for targets other than Linux: `cargo check --target T` for Windows and
# macOS. Nothing is linked or run. The GStreamer -sys crates only need pkg-config answers (the
# host's .pc files do, PKG_CONFIG_ALLOW_CROSS=1); ring's build script compiles C and assembly,
# for which this machine has no cross compiler, so its objects are stubbed with empty files:
# type-checking Rust code needs none of them. With a real cross toolchain, set STUB_CC=0. Only
# the library is checked (the plugin users build); the tests have only ever run on Linux.
#   scripts/check-targets.sh [TARGET...]   (default: the three below; `rustup target add` first)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-pc-windows-gnu x86_64-apple-darwin aarch64-apple-darwin)
export PKG_CONFIG_ALLOW_CROSS=1
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
cat >"$stub/cc" <<'STUB'
#!/bin/sh
# A compile (-c) writes an empty file where its object would go; anything else (cc-rs' compiler
# probes) goes to the host's cc, so cc-rs sees the GNU-style compiler it expects.
case " $* " in *" -c "*) ;; *) exec cc "$@" ;; esac
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
  esac
  shift
done
[ -n "$out" ] && : >"$out"
exit 0
STUB
chmod +x "$stub/cc"
for t in "${targets[@]}"; do
  echo "== cargo check --target $t"
  if [ "${STUB_CC:-1}" = 1 ]; then
    v="${t//-/_}"
    export "CC_$v=$stub/cc" "AR_$v=ar"
  fi
  cargo check --target "$t" --lib
done
