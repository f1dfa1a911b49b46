# shellcheck shell=sh
# crash.sh: what survives when the controller process dies mid-write.
# Two boots, driven by e2e (znsd only):
#
# ZNS_CRASH_PHASE=write: write 1 MiB to zone 8 and flush it, print
#   ===ZNS-CRASH-FLUSHED===, then keep writing 1 MiB chunks to zone 9 until
#   the host kills the server (SIGKILL); the guest never finishes this phase.
# ZNS_CRASH_PHASE=verify (after a restart of the server): zone 8 holds its
#   flushed MiB with the write pointer behind it; zone 9 is in no opened
#   state (opened states are not persistent) and every LBA below its write
#   pointer holds what was written there; with ZNS_CRASH_MIN_LBAS (the
#   server ran with a write-through cache), at least that many LBAs are
#   there. Ends with every zone reset.
SCENARIO=crash
# shellcheck source=lib.sh
. /guest/lib.sh

[ "$NZONES" -ge 10 ] || die "needs at least 10 zones"
bigdata >/tmp/big
mib_lbas=$((1048576 / LBA))
# dd_zone ZONE CHUNK: write /tmp/big as the CHUNK-th MiB of ZONE.
dd_zone() {
    dd if=/tmp/big of="$DEV" bs=65536 seek=$((($(slba "$1") * LBA + $2 * 1048576) / 65536)) oflag=direct 2>/dev/null
}
# same_mib ZONE CHUNK BYTES: the first BYTES of that MiB match /tmp/big.
same_mib() {
    dd if="$DEV" bs=65536 skip=$((($(slba "$1") * LBA + $2 * 1048576) / 65536)) count=16 iflag=direct 2>/dev/null |
        head -c "$3" | cmp -s - "/tmp/big.$3"
}

case ${ZNS_CRASH_PHASE:-} in
write)
    reset_all
    dd_zone 8 0 || fail "write 1 MiB to zone 8"
    nvme_ok "flush" flush "$DEV"
    expect_zone 8 IMP_OPENED "$mib_lbas"
    [ "$failures" -eq 0 ] || finish
    echo "===ZNS-CRASH-FLUSHED==="
    c=0
    while [ "$c" -lt $((ZCAP * LBA / 1048576)) ]; do
        dd_zone 9 "$c" || { say "write of chunk $c failed"; break; }
        say "chunk $c written"
        c=$((c + 1))
    done
    fail "the controller was still there after $c chunks (the host should have killed it)"
    finish
    ;;
verify)
    # shellcheck disable=SC2046 # split the report line into fields
    set -- $(zone_line 8)
    check "zone 8 state after the crash" CLOSED "${4:-}"
    check "zone 8 write pointer after the crash (flushed)" $(($(slba 8) + mib_lbas)) "${2:-}"
    head -c 1048576 /tmp/big >/tmp/big.1048576
    expect_true "zone 8's flushed MiB is intact" same_mib 8 0 1048576
    # shellcheck disable=SC2046
    set -- $(zone_line 9)
    st=${4:-}
    case $st in
        EMPTY|CLOSED) kept=$((${2:-0} - $(slba 9))) ;;
        FULL) kept=$ZCAP ;;
        *) fail "zone 9 is $st after a restart (opened states are not persistent)"; kept=0 ;;
    esac
    say "zone 9: $st, $kept LBAs kept of what was written before the crash"
    if [ -n "${ZNS_CRASH_MIN_LBAS:-}" ]; then
        expect_true "zone 9 kept every completed write ($kept >= $ZNS_CRASH_MIN_LBAS LBAs)" [ "$kept" -ge "$ZNS_CRASH_MIN_LBAS" ]
    fi
    bytes=$((kept * LBA))
    c=0 bad=0
    while [ "$bytes" -gt 0 ]; do
        n=$bytes
        [ "$n" -gt 1048576 ] && n=1048576
        [ -f "/tmp/big.$n" ] || head -c "$n" /tmp/big >"/tmp/big.$n"
        same_mib 9 "$c" "$n" || { fail "zone 9: MiB $c below the write pointer differs from what was written"; bad=1; }
        bytes=$((bytes - n))
        c=$((c + 1))
    done
    [ "$bad" -eq 0 ] && ok "zone 9: all $kept LBAs below the write pointer are intact"
    reset_all
    finish
    ;;
*)
    die "set ZNS_CRASH_PHASE=write or verify"
    ;;
esac
