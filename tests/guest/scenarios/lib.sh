# shellcheck shell=sh
# The geometry variables are used by the scenarios that source this file.
# shellcheck disable=SC2034

# Shared helpers for the guest scenarios (busybox sh, sourced as
# /guest/lib.sh; pass it with `run-guest --file scenarios/lib.sh`).
#
# The expected configuration arrives as environment words on the kernel
# command line (run-guest --append), all sizes in bytes:
#   ZNS_LBA_SIZE    logical block size (512 or 4096)
#   ZNS_NS_SIZE     namespace size
#   ZNS_ZONE_SIZE   zone size
#   ZNS_ZONE_CAP    zone capacity
#   ZNS_MAX_OPEN    open zone limit (0 = unlimited)
#   ZNS_MAX_ACTIVE  active zone limit (0 = unlimited)
#   ZNS_ZDES        zone descriptor extension size in bytes (0 = none)
# Optional: ZNS_DEV (default: the first host-managed NVMe namespace).

failures=0
T0=$(cut -d' ' -f1 /proc/uptime)

say() { echo "[$SCENARIO] $*"; }
fail() { echo "[$SCENARIO] FAIL: $*"; failures=$((failures + 1)); }
die() { echo "[$SCENARIO] FATAL: $*"; exit 2; }
ok() { [ -n "${ZNS_QUIET_OK:-}" ] || echo "[$SCENARIO] ok: $*"; }

# check WHAT EXPECTED ACTUAL
check() {
    if [ "$2" = "$3" ]; then ok "$1 = $3"; else fail "$1: expected '$2', got '$3'"; fi
}

# finish: the scenario's exit status (0 only without any failure).
finish() {
    t=$(awk -v a="$T0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$failures" -eq 0 ]; then
        say "PASS (${t}s)"
        exit 0
    fi
    say "FAILED: $failures check(s) (${t}s)"
    exit 1
}

need_env() {
    for v in "$@"; do
        eval "val=\${$v:-}"
        [ -n "$val" ] || die "environment $v is not set (pass it with run-guest --append $v=...)"
    done
}

# Geometry, in LBAs.
need_env ZNS_LBA_SIZE ZNS_NS_SIZE ZNS_ZONE_SIZE ZNS_ZONE_CAP ZNS_MAX_OPEN ZNS_MAX_ACTIVE ZNS_ZDES
LBA=$ZNS_LBA_SIZE
ZSZE=$((ZNS_ZONE_SIZE / LBA))
ZCAP=$((ZNS_ZONE_CAP / LBA))
NZONES=$((ZNS_NS_SIZE / ZNS_ZONE_SIZE))
NSZE=$((NZONES * ZSZE))
MOR=$ZNS_MAX_OPEN
MAR=$ZNS_MAX_ACTIVE

find_dev() {
    for q in /sys/block/nvme*n*/queue/zoned; do
        [ -e "$q" ] || continue
        [ "$(cat "$q")" = host-managed ] || continue
        d=${q%/queue/zoned}
        echo "/dev/${d##*/}"
        return 0
    done
    return 1
}
DEV=${ZNS_DEV:-$(find_dev)} || {
    echo "[$SCENARIO] no host-managed NVMe namespace; block devices:"
    ls /sys/block
    dmesg | grep -i nvme | tail -20
    die "no zoned NVMe namespace in the guest"
}
BDEV=${DEV##*/}

slba() { echo $(($1 * ZSZE)); }

# Zone report through nvme-cli, one line per zone:
#   slba wp cap STATE attrs       (decimal; wp of a Full zone as reported)
# report_zones [FIRST_ZONE [COUNT [extra nvme-cli args]]]
report_zones() {
    first=${1:-0}
    count=${2:-$NZONES}
    if [ "$#" -ge 2 ]; then shift 2; else set --; fi
    nvme zns report-zones "$DEV" -s "$(slba "$first")" -d "$count" -o json "$@" |
        awk '
            function val(s) { sub(/^[^:]*:[ \t]*/, "", s); gsub(/[",]/, "", s); return s }
            /"slba"/  { slba = val($0) }
            /"wp"/    { wp = val($0) }
            /"cap"/   { cap = val($0) }
            /"state"/ { st = val($0) }
            /"attrs"/ { at = val($0); print slba, wp, cap, st, at }'
}

# zone_line K: the report line of zone K.
zone_line() { report_zones "$1" 1; }
zone_state() { zone_line "$1" | awk '{ print $4 }'; }

# expect_zone K STATE [WP_OFFSET_LBAS] [ATTRS]: zone K has STATE (nvme-cli
# name: EMPTY IMP_OPENED EXP_OPENED CLOSED FULL READONLY OFFLINE) and,
# unless Full, its write pointer at ZSLBA + WP_OFFSET_LBAS.
expect_zone() {
    k=$1 want=$2 woff=${3:-} wattr=${4:-}
    line=$(zone_line "$k")
    # shellcheck disable=SC2086 # split the report line into fields
    set -- $line
    if [ "$#" -lt 5 ]; then fail "zone $k: no report ($line)"; return; fi
    z_slba=$1 z_wp=$2 z_cap=$3 z_st=$4 z_at=$5
    bad=""
    [ "$z_slba" = "$(slba "$k")" ] || bad="$bad slba=$z_slba"
    [ "$z_st" = "$want" ] || bad="$bad state=$z_st"
    if [ -n "$woff" ] && [ "$want" != FULL ]; then
        [ "$z_wp" = "$(($(slba "$k") + woff))" ] || bad="$bad wp=+$((z_wp - $(slba "$k")))"
    fi
    if [ -n "$wattr" ]; then
        [ $((z_at & 0x80)) -eq $((wattr & 0x80)) ] || bad="$bad attrs=$z_at"
    fi
    if [ -n "$bad" ]; then
        fail "zone $k: expected $want${woff:+ wp=+$woff}${wattr:+ attrs=$wattr}, got:$bad"
    else
        ok "zone $k $want${woff:+ wp=+$woff}${wattr:+ attrs=$wattr}"
    fi
}

# expect_true DESCRIPTION command...: ok when the command succeeds.
expect_true() {
    d=$1; shift
    if "$@"; then ok "$d"; else fail "$d"; fi
}

# nvme_ok DESCRIPTION nvme-cli args...: the command must succeed.
nvme_ok() {
    d=$1; shift
    if out=$(nvme "$@" 2>&1); then
        ok "$d"
    else
        fail "$d: nvme $* failed: $out"
    fi
}

# expect_status DESCRIPTION HEX_STATUS NAME nvme-cli args...: the command
# must fail with that NVMe status (SCT/SC, 11 bits; DNR and More ignored).
# NAME is only for the message; nvme-cli prints "NVMe status: <name>(0x...)".
expect_status() {
    d=$1 want=$2 name=$3; shift 3
    if out=$(nvme "$@" 2>&1); then
        fail "$d: succeeded, expected $name ($want): $out"
        return
    fi
    code=$(echo "$out" | sed -n 's/.*NVMe status: .*(\(0x[0-9a-fA-F]*\)).*/\1/p' | tail -1)
    if [ -z "$code" ]; then
        fail "$d: failed without an NVMe status, expected $name ($want): $out"
    elif [ $((code & 0x7ff)) -eq $((want)) ]; then
        ok "$d -> $(echo "$out" | sed -n 's/.*NVMe status: \([^:(]*\).*/\1/p' | tail -1) ($code)"
    else
        fail "$d: expected $name ($want), got: $out"
    fi
}

# A block of LBA-sized data with a recognisable pattern.
mkblock() { # FILE NLBAS TAG
    : >"$1"
    i=0
    while [ "$i" -lt "$2" ]; do
        printf '%s\n' "$3 lba $i" | dd bs="$LBA" conv=sync 2>/dev/null >>"$1"
        i=$((i + 1))
    done
}

# write_lbas SLBA NLBAS [FILE]: nvme write of NLBAS blocks at SLBA.
write_lbas() {
    f=${3:-/tmp/wr.$2}
    [ -e "$f" ] || mkblock "$f" "$2" data
    nvme write "$DEV" -s "$1" -c "$(($2 - 1))" -z "$(($2 * LBA))" -d "$f" >/dev/null 2>&1
}

# bigdata: 1 MiB of deterministic data (so a later boot can regenerate it).
bigdata() { seq 1 300000 | head -c 1048576; }

reset_all() {
    nvme zns reset-zone "$DEV" -a >/dev/null 2>&1 || fail "reset-zone -a failed"
}

# emit_state TAG FILE: print FILE on the console for the host, which hands
# it to a later boot (multi-boot scenarios; e2e's capture_state reads it):
# "@@TAG <line>" per line, then "@@TAG-end <lines> <md5>", so the host can
# tell a complete copy from one that kernel messages or a crash mangled.
emit_state() {
    sed "s/^/@@$1 /" "$2"
    echo "@@$1-end $(wc -l <"$2") $(md5sum <"$2" | cut -d' ' -f1)"
}
