#!/usr/bin/env bash
# Coverage-guided fuzzing of the code that takes untrusted input (fuzz/): policy documents,
# durations, text to redact, request paths. Each target runs SECONDS (default 60) with libFuzzer
# on the nightly toolchain, starting from the committed seed corpus in fuzz/corpus/<target>;
# inputs it finds go to target/fuzz-corpus/<target>, so the tree stays clean. A crash, panic,
# timeout (> 10 s for one input) or an input needing more than 2 GiB fails the run.
#   scripts/fuzz.sh            # 60 s per target (what the test command runs)
#   scripts/fuzz.sh 600        # longer runs
#   scripts/fuzz.sh 600 redact # one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets=("${@:2}")
[ "${#targets[@]}" -gt 0 ] || targets=(policy duration redact routes)

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi

out="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-corpus"
# No sanitizer: healthgate has no unsafe code, and libFuzzer still catches panics, aborts,
# timeouts and runaway memory; instrumenting every dependency for ASan would triple the build.
flags=(--sanitizer none --fuzz-dir fuzz)
cargo +nightly fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "$out/$target"
  echo "==> fuzz $target for ${seconds}s" >&2
  log="$out/$target.log"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$target" "$out/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  # libFuzzer's progress lines stay in the log; the summary and any failure are shown.
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|panicked|SUMMARY|crash-' "$log" >&2 || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status); log $log, input in fuzz/artifacts/$target" >&2
    exit "$status"
  fi
  echo "corpus $target: $(ls "$out/$target" | wc -l) found + $(ls "fuzz/corpus/$target" | wc -l) seeds" >&2
done
