# shellcheck shell=sh
# soak.sh: a long mixed load across several queues and zones must end with
# no I/O error, no data mismatch and a consistent zone report. e2e samples
# znsd's memory on the host meanwhile (its RSS must stay flat).
#
#   ZNS_SOAK_SECS   length of the load (e2e: 60, 600 with --soak)
#   ZNS_SOAK_WARM   seconds into the load after which the controller counts
#                   as warmed up: the guest prints ===ZNS-SOAK-WARM===, and
#                   ===ZNS-SOAK-LOAD-DONE=== when the load has stopped, the
#                   two points where e2e takes the RSS it compares.
#
# Before the load fio fills zones 0-1 with crc32c verify data; after it,
# fio's verify-only pass must find that data intact (it sat next to all the
# churn). Then, at once, for ZNS_SOAK_SECS:
#   fio (zoned mode, O_DIRECT, time based), pinned so both CPUs submit:
#     seq-write   zones 2-5, 128 KiB QD 8, two zones at a time; fio resets
#                 each zone it finds Full, so the zones are rewritten
#     rand-write  zones 6-9, 4-64 KiB QD 4, two zones at a time, resets
#     rand-read   two jobs, 4 KiB QD 16 anywhere in zones 0-11, below and
#                 above the write pointers, racing the writes and resets
#                 (--zonemode=none: in zoned mode fio serialises them
#                 behind the writers' zone locks, a few reads per second)
#   a verify loop: fio runs again and again, each run resetting zones
#     10-11, writing 24 MiB with crc32c and reading it back to check it (a
#     time-based fio job cannot do this: it does not reset the zones between
#     its loops, and with verification on it will not write a Full zone, so
#     it idles once both zones are full)
#   an append loop (nvme-cli Zone Append, 64 KiB, zone 12), which reads
#     every 8th append back at the LBA the controller returned, and every
#     64 appends (or when the zone is nearly full) finishes the zone, checks
#     it is Full, and resets it
#   a zone management loop (zone 13): write, explicit open/close every other
#     round, finish (must be Full), reset (must be Empty)
# fio's open zones plus the three loops' stay within the open limit, so no
# command may fail. With e2e's nvme.write_queues=2 the kernel splits reads
# and writes onto separate queues: four I/O queues for two CPUs.
#
# Prints `@@soak secs=S ios=N errors=E` for e2e (I/Os: fio's issued reads
# and writes, the appends, their read-backs and the loops' commands).
SCENARIO=soak
# shellcheck source=lib.sh
. /guest/lib.sh

SECS=${ZNS_SOAK_SECS:-60}
WARM=${ZNS_SOAK_WARM:-$((SECS / 4))}
ENGINE=${ZNS_FIO_ENGINE:-libaio}
APPZ=12
MGMTZ=13
[ "$NZONES" -ge 14 ] || die "needs at least 14 zones"
# fio's four zones (two per writing job) and the loops' three.
[ "$MOR" -eq 0 ] || [ "$MOR" -ge 7 ] || die "needs max open zones >= 7 (have $MOR)"
[ "$MAR" -eq 0 ] || [ "$MAR" -ge 7 ] || die "needs max active zones >= 7 (have $MAR)"

dmesg -n 1 2>/dev/null || true
say "queues: $(dmesg | sed -n 's/.*nvme[0-9]*: \([0-9/]* default\/read\/poll queues\).*/\1/p' | tail -1)"
dmesg -c >/dev/null
reset_all
rm -f /tmp/soak.stop
Z=$ZNS_ZONE_SIZE

# --- the append loop
append_loop() {
    n=0 e=0 rb=0 rs=0
    na=$((65536 / LBA))
    mkblock /tmp/app.blk "$na" "soak append"
    zs=$(slba $APPZ)
    while [ ! -e /tmp/soak.stop ]; do
        # A distinct block each time, so a read-back of the wrong LBA fails.
        printf '%08d' "$n" | dd of=/tmp/app.blk bs=8 seek=4 conv=notrunc 2>/dev/null
        if ! out=$(nvme zns zone-append "$DEV" -s "$zs" -z $((na * LBA)) -d /tmp/app.blk 2>&1); then
            say "append error: $out"
            e=$((e + 1))
            break
        fi
        n=$((n + 1))
        hex=$(echo "$out" | sed -n 's/.*appended data to LBA \([0-9a-fA-Fx]*\).*/\1/p')
        case $hex in 0x*) at=$((hex)) ;; '') say "append: no LBA in '$out'"; e=$((e + 1)); break ;; *) at=$((0x$hex)) ;; esac
        if [ $((n % 8)) -eq 0 ]; then
            if nvme read "$DEV" -s "$at" -c $((na - 1)) -z $((na * LBA)) -d /tmp/app.rd >/dev/null 2>&1 &&
                cmp -s /tmp/app.blk /tmp/app.rd; then
                rb=$((rb + 1))
            else
                say "append $n: LBA $at does not read back what was appended"
                e=$((e + 1))
            fi
        fi
        # Finish and reset it now and then (the next append starts over).
        if [ $((n % 64)) -eq 0 ] || [ $((at + 2 * na)) -gt $((zs + ZCAP)) ]; then
            nvme zns finish-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "finish of the append zone failed"; e=$((e + 1)); }
            st=$(zone_state $APPZ)
            [ "$st" = FULL ] || { say "after a finish the append zone is $st"; e=$((e + 1)); }
            nvme zns reset-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "reset of the append zone failed"; e=$((e + 1)); }
            rs=$((rs + 1))
        fi
    done
    echo "$n $rb $rs $e" >/tmp/soak.append
}

# --- the verify loop
verify_loop() {
    r=0 ios=0 e=0
    while [ ! -e /tmp/soak.stop ]; do
        if fio --eta=never --output=/tmp/vloop.out /tmp/soak-verify.fio && ! grep -q 'err= *[1-9]' /tmp/vloop.out; then
            r=$((r + 1))
            ios=$((ios + $(sed -n 's/.*issued rwts: total=\([0-9]*\),\([0-9]*\),.*/\1 \2/p' /tmp/vloop.out |
                awk '{ s += $1 + $2 } END { print s + 0 }')))
        else
            say "verify loop: round $r failed"
            grep -E 'verify|err=' /tmp/vloop.out | head -5
            e=$((e + 1))
            break
        fi
    done
    echo "$r $ios $e" >/tmp/soak.verify
}

# --- the zone management loop
mgmt_loop() {
    c=0 ops=0 e=0
    zs=$(slba $MGMTZ)
    mkblock /tmp/mgmt.blk 8 "soak mgmt"
    while [ ! -e /tmp/soak.stop ]; do
        n=$((c % 8 + 1))
        if [ $((c % 2)) -eq 1 ]; then
            nvme zns open-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "open failed (round $c)"; e=$((e + 1)); }
            ops=$((ops + 1))
        fi
        nvme write "$DEV" -s "$zs" -c $((n - 1)) -z $((n * LBA)) -d /tmp/mgmt.blk >/dev/null 2>&1 ||
            { say "write of $n LBAs failed (round $c)"; e=$((e + 1)); }
        if [ $((c % 2)) -eq 1 ]; then
            nvme zns close-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "close failed (round $c)"; e=$((e + 1)); }
            st=$(zone_state $MGMTZ)
            [ "$st" = CLOSED ] || { say "after a close the zone is $st (round $c)"; e=$((e + 1)); }
            ops=$((ops + 2))
        fi
        nvme zns finish-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "finish failed (round $c)"; e=$((e + 1)); }
        st=$(zone_state $MGMTZ)
        [ "$st" = FULL ] || { say "after a finish the zone is $st (round $c)"; e=$((e + 1)); }
        nvme zns reset-zone "$DEV" -s "$zs" >/dev/null 2>&1 || { say "reset failed (round $c)"; e=$((e + 1)); }
        st=$(zone_line $MGMTZ | awk '{ print $4, $2 }')
        [ "$st" = "EMPTY $zs" ] || { say "after a reset the zone is $st (round $c)"; e=$((e + 1)); }
        ops=$((ops + 6))
        c=$((c + 1))
        [ "$e" -lt 5 ] || break
    done
    echo "$c $ops $e" >/tmp/soak.mgmt
}

# static_jobs MODE: one job per zone 0-1, each writing the zone to its
# capacity; MODE write (zoned, with an immediate verify) or verify
# (verify_only, zonemode none: see persist.sh for why).
static_jobs() {
    echo "[global]"
    echo "filename=$DEV"
    echo "direct=1"
    echo "ioengine=$ENGINE"
    echo "rw=write"
    echo "bs=128k"
    echo "iodepth=4"
    echo "verify=crc32c"
    echo "verify_fatal=1"
    echo "io_size=$ZNS_ZONE_CAP"
    if [ "$1" = write ]; then
        printf 'zonemode=zbd\ndo_verify=1\nsize=%s\n' "$ZNS_ZONE_SIZE"
    else
        printf 'verify_only=1\nsize=%s\n' "$ZNS_ZONE_CAP"
    fi
    for z in 0 1; do
        printf '[static%s]\noffset=%s\n' "$z" $((z * ZNS_ZONE_SIZE))
    done
}
static_jobs write >/tmp/static-w.fio
if fio --eta=never --output=/tmp/static.out /tmp/static-w.fio && ! grep -q 'err= *[1-9]' /tmp/static.out; then
    ok "fio filled zones 0-1 with verify data"
else
    cat /tmp/static.out
    die "fio could not fill zones 0-1"
fi

cat >/tmp/soak.fio <<EOF
[global]
filename=$DEV
direct=1
ioengine=$ENGINE
zonemode=zbd
max_open_zones=4
time_based=1
runtime=$SECS
randrepeat=0

[seq-write]
rw=write
bs=128k
iodepth=8
offset=$((2 * Z))
size=$((4 * Z))
job_max_open_zones=2
cpus_allowed=0

[rand-write]
rw=randwrite
bsrange=4k-64k
iodepth=4
offset=$((6 * Z))
size=$((4 * Z))
job_max_open_zones=2
cpus_allowed=1

[rand-read]
zonemode=none
rw=randread
bs=4k
iodepth=16
offset=0
size=$((12 * Z))
numjobs=2
cpus_allowed=0-1
cpus_allowed_policy=split
EOF

cat >/tmp/soak-verify.fio <<EOF
[verify]
filename=$DEV
direct=1
ioengine=$ENGINE
zonemode=zbd
rw=write
bs=64k
iodepth=4
offset=$((10 * Z))
size=$((2 * Z))
io_size=24m
verify=crc32c
do_verify=1
verify_fatal=1
EOF

say "load: ${SECS}s (warm after ${WARM}s)"
(sleep "$WARM"; echo "===ZNS-SOAK-WARM===") &
warm_pid=$!
append_loop &
app_pid=$!
mgmt_loop &
mgmt_pid=$!
verify_loop &
verify_pid=$!
fio_rc=0
fio --eta=never --output=/tmp/fio.out /tmp/soak.fio || fio_rc=$?
touch /tmp/soak.stop
wait "$app_pid" "$mgmt_pid" "$verify_pid"
kill "$warm_pid" 2>/dev/null || true
echo "===ZNS-SOAK-LOAD-DONE==="

# --- what happened
errors=0
grep -E '^[a-z-]+: \(groupid|err=|issued rwts|verify|(read|write): IOPS=' /tmp/fio.out | sed 's/^/[fio] /'
if [ "$fio_rc" -ne 0 ]; then
    fail "fio exited with $fio_rc"
    tail -30 /tmp/fio.out
    errors=$((errors + 1))
fi
fio_errs=$(grep -c 'err= *[1-9]' /tmp/fio.out || true)
[ "$fio_errs" -eq 0 ] || { fail "fio: $fio_errs job(s) reported errors"; errors=$((errors + fio_errs)); }
# "issued rwts: total=R,W,T,X" per job: reads and writes.
fio_ios=$(sed -n 's/.*issued rwts: total=\([0-9]*\),\([0-9]*\),.*/\1 \2/p' /tmp/fio.out | awk '{ s += $1 + $2 } END { print s + 0 }')
check "fio jobs that ran" 4 "$(grep -c 'issued rwts' /tmp/fio.out)"
# shellcheck disable=SC2046 # the loops' counters
set -- $(cat /tmp/soak.verify 2>/dev/null || echo 0 0 1)
say "verify loop: $1 rounds of write, read back and check, $2 I/Os, $3 errors"
[ "$3" -eq 0 ] || fail "verify loop: $3 errors"
[ "$1" -gt 0 ] || fail "verify loop: no round completed"
errors=$((errors + $3))
verify_ios=$2
# shellcheck disable=SC2046 # the loops' counters
set -- $(cat /tmp/soak.append 2>/dev/null || echo 0 0 0 1)
say "append loop: $1 appends, $2 read back and compared, $3 finish+reset rounds, $4 errors"
app_ios=$(($1 + $2 + 2 * $3)) appends=$1
[ "$4" -eq 0 ] || fail "append loop: $4 errors"
[ "$1" -gt 0 ] || fail "append loop: no append completed"
errors=$((errors + $4))
# shellcheck disable=SC2046
set -- $(cat /tmp/soak.mgmt 2>/dev/null || echo 0 0 1)
say "zone management loop: $1 rounds, $2 commands, $3 errors"
[ "$3" -eq 0 ] || fail "zone management loop: $3 errors"
[ "$1" -gt 0 ] || fail "zone management loop: no round completed"
errors=$((errors + $3))
mgmt_ios=$2
# Whatever the kernel saw go wrong, even what fio or nvme-cli retried away.
if dmesg | grep -iE 'I/O error|blk_update_request|nvme.*(timeout|abort|reset|error)' >/tmp/dmesg.err; then
    sed 's/^/  /' /tmp/dmesg.err | head -10
    fail "the kernel logged I/O errors"
    errors=$((errors + $(wc -l </tmp/dmesg.err)))
fi
# The data written before the load is still there.
static_jobs verify >/tmp/static-v.fio
if fio --eta=never --output=/tmp/static.out /tmp/static-v.fio && ! grep -q 'err= *[1-9]' /tmp/static.out; then
    ok "fio verify-only pass over zones 0-1 after the load"
else
    cat /tmp/static.out
    fail "zones 0-1 no longer hold what fio wrote before the load"
    errors=$((errors + 1))
fi
# The zones are consistent: no zone went Read Only or Offline, and every
# zone the load wrote resets.
bad=$(report_zones | awk '$4 == "READONLY" || $4 == "OFFLINE"' | wc -l)
check "zones Read Only or Offline after the load" 0 "$bad"
reset_all
check "Empty zones after the final reset" "$NZONES" "$(report_zones | awk '$4 == "EMPTY"' | wc -l)"
say "fio: $fio_ios I/Os, verify loop $verify_ios, $appends appends"
echo "@@soak secs=$SECS ios=$((fio_ios + verify_ios + app_ios + mgmt_ios)) errors=$errors"
finish
