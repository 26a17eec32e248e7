#!/bin/sh
# meson's custom_target calls this: cargo builds the cdylib, we copy it where meson expects it.
set -eu
cargo="$1" src="$2" target_dir="$3" profile="$4" out="$5"
if [ "$profile" = release ]; then flag=--release; else flag=; fi
"$cargo" build $flag --lib --manifest-path "$src/Cargo.toml" --target-dir "$target_dir"
cp "$target_dir/$profile/libgstrtspannounce.so" "$out"
