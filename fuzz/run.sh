#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECS seconds (default 600), one after another (they would
# compete for the cores), then minimises each corpus. See README.md.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-600}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
for target in ${FUZZ_TARGETS:-request_body base64_files spec oip_body}; do
  echo "== $target: ${secs}s"
  cargo "+$toolchain" fuzz run -O "$target" "corpus/$target" -- -max_total_time="$secs" -print_final_stats=1
  cargo "+$toolchain" fuzz cmin -O "$target" "corpus/$target"
done
