# shellcheck shell=sh
# fio.sh: fio in zoned block device mode (--zonemode=zbd, O_DIRECT) on the
# namespace: sequential writes with crc32c verification across several
# zones, random reads of the written data, random writes spread over more
# zones than may be open (fio keeps --max_open_zones at the device's limit),
# rewrites that make fio reset full zones, and explicit resets.
# Jobs are size-based and small so the scenario stays short under TCG.
# Optional: ZNS_FIO_ENGINE (default libaio; io_uring works too), e.g.
#   RUN_GUEST_ARGS="--append ZNS_FIO_ENGINE=io_uring" tests/guest/e2e fio
SCENARIO=fio
# shellcheck source=lib.sh
. /guest/lib.sh

ENGINE=${ZNS_FIO_ENGINE:-libaio}
NZ=4 # zones per job
[ "$NZONES" -ge $((2 * NZ)) ] || die "needs at least $((2 * NZ)) zones"
zbytes=$ZNS_ZONE_SIZE
moz=""
[ "$MOR" -gt 0 ] && moz="--max_open_zones=$MOR"

# run_fio NAME fio-args...: run one job, print its summary lines, fail on error.
run_fio() {
    name=$1; shift
    echo "--- fio $name"
    if fio --name="$name" --filename="$DEV" --direct=1 --zonemode=zbd --ioengine="$ENGINE" \
        ${moz:+"$moz"} --group_reporting --eta=never --output=/tmp/fio.out "$@"; then
        ok "fio $name"
    else
        fail "fio $name exited with $?"
        cat /tmp/fio.out
    fi
    grep -E '^ *(read|write) *: IOPS=|^ *(READ|WRITE): bw=|zone reset|verify|err= *[1-9]' /tmp/fio.out | sed "s/^/[fio $name] /"
    if grep -q 'err= *[1-9]' /tmp/fio.out; then fail "fio $name reported errors"; fi
}
full_zones() { report_zones "$1" "$2" | awk '$4 == "FULL"' | wc -l; }

reset_all

# 1. Sequential writes over NZ zones with verification (fio writes each
# zone up to its capacity, then reads everything back and checks crc32c).
run_fio seq-write-verify --rw=write --bs=128k --iodepth=4 --offset=0 --size=$((NZ * zbytes)) \
    --verify=crc32c --do_verify=1 --verify_fatal=1
check "Full zones after the sequential write" "$NZ" "$(full_zones 0 "$NZ")"

# 2. Random reads of the written zones, two jobs (so two CPUs, and two of
# the controller's I/O queues, submit at once).
run_fio rand-read --rw=randread --bs=4k --iodepth=16 --numjobs=2 --offset=0 --size=$((NZ * zbytes)) \
    --io_size=16M --norandommap --randrepeat=0

# 3. Random writes over all the other zones, more than may be open: fio
# keeps only max_open_zones of them open; the device rejects anything
# beyond its limits, so a pass means the limits seen by Linux and enforced
# by the device agree.
rest=$((NZONES - NZ))
[ "$MOR" -eq 0 ] || [ "$rest" -gt "$MOR" ] || say "note: only $rest zones for the random writes, max open is $MOR"
run_fio rand-write-open-limit --rw=randwrite --bs=64k --iodepth=4 --offset=$((NZ * zbytes)) \
    --size=$((rest * zbytes)) --io_size=64M
active=$(report_zones "$NZ" "$rest" | awk '$4 == "IMP_OPENED" || $4 == "EXP_OPENED" || $4 == "CLOSED"' | wc -l)
if [ "$MAR" -eq 0 ] || [ "$active" -le "$MAR" ]; then ok "active zones after random writes: $active"; else fail "$active active zones > $MAR"; fi

# 4. Rewrite the first zones (now Full): without verification fio resets
# full zones itself when it reaches them.
run_fio rewrite-resets --rw=write --bs=256k --iodepth=4 --offset=0 --size=$((2 * zbytes))
check "Full zones after the rewrite" 2 "$(full_zones 0 2)"

# 5. Explicit resets: one zone through the block layer, the rest with a
# Select All reset.
if blkzone reset -o 0 -c 1 "$DEV"; then ok "blkzone reset zone 0"; else fail "blkzone reset zone 0"; fi
expect_zone 0 EMPTY 0
reset_all
check "Empty zones after the resets" "$NZONES" "$(report_zones | awk '$4 == "EMPTY"' | wc -l)"

finish
