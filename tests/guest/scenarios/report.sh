# shellcheck shell=sh
# report.sh: zone reports in the guest (nvme zns report-zones and the block
# layer's blkzone report) match the zone list the host expects.
#
# Expected zones: /guest/zones.txt if present (pass it with --file), one
# line per zone, LBAs in decimal:
#     index start_lba cap_lba wp_lba STATE [attrs]
# STATE as nvme-cli names it (EMPTY IMP_OPENED EXP_OPENED CLOSED FULL
# READONLY OFFLINE); attrs: the zone attribute byte (bit 7 = descriptor
# extension valid). Without the file every zone is expected Empty.
#
# ZNS_PERSISTED=1: the zones come from zone-mgmt.sh's run before a restart
# of the controller; its data (zone 1) and descriptor extension (zone 3)
# must have survived too, and so must zone 7's 1 MiB.
#
# Then (unless ZNS_REPORT_MIXED=0) it builds a mix of zone states itself,
# checks the reports again, and resets everything.
SCENARIO=report
# shellcheck source=lib.sh
. /guest/lib.sh

zcond() { # nvme-cli state name -> Linux zone condition (blkzone zcond)
    case $1 in
        EMPTY) echo 1 ;; IMP_OPENED) echo 2 ;; EXP_OPENED) echo 3 ;; CLOSED) echo 4 ;;
        READONLY) echo 13 ;; FULL) echo 14 ;; OFFLINE) echo 15 ;; *) echo "?$1" ;;
    esac
}

# hdr [report-zones args]: "number of zones" of the report header, as the
# device returned it (nvme-cli's printed nr_zones is its own count).
hdr() {
    nvme zns report-zones "$DEV" "$@" -o binary | head -c 8 | od -A n -t u1 |
        awk '{ for (i = 1; i <= NF; i++) b[k++] = $i } END { n = 0; for (i = k - 1; i >= 0; i--) n = n * 256 + b[i]; print n }'
}

# compare EXPECTED_FILE LABEL
compare() {
    exp=$1 label=$2
    check "$label: zones in the expected list" "$NZONES" "$(grep -c . "$exp")"
    report_zones >/tmp/nvme.rep || fail "$label: report-zones failed"
    n_nvme=$(wc -l </tmp/nvme.rep)
    check "$label: nvme-cli zone descriptors" "$NZONES" "$n_nvme"
    check "$label: report header, all zones" "$NZONES" "$(hdr -d 1)"
    blkzone report "$DEV" >/tmp/blk.rep || fail "$label: blkzone report failed"
    check "$label: blkzone zones" "$NZONES" "$(wc -l </tmp/blk.rep)"
    # blkzone: "start: 0x..., len 0x..., cap 0x..., wptr 0x... reset:.. non-seq:.., zcond:14(fu) [type: 2(...)]"
    sed -e 's/[:,]/ /g' -e 's/(/ /' /tmp/blk.rep |
        awk '{ for (i = 1; i < NF; i++) { if ($i == "start") s = $(i+1); if ($i == "len") l = $(i+1);
               if ($i == "cap") c = $(i+1); if ($i == "wptr") w = $(i+1); if ($i == "zcond") z = $(i+1) }
               print s, l, c, w, z }' >/tmp/blk.tab
    bad=0
    while read -r idx e_slba e_cap e_wp e_st e_at; do
        case $idx in ''|\#*) continue ;; esac
        line=$(sed -n "$((idx + 1))p" /tmp/nvme.rep)
        # shellcheck disable=SC2086 # split into fields
        set -- $line
        what="zone $idx (nvme-cli: $line)"
        [ "${1:-}" = "$e_slba" ] || { fail "$label: $what: start, expected $e_slba"; bad=$((bad + 1)); }
        [ "${3:-}" = "$e_cap" ] || { fail "$label: $what: capacity, expected $e_cap"; bad=$((bad + 1)); }
        [ "${4:-}" = "$e_st" ] || { fail "$label: $what: state, expected $e_st"; bad=$((bad + 1)); }
        if [ "$e_st" != FULL ] && [ "${2:-}" != "$e_wp" ]; then
            fail "$label: $what: wp, expected $e_wp"; bad=$((bad + 1))
        fi
        if [ -n "${e_at:-}" ] && [ $((${5:-0} & 0x80)) -ne $((e_at & 0x80)) ]; then
            fail "$label: $what: attrs, expected $e_at"; bad=$((bad + 1))
        fi
        bline=$(sed -n "$((idx + 1))p" /tmp/blk.tab)
        # shellcheck disable=SC2086
        set -- $bline
        s512=$((LBA / 512))
        what="zone $idx (blkzone: $(sed -n "$((idx + 1))p" /tmp/blk.rep | sed 's/^ *//'))"
        if [ "$(($1))" -ne $((e_slba * s512)) ] || [ "$(($2))" -ne $((ZSZE * s512)) ] ||
           [ "$(($3))" -ne $((e_cap * s512)) ] || [ "$5" != "$(zcond "$e_st")" ]; then
            fail "$label: $what: expected start $((e_slba * s512)) len $((ZSZE * s512)) cap $((e_cap * s512)) zcond $(zcond "$e_st")"
            bad=$((bad + 1))
        elif [ "$e_st" != FULL ] && [ "$(($4))" -ne $(((e_wp - e_slba) * s512)) ]; then
            fail "$label: $what: expected wptr $(((e_wp - e_slba) * s512))"
            bad=$((bad + 1))
        fi
    done <"$exp"
    [ "$bad" -eq 0 ] && ok "$label: nvme-cli and blkzone reports match the $(grep -c . "$exp") expected zones"

    # Report filters (ZRASF) count only the zones in one state; partial
    # reports (-p) return just as many descriptors as asked.
    for st in EMPTY IMP_OPENED EXP_OPENED CLOSED FULL; do
        case $st in EMPTY) f=1 ;; IMP_OPENED) f=2 ;; EXP_OPENED) f=3 ;; CLOSED) f=4 ;; FULL) f=5 ;; esac
        want=$(awk -v s="$st" '$5 == s' "$exp" | wc -l)
        check "$label: report header, filter $st" "$want" "$(hdr -d 1 -S "$f")"
    done
    got=$(nvme zns report-zones "$DEV" -d 2 -p -o json | grep -c '"slba"')
    check "$label: partial report of 2 descriptors" 2 "$got"
    check "$label: report header from zone 2, partial, 1 descriptor" 1 "$(hdr -s "$(slba 2)" -d 1 -p)"
    check "$label: report header from zone 2, not partial" "$((NZONES - 2))" "$(hdr -s "$(slba 2)" -d 1)"
    # Extended report: zones with a valid descriptor extension show it.
    if [ "$ZNS_ZDES" -gt 0 ]; then
        if ! nvme zns report-zones "$DEV" -e -o json >/tmp/ext.json; then
            fail "$label: extended report failed"
        else
            want=$(awk '$6 != "" && int($6 / 128) % 2 == 1' "$exp" | wc -l)
            got=$(grep -c '"ext_data":\[' /tmp/ext.json || true)
            check "$label: zones with extension data in the extended report" "$want" "$got"
        fi
    fi
}

# The host's expectation, or all Empty.
if [ -f /guest/zones.txt ]; then
    cp /guest/zones.txt /tmp/expected
    say "expected zones from /guest/zones.txt: $(awk '{ print $5 }' /tmp/expected | sort | uniq -c | tr -s ' \n' ' ')"
else
    k=0
    : >/tmp/expected
    while [ "$k" -lt "$NZONES" ]; do
        echo "$k $(slba "$k") $ZCAP $(slba "$k") EMPTY 0" >>/tmp/expected
        k=$((k + 1))
    done
fi
echo "--- reports against the expected zone list"
nvme zns report-zones "$DEV" -d 8 -v | grep -v '^Attrs' || true
compare /tmp/expected initial

if [ "${ZNS_PERSISTED:-0}" = 1 ]; then
    echo "--- data and descriptor extension written before the restart"
    mkblock /tmp/p3 3 persist
    rm -f /tmp/rb # nvme-cli does not truncate its output file
    if nvme read "$DEV" -s "$(slba 1)" -c 2 -z $((3 * LBA)) -d /tmp/rb >/dev/null 2>&1 && cmp -s /tmp/rb /tmp/p3; then
        ok "zone 1 data survived the restart"
    else
        fail "zone 1 data differs after the restart"
    fi
    bigdata >/tmp/big
    if dd if="$DEV" bs=65536 skip=$(($(slba 7) * LBA / 65536)) count=16 iflag=direct 2>/dev/null | cmp -s - /tmp/big; then
        ok "zone 7's 1 MiB survived the restart"
    else
        fail "zone 7's 1 MiB differs after the restart"
    fi
    if [ "$ZNS_ZDES" -gt 0 ]; then
        if nvme zns report-zones "$DEV" -s "$(slba 3)" -d 1 -e -o json | grep -q 'zm-zde-final'; then
            ok "zone 3 descriptor extension survived the restart"
        else
            fail "zone 3 descriptor extension lost after the restart"
            nvme zns report-zones "$DEV" -s "$(slba 3)" -d 1 -e
        fi
    fi
fi

if [ "${ZNS_REPORT_MIXED:-1}" = 1 ]; then
    echo "--- a mix of zone states"
    reset_all
    nvme zns open-zone "$DEV" -s "$(slba 0)" >/dev/null || fail "open zone 0"
    write_lbas "$(slba 1)" 5 || fail "write zone 1"
    write_lbas "$(slba 2)" 3 || fail "write zone 2"
    nvme zns close-zone "$DEV" -s "$(slba 2)" >/dev/null || fail "close zone 2"
    nvme zns finish-zone "$DEV" -s "$(slba 3)" >/dev/null || fail "finish zone 3"
    if [ "$ZNS_ZDES" -gt 0 ]; then
        printf 'report-zde' | dd bs="$ZNS_ZDES" conv=sync 2>/dev/null >/tmp/zde
        nvme zns set-zone-desc "$DEV" -s "$(slba 4)" -d /tmp/zde >/dev/null || fail "set-zone-desc zone 4"
    fi
    write_lbas "$(slba 5)" 1 || fail "write zone 5"
    nvme zns finish-zone "$DEV" -s "$(slba 5)" >/dev/null || fail "finish zone 5"
    : >/tmp/mixed
    k=0
    while [ "$k" -lt "$NZONES" ]; do
        s=$(slba "$k")
        case $k in
            0) echo "$k $s $ZCAP $s EXP_OPENED 0" ;;
            1) echo "$k $s $ZCAP $((s + 5)) IMP_OPENED 0" ;;
            2) echo "$k $s $ZCAP $((s + 3)) CLOSED 0" ;;
            3|5) echo "$k $s $ZCAP $s FULL 0" ;;
            4) if [ "$ZNS_ZDES" -gt 0 ]; then echo "$k $s $ZCAP $s CLOSED 128"; else echo "$k $s $ZCAP $s EMPTY 0"; fi ;;
            *) echo "$k $s $ZCAP $s EMPTY 0" ;;
        esac >>/tmp/mixed
        k=$((k + 1))
    done
    nvme zns report-zones "$DEV" -d 6 -v | grep -v '^Attrs' || true
    compare /tmp/mixed mixed
    reset_all
fi

finish
