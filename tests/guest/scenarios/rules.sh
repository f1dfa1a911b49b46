# shellcheck shell=sh
# rules.sh: I/O that breaks the zoned rules fails in the guest with the
# status the NVMe ZNS specification names (nvme-cli prints it), and the
# zone is left as it was. Ends with every zone reset.
SCENARIO=rules
# shellcheck source=lib.sh
. /guest/lib.sh

[ "$NZONES" -ge 10 ] || die "needs at least 10 zones"

mkblock /tmp/b1 1 rules
mkblock /tmp/b2 2 rules
# expect_write DESCRIPTION STATUS NAME SLBA [NLBAS]: nvme write must fail so.
expect_write() {
    n=${5:-1}
    expect_status "$1" "$2" "$3" write "$DEV" -s "$4" -c $((n - 1)) -z $((n * LBA)) -d "/tmp/b$n"
}

reset_all

echo "--- writes not at the write pointer"
expect_write "write at zone start + 1 of an Empty zone" 0x1bc "Zone Invalid Write" $(($(slba 0) + 1))
expect_zone 0 EMPTY 0
expect_true "write at the write pointer of zone 0" write_lbas "$(slba 0)" 2 /tmp/b2
expect_write "write behind the write pointer" 0x1bc "Zone Invalid Write" "$(slba 0)"
expect_write "write past the write pointer" 0x1bc "Zone Invalid Write" $(($(slba 0) + 5))
expect_zone 0 IMP_OPENED 2

echo "--- zone append rules"
expect_status "zone append with an SLBA that is not a zone start" 0x002 "Invalid Field in Command" \
    zns zone-append "$DEV" -s $(($(slba 0) + 1)) -z "$LBA" -d /tmp/b1
expect_zone 0 IMP_OPENED 2

echo "--- Full zones"
nvme zns finish-zone "$DEV" -s "$(slba 1)" >/dev/null || fail "finish zone 1"
expect_write "write to a Full zone" 0x1b9 "Zone Is Full" "$(slba 1)"
expect_status "zone append to a Full zone" 0x1b9 "Zone Is Full" zns zone-append "$DEV" -s "$(slba 1)" -z "$LBA" -d /tmp/b1
expect_zone 1 FULL

echo "--- writes past the zone capacity (zone 2)"
# Fill the zone up to one LBA below its capacity through the block layer
# (sequential direct writes), then cross the capacity by one LBA.
s=$(slba 2)
fill=$(((ZCAP - 1) * LBA))
mib=$((fill / 1048576))
rest=$(((fill - mib * 1048576) / LBA))
dd if=/dev/zero of="$DEV" bs=1M seek=$((s * LBA / 1048576)) count="$mib" oflag=direct 2>/dev/null ||
    fail "dd fill of zone 2"
if [ "$rest" -gt 0 ]; then
    dd if=/dev/zero of="$DEV" bs="$LBA" seek=$((s + mib * 1048576 / LBA)) count="$rest" oflag=direct 2>/dev/null ||
        fail "dd fill tail of zone 2"
fi
expect_zone 2 IMP_OPENED $((ZCAP - 1))
expect_write "write crossing the zone capacity" 0x1b8 "Zone Boundary Error" $((s + ZCAP - 1)) 2
expect_status "zone append crossing the zone capacity" 0x1b8 "Zone Boundary Error" \
    zns zone-append "$DEV" -s "$s" -z $((2 * LBA)) -d /tmp/b2
expect_zone 2 IMP_OPENED $((ZCAP - 1))
expect_true "write of the last LBA below the capacity" write_lbas $((s + ZCAP - 1)) 1 /tmp/b1
expect_zone 2 FULL
if [ "$ZCAP" -lt "$ZSZE" ]; then
    expect_write "write between capacity and zone size" 0x1b9 "Zone Is Full" $((s + ZCAP))
fi

echo "--- reads"
ozcs=$(nvme zns id-ns "$DEV" | awk -F: '$1 ~ /^ozcs/ { gsub(/ /, "", $2); print $2 }')
if [ $((ozcs & 1)) -eq 0 ]; then
    expect_status "read across a zone boundary (RAZB off)" 0x1b8 "Zone Boundary Error" \
        read "$DEV" -s $(($(slba 4) - 1)) -c 1 -z $((2 * LBA)) -d /tmp/rd
else
    nvme_ok "read across a zone boundary (RAZB on)" read "$DEV" -s $(($(slba 4) - 1)) -c 1 -z $((2 * LBA)) -d /tmp/rd
fi
nvme_ok "read above the write pointer" read "$DEV" -s $(($(slba 0) + 10)) -c 0 -z "$LBA" -d /tmp/rd
expect_write "write beyond the namespace" 0x080 "LBA Out of Range" "$NSZE"
expect_status "read beyond the namespace" 0x080 "LBA Out of Range" read "$DEV" -s "$NSZE" -c 0 -z "$LBA" -d /tmp/rd

echo "--- open zone limit (max open $MOR)"
reset_all
if [ "$MOR" -gt 0 ] && [ "$MOR" -lt $((NZONES - 1)) ]; then
    k=0
    while [ "$k" -lt "$MOR" ]; do
        nvme zns open-zone "$DEV" -s "$(slba "$k")" >/dev/null 2>&1 || fail "explicit open of zone $k (of $MOR)"
        k=$((k + 1))
    done
    check "explicitly opened zones" "$MOR" "$(report_zones | awk '$4 == "EXP_OPENED"' | wc -l)"
    expect_status "explicit open beyond the limit" 0x1be "Too Many Open Zones" zns open-zone "$DEV" -s "$(slba "$MOR")"
    expect_write "write opening one zone too many" 0x1be "Too Many Open Zones" "$(slba "$MOR")"
    expect_status "zone append opening one zone too many" 0x1be "Too Many Open Zones" \
        zns zone-append "$DEV" -s "$(slba "$MOR")" -z "$LBA" -d /tmp/b1
    expect_zone "$MOR" EMPTY 0
    # Closing one frees an open resource.
    nvme zns close-zone "$DEV" -s "$(slba 0)" >/dev/null || fail "close zone 0"
    expect_true "write to zone $MOR after a close freed an open resource" write_lbas "$(slba "$MOR")" 1 /tmp/b1
    expect_zone "$MOR" IMP_OPENED 1
else
    say "skipped: open limit $MOR"
fi

echo "--- active zone limit (max active $MAR)"
reset_all
if [ "$MAR" -gt 0 ] && [ "$MAR" -lt $((NZONES - 1)) ]; then
    # Make MAR zones active: write one LBA to each (an opened zone with data
    # stays Closed when closed) and close it so the open limit never bites.
    k=0
    while [ "$k" -lt "$MAR" ]; do
        write_lbas "$(slba "$k")" 1 /tmp/b1 || fail "write to zone $k"
        nvme zns close-zone "$DEV" -s "$(slba "$k")" >/dev/null 2>&1 || fail "close zone $k"
        k=$((k + 1))
    done
    check "Closed zones" "$MAR" "$(report_zones | awk '$4 == "CLOSED"' | wc -l)"
    expect_status "explicit open of an Empty zone beyond the active limit" 0x1bd "Too Many Active Zones" \
        zns open-zone "$DEV" -s "$(slba "$MAR")"
    expect_write "write to an Empty zone beyond the active limit" 0x1bd "Too Many Active Zones" "$(slba "$MAR")"
    expect_status "zone append to an Empty zone beyond the active limit" 0x1bd "Too Many Active Zones" \
        zns zone-append "$DEV" -s "$(slba "$MAR")" -z "$LBA" -d /tmp/b1
    if [ "$ZNS_ZDES" -gt 0 ]; then
        printf 'rules' | dd bs="$ZNS_ZDES" conv=sync 2>/dev/null >/tmp/zde
        expect_status "set-zone-desc beyond the active limit" 0x1bd "Too Many Active Zones" \
            zns set-zone-desc "$DEV" -s "$(slba "$MAR")" -d /tmp/zde
    fi
    expect_zone "$MAR" EMPTY 0
    # Closed zones can still be written (they are active already).
    expect_true "write to a Closed zone at the active limit" write_lbas $(($(slba 0) + 1)) 1 /tmp/b1
    # Finishing one releases an active resource.
    nvme zns finish-zone "$DEV" -s "$(slba 1)" >/dev/null || fail "finish zone 1"
    expect_true "write to zone $MAR after a finish freed an active resource" write_lbas "$(slba "$MAR")" 1 /tmp/b1
    expect_zone "$MAR" IMP_OPENED 1
else
    say "skipped: active limit $MAR"
fi

echo "--- state transitions that are not allowed"
reset_all
expect_status "close an Empty zone" 0x1bf "Invalid Zone State Transition" zns close-zone "$DEV" -s "$(slba 0)"
nvme zns finish-zone "$DEV" -s "$(slba 0)" >/dev/null || fail "finish zone 0"
expect_status "open a Full zone" 0x1bf "Invalid Zone State Transition" zns open-zone "$DEV" -s "$(slba 0)"
expect_status "close a Full zone" 0x1bf "Invalid Zone State Transition" zns close-zone "$DEV" -s "$(slba 0)"
expect_status "reset with an SLBA that is not a zone start" 0x002 "Invalid Field in Command" \
    zns reset-zone "$DEV" -s $(($(slba 0) + 1))

reset_all
check "Empty zones at the end" "$NZONES" "$(report_zones | awk '$4 == "EMPTY"' | wc -l)"
finish
