#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time, one at a time, on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets stable accept cargo-fuzz's -Z flags).
#
#   scripts/fuzz.sh                                   # every target, 60 s each
#   FUZZ_SECONDS=300 FUZZ_TARGETS=event_parser scripts/fuzz.sh
#
# FUZZ_SECONDS     seconds per target (default 60)
# FUZZ_TARGETS     space-separated targets (default: all of `cargo fuzz list`)
# FUZZ_SANITIZER   address (default) or none (faster, for safe code)
# CARGO_BUILD_JOBS build parallelism (default 1)
#
# Each run reads the committed seeds in fuzz/corpus/<target> and writes what it finds to
# fuzz/target/corpus/<target> (ignored by git, kept for the next run; minimized it is over
# 500 KB, so only the seeds are committed). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit non-zero after all targets ran;
# reproduce it with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"

# fuzz/Cargo.lock is committed: fail if it is out of date rather than re-resolving.
cargo fetch --locked --manifest-path fuzz/Cargo.toml --quiet

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "building fuzz targets: $(echo $targets)"
cargo fuzz build --sanitizer "$sanitizer"

failed=0
summary=()
for target in $targets; do
    seeds="fuzz/corpus/$target"
    work="fuzz/target/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    log="fuzz/target/fuzz-$target.log"
    mkdir -p "$seeds" "$work" "$artifacts"
    dict=()
    [[ -f "fuzz/dicts/$target.dict" ]] && dict=("-dict=fuzz/dicts/$target.dict")
    before=$(find "$artifacts" -type f | wc -l)

    echo "fuzzing $target for $seconds s (log: $log)"
    start=$(date +%s)
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$work" "$seeds" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))

    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    note=""
    if [[ $status -ne 0 && $crashes -eq 0 ]]; then
        crashes=1
        note=" (exit $status without an input: see the log)"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    fuzz_secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    execs="${execs:-0}"
    fuzz_secs="${fuzz_secs:-$elapsed}"
    rate=$((execs / (fuzz_secs > 0 ? fuzz_secs : 1)))
    files=$(find "$work" "$seeds" -type f | wc -l)

    line="$target: $execs execs in $fuzz_secs s ($rate exec/s), $crashes crashes$note, corpus $files files"
    summary+=("$line")
    if [[ $crashes -ne 0 ]]; then
        failed=1
        tail -40 "$log" >&2
        echo "CRASH in $target; inputs in $artifacts/" >&2
    fi
done

echo
echo "fuzz summary (${seconds} s per target, sanitizer $sanitizer):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
