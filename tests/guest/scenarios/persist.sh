# shellcheck shell=sh
# persist.sh: fio's data and the zone states survive restarts of the
# controller process, a clean one and a SIGKILL after a Flush. Three boots,
# driven by e2e (znsd only); the zone report each boot leaves is printed on
# the console (emit_state), and e2e hands it to the next boot as
# /guest/persist-zones.txt with the opened zones turned into Closed ones.
#
# ZNS_PERSIST_PHASE=1: reset every zone, write set A (zones 0-5, below),
#   flush, print the report; the guest powers off and e2e stops znsd with
#   SIGTERM.
# ZNS_PERSIST_PHASE=2: the report equals the one of boot 1 (opened zones
#   now Closed) and fio's verify pass over set A succeeds; then write set B
#   (zones 8-13), flush, print the report and ===ZNS-PERSIST-FLUSHED===, and
#   wait: e2e kills znsd with SIGKILL, so only the Flush (and the zone
#   management commands, which are durability points of their own) made
#   anything durable.
# ZNS_PERSIST_PHASE=3: the report equals the one of boot 2 (opened zones now
#   Closed), fio's verify passes over sets A and B succeed (A has now been
#   through two restarts). Ends with every zone reset.
#
# A set at zone base b:
#   b+0  fio, written to its capacity        -> Full
#   b+1  fio, 5 MiB, 64 KiB writes           -> Implicitly Opened
#   b+2  fio, 1 MiB, 4 KiB writes, QD 8      -> Implicitly Opened
#   b+3  fio, 3 MiB, then Close              -> Closed
#   b+4  Open, nothing written               -> Explicitly Opened (comes back
#                                               Closed with wp at the start)
#   b+5  fio, 2 MiB, then Finish             -> Full
# The zone management commands come first and the fio writes to b+0..b+2
# last, so in boot 2 only the Flush can make those three zones durable
# before the SIGKILL (writes alone are not durable with --cache writeback).
#
# fio: the write pass runs in zoned mode (--zonemode=zbd) with crc32c verify
# data and an immediate verify; the later passes run the same jobs (same
# order, so the same seeds) with --verify_only, which issues only the reads.
# Those run with --zonemode=none: in zoned mode fio resets the zones of a
# write job with verification before it starts, and would put its writes
# at the (now advanced) write pointers. One job per zone, each writing
# from the zone start, gives the same offsets in both modes.
SCENARIO=persist
# shellcheck source=lib.sh
. /guest/lib.sh

ENGINE=${ZNS_FIO_ENGINE:-libaio}
[ "$NZONES" -ge 14 ] || die "needs at least 14 zones"
# Boot 2 holds set A's four Closed zones and opens up to six of set B.
[ "$MAR" -eq 0 ] || [ "$MAR" -ge 10 ] || die "needs max active zones >= 10 (have $MAR)"
[ "$MOR" -eq 0 ] || [ "$MOR" -ge 6 ] || die "needs max open zones >= 6 (have $MOR)"
[ "$ZNS_ZONE_CAP" -ge $((8 * 1048576)) ] || die "needs a zone capacity of at least 8 MiB"
MIB=1048576

# fio_jobs BASE SEED MODE ZONES...: a job file for the set at BASE, jobs for
# the given zone offsets (in this order), MODE write (zoned writes with
# verify data and an immediate verify) or verify (verify_only reads).
# fio checks every written block's crc32c and its header's magic, length and
# offset (a block of zeros, of other data or from elsewhere fails); for
# write-only jobs it does not check the header's seed, so SEED only makes
# the two sets' data differ.
fio_jobs() {
    base=$1 seed=$2 mode=$3; shift 3
    echo "[global]"
    echo "filename=$DEV"
    echo "direct=1"
    echo "ioengine=$ENGINE"
    echo "rw=write"
    echo "verify=crc32c"
    echo "verify_fatal=1"
    echo "randseed=$seed"
    if [ "$mode" = write ]; then
        echo "zonemode=zbd"
        echo "do_verify=1"
    else
        echo "verify_only=1"
    fi
    for o in "$@"; do
        z=$((base + o))
        case $o in
            0) bytes=$ZNS_ZONE_CAP bs=128k qd=4 ;;
            1) bytes=$((5 * MIB)) bs=64k qd=4 ;;
            2) bytes=$MIB bs=4k qd=8 ;;
            3) bytes=$((3 * MIB)) bs=32k qd=2 ;;
            5) bytes=$((2 * MIB)) bs=128k qd=2 ;;
            *) die "no fio job for zone offset $o" ;;
        esac
        echo "[zone$z]"
        echo "offset=$(($(slba "$z") * LBA))"
        # zoned mode wants the job's region in whole zones; io_size stops
        # the writes where they should.
        if [ "$mode" = write ]; then echo "size=$ZNS_ZONE_SIZE"; else echo "size=$bytes"; fi
        echo "io_size=$bytes"
        echo "bs=$bs"
        echo "iodepth=$qd"
    done
}

# run_fio NAME JOBFILE: run it, show its summary, fail on any error.
run_fio() {
    echo "--- fio $1"
    if fio --eta=never --output=/tmp/fio.out "$2"; then
        ok "fio $1"
    else
        fail "fio $1 exited with an error"
        cat /tmp/fio.out
    fi
    grep -E 'verify|err= *[1-9]|(READ|WRITE): bw=' /tmp/fio.out | sed "s/^/[fio $1] /"
    if grep -q 'err= *[1-9]' /tmp/fio.out; then fail "fio $1 reported errors"; fi
}

# write_set BASE SEED: set BASE's zones as described at the top.
write_set() {
    b=$1
    fio_jobs "$b" "$2" write 3 5 >/tmp/set$b-pre.fio
    run_fio "set $b: zones $((b + 3)),$((b + 5))" /tmp/set$b-pre.fio
    nvme_ok "close zone $((b + 3))" zns close-zone "$DEV" -s "$(slba $((b + 3)))"
    nvme_ok "finish zone $((b + 5))" zns finish-zone "$DEV" -s "$(slba $((b + 5)))"
    nvme_ok "open zone $((b + 4))" zns open-zone "$DEV" -s "$(slba $((b + 4)))"
    fio_jobs "$b" "$2" write 0 1 2 >/tmp/set$b-main.fio
    run_fio "set $b: zones $b-$((b + 2))" /tmp/set$b-main.fio
    nvme_ok "flush" flush "$DEV"
    # What the set must look like now, before it goes to the host.
    expect_zone "$b" FULL
    expect_zone $((b + 1)) IMP_OPENED $((5 * MIB / LBA))
    expect_zone $((b + 2)) IMP_OPENED $((MIB / LBA))
    expect_zone $((b + 3)) CLOSED $((3 * MIB / LBA))
    expect_zone $((b + 4)) EXP_OPENED 0
    expect_zone $((b + 5)) FULL
}

# verify_set BASE SEED: fio's verify-only pass over the data write_set wrote.
verify_set() {
    fio_jobs "$1" "$2" verify 3 5 >/tmp/set$1-pre-v.fio
    run_fio "verify set $1: zones $(($1 + 3)),$(($1 + 5))" /tmp/set$1-pre-v.fio
    fio_jobs "$1" "$2" verify 0 1 2 >/tmp/set$1-main-v.fio
    run_fio "verify set $1: zones $1-$(($1 + 2))" /tmp/set$1-main-v.fio
}

# same_report: the zone report equals /guest/persist-zones.txt (made by e2e
# from the previous boot's report), the write pointers of Full zones aside.
same_report() {
    [ -f /guest/persist-zones.txt ] || die "no /guest/persist-zones.txt (run this phase from e2e)"
    report_zones >/tmp/zones.now
    d=$(awk '
        NR == FNR { e[$1] = $0; n++; next }
        { m++; split(e[$1], x, " ")
          if (!($1 in e)) { print "unexpected zone: " $0; next }
          if (x[3] != $3 || x[4] != $4 || x[5] != $5 || (x[4] != "FULL" && x[2] != $2))
              print "zone at " $1 ": expected [" e[$1] "] got [" $0 "]" }
        END { if (n != m) print "expected " n " zones, got " m }' /guest/persist-zones.txt /tmp/zones.now)
    if [ -z "$d" ]; then
        ok "zone report after the restart = the report before it, opened zones now Closed ($(grep -c CLOSED /tmp/zones.now) Closed, $(grep -c FULL /tmp/zones.now) Full)"
    else
        echo "$d" | head -20 | sed 's/^/  /'
        fail "zone report after the restart differs from the one before it"
    fi
}

# show_state: print the report for e2e (emit_state) after the flush.
show_state() {
    report_zones >/tmp/zones.out
    emit_state persist-zones /tmp/zones.out
}

case ${ZNS_PERSIST_PHASE:-} in
1)
    reset_all
    write_set 0 1001
    show_state
    finish
    ;;
2)
    same_report
    verify_set 0 1001
    write_set 8 2002
    # If anything failed so far there is no point in the kill: finish,
    # and e2e reports the boot as failed (no marker).
    [ "$failures" -eq 0 ] || finish
    show_state
    echo "===ZNS-PERSIST-FLUSHED==="
    # e2e kills the controller now; a guest that is still here after two
    # minutes was forgotten.
    sleep 120
    fail "the controller was not killed"
    finish
    ;;
3)
    same_report
    verify_set 0 1001
    verify_set 8 2002
    reset_all
    finish
    ;;
*)
    die "set ZNS_PERSIST_PHASE=1, 2 or 3"
    ;;
esac
