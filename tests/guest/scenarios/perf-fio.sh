# shellcheck shell=sh
# perf-fio.sh: the benchmark's guest jobs (bench/run), the same against znsd
# and against QEMU's built-in ZNS device. Not a test: it prints one line per
# job and repetition,
#   PERF <job> <rep> <fio terse v3 line>
#   PERF irqs <job> <rep> <interrupts taken on the NVMe vectors during the job>
# (percentile_list=50:99:99.9, so the three clat percentiles of each
# direction are the first three percentile fields), then
#   PERF report <rep> <reports> <seconds> [<p50 us> <p99 us>]
# for whole-namespace zone reports (latencies when /guest/zns-report-loop is there), and finally "PERF idle-begin" / "PERF
# idle-end" around ZNS_PERF_IDLE seconds of doing nothing (the host samples
# the server's CPU time in between).
# Environment: ZNS_PERF_REPS (default 3), ZNS_PERF_RUNTIME (seconds per job,
# default 5), ZNS_PERF_ZONES (zones read, default 4), ZNS_PERF_SEQ_ZONES (zones
# written by the 128 KiB sequential job, default 32), ZNS_PERF_IDLE (default
# 10), ZNS_FIO_ENGINE (default io_uring), ZNS_PERF_JOBS (comma-separated job
# names to run, default all: seqwrite-128k-qd8, randread-4k-qd1,
# randread-4k-qd32, zonewrite-4k-qd32, report).
SCENARIO=perf
# shellcheck source=lib.sh
. /guest/lib.sh

REPS=${ZNS_PERF_REPS:-3}
RT=${ZNS_PERF_RUNTIME:-5}
NZ=${ZNS_PERF_ZONES:-4}
# The sequential writes get a region of their own, large enough for the job to last: over 4
# zones (256 MiB) it ended after about 0.3 s, and its rate moved by 2x between runs.
SWZ=${ZNS_PERF_SEQ_ZONES:-32}
IDLE=${ZNS_PERF_IDLE:-10}
ENGINE=${ZNS_FIO_ENGINE:-io_uring}
JOBS=${ZNS_PERF_JOBS:-all}
ZB=$ZNS_ZONE_SIZE
moz=""
[ "$MOR" -gt 0 ] && moz="--max_open_zones=$MOR"
[ "$NZONES" -ge $((2 * NZ + 8)) ] || die "needs at least $((2 * NZ + 8)) zones"
[ "$NZONES" -ge "$SWZ" ] || SWZ=$NZONES

# The block layer's scheduler is left as is (none; zone write plugging orders
# the writes of a zone).
want() { [ "$JOBS" = all ] || case ",$JOBS," in *",$1,"*) true ;; *) false ;; esac; }
# Interrupts taken so far on the NVMe controller's vectors, all CPUs.
nvme_irqs() {
    awk '/nvme/ { for (i = 2; i <= NF; i++) { if ($i !~ /^[0-9]+$/) break; s += $i } }
        END { print s + 0 }' /proc/interrupts
}
perf_fio() { # JOB REP fio-args...
    job=$1 rep=$2; shift 2
    want "$job" || return 0
    irq0=$(nvme_irqs)
    if fio --name="$job" --filename="$DEV" --direct=1 --zonemode=zbd --ioengine="$ENGINE" \
        ${moz:+"$moz"} --group_reporting --eta=never --minimal --percentile_list=50:99:99.9 \
        --output=/tmp/perf.out "$@"; then
        sed "s/^/PERF $job $rep /" /tmp/perf.out
        echo "PERF irqs $job $rep $(($(nvme_irqs) - irq0))"
    else
        fail "fio $job exited with $?"
        cat /tmp/perf.out
    fi
}

rep=1
while [ "$rep" -le "$REPS" ]; do
    # 128 KiB sequential writes over SWZ zones, QD8 (zones reset first).
    if want seqwrite-128k-qd8; then
        blkzone reset -o 0 -c "$SWZ" "$DEV" || fail "reset"
        perf_fio seqwrite-128k-qd8 "$rep" --rw=write --bs=128k --iodepth=8 --offset=0 \
            --size=$((SWZ * ZB)) --runtime="$RT"
    fi
    # Make sure the read region is fully written (a time-limited write may stop early).
    blkzone reset -o 0 -c "$NZ" "$DEV" || fail "reset"
    fio --name=fill --filename="$DEV" --direct=1 --zonemode=zbd --ioengine="$ENGINE" ${moz:+"$moz"} \
        --rw=write --bs=512k --iodepth=4 --offset=0 --size=$((NZ * ZB)) --eta=never --output=/dev/null ||
        fail "fill"
    perf_fio randread-4k-qd1 "$rep" --rw=randread --bs=4k --iodepth=1 --offset=0 \
        --size=$((NZ * ZB)) --runtime="$RT" --time_based --norandommap --randrepeat=0
    perf_fio randread-4k-qd32 "$rep" --rw=randread --bs=4k --iodepth=32 --offset=0 \
        --size=$((NZ * ZB)) --runtime="$RT" --time_based --norandommap --randrepeat=0
    # 4 KiB writes at QD32 spread over 8 zones (fio picks a zone, writes at its
    # write pointer; the block layer turns them into writes at each zone's wp).
    blkzone reset -o $((2 * NZ * ZB / 512)) -c 8 "$DEV" || fail "reset"
    perf_fio zonewrite-4k-qd32 "$rep" --rw=randwrite --bs=4k --iodepth=32 \
        --offset=$((2 * NZ * ZB)) --size=$((8 * ZB)) --runtime="$RT" --time_based
    # Whole-namespace zone reports, one at a time, from one process (/guest/zns-report-loop,
    # which bench/run copies in: BLKREPORTZONE in a loop). Without it, `blkzone report` in a
    # loop, which under TCG times mostly the start-up of the processes.
    want report || { rep=$((rep + 1)); continue; }
    if [ -x /guest/zns-report-loop ]; then
        if out=$(/guest/zns-report-loop "$DEV" "$RT"); then
            echo "PERF report $rep $out"
        else
            fail "zns-report-loop"
        fi
    else
        n=0
        t0=$(cut -d' ' -f1 /proc/uptime)
        while :; do
            blkzone report "$DEV" >/dev/null || { fail "blkzone report"; break; }
            n=$((n + 1))
            el=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }')
            if awk -v e="$el" -v r="$RT" 'BEGIN { exit !(e >= r) }'; then break; fi
        done
        echo "PERF report $rep $n $el"
    fi
    rep=$((rep + 1))
done
reset_all

echo "PERF idle-begin"
sleep "$IDLE"
echo "PERF idle-end"
finish
