# shellcheck shell=sh
# zone-mgmt.sh: Zone Management Send/Receive and Zone Append through
# nvme-cli (and blkzone), checking each zone's state and write pointer in a
# report after every step, including the Select All forms.
#
# It leaves this state behind, which the host checks in the image:
#   zone 1 Closed with its write pointer 3 LBAs in, zone 2 Full,
#   zone 3 Closed with a valid descriptor extension (if ZDES > 0),
#   zones 4 and 5 opened (implicitly, 2 LBAs; explicitly, 1 LBA) and zone 7
#   (1 MiB through the block layer) when the guest powers off: the
#   controller shutdown must close them,
#   every other zone Empty.
SCENARIO=zone-mgmt
# shellcheck source=lib.sh
. /guest/lib.sh

[ "$NZONES" -ge 10 ] || die "needs at least 10 zones"
[ "$MOR" -eq 0 ] || [ "$MOR" -ge 3 ] || die "needs max open >= 3"
[ "$MAR" -eq 0 ] || [ "$MAR" -ge 5 ] || die "needs max active >= 5"

zop() { # ACTION ZONE: nvme zns ACTION-zone on zone ZONE
    if out=$(nvme zns "$1-zone" "$DEV" -s "$(slba "$2")" 2>&1); then ok "$1 zone $2"; else fail "$1 zone $2: $out"; fi
}
zop_all() { # ACTION: Select All
    if out=$(nvme zns "$1-zone" "$DEV" -a 2>&1); then ok "$1 all zones"; else fail "$1 all zones: $out"; fi
}
count_state() { report_zones | awk -v s="$1" '$4 == s' | wc -l; }
# append ZONE FILE: zone append, prints the assigned LBA (decimal).
append() {
    out=$(nvme zns zone-append "$DEV" -s "$(slba "$1")" -z "$(wc -c <"$2")" -d "$2" 2>&1) || {
        fail "zone-append to zone $1: $out"; echo -1; return; }
    hex=$(echo "$out" | sed -n 's/.*appended data to LBA \([0-9a-fA-Fx]*\).*/\1/p')
    case $hex in 0x*) echo $((hex)) ;; '') fail "zone-append: no LBA in '$out'"; echo -1 ;; *) echo $((0x$hex)) ;; esac
}
# readback SLBA FILE: the LBAs at SLBA hold FILE's content.
readback() {
    n=$(($(wc -c <"$2") / LBA))
    rm -f /tmp/rb # nvme-cli does not truncate its output file
    if nvme read "$DEV" -s "$1" -c $((n - 1)) -z $((n * LBA)) -d /tmp/rb >/dev/null 2>&1 && cmp -s /tmp/rb "$2"; then
        ok "read back $n LBAs at $1"
    else
        fail "data at LBA $1 differs from what was written"
    fi
}

echo "--- Select All reset: everything Empty"
zop_all reset
check "Empty zones" "$NZONES" "$(count_state EMPTY)"

echo "--- open / write / close / reopen (zone 1)"
zop open 1
expect_zone 1 EXP_OPENED 0
mkblock /tmp/d2 2 zone1-a
write_lbas "$(slba 1)" 2 /tmp/d2 || fail "write 2 LBAs at zone 1 start"
expect_zone 1 EXP_OPENED 2
zop close 1
expect_zone 1 CLOSED 2
zop open 1
expect_zone 1 EXP_OPENED 2
mkblock /tmp/d1 1 zone1-b
write_lbas $(($(slba 1) + 2)) 1 /tmp/d1 || fail "write 1 LBA at zone 1 wp"
expect_zone 1 EXP_OPENED 3
zop close 1
expect_zone 1 CLOSED 3
readback "$(slba 1)" /tmp/d2
readback $(($(slba 1) + 2)) /tmp/d1

echo "--- zone append (zone 2): implicit open, assigned LBAs, finish"
mkblock /tmp/a1 1 append-1
mkblock /tmp/a2 2 append-2
got=$(append 2 /tmp/a1)
check "first append's assigned LBA" "$(slba 2)" "$got"
expect_zone 2 IMP_OPENED 1
got=$(append 2 /tmp/a2)
check "second append's assigned LBA" $(($(slba 2) + 1)) "$got"
expect_zone 2 IMP_OPENED 3
readback "$(slba 2)" /tmp/a1
readback $(($(slba 2) + 1)) /tmp/a2
zop finish 2
expect_zone 2 FULL
zop reset 2
expect_zone 2 EMPTY 0
zop finish 2
expect_zone 2 FULL

echo "--- finish and reset an Empty zone (zone 5)"
zop finish 5
expect_zone 5 FULL
zop reset 5
expect_zone 5 EMPTY 0

if [ "$ZNS_ZDES" -gt 0 ]; then
    echo "--- zone descriptor extension (zone 3)"
    # Tags stay within 16 bytes: nvme-cli's JSON splits the data in 16-byte lines.
    printf 'zm-zde-1' | dd bs="$ZNS_ZDES" conv=sync 2>/dev/null >/tmp/zde
    nvme_ok "set-zone-desc zone 3" zns set-zone-desc "$DEV" -s "$(slba 3)" -d /tmp/zde
    expect_zone 3 CLOSED 0 128
    if nvme zns report-zones "$DEV" -s "$(slba 3)" -d 1 -e -o json | grep -q 'zm-zde-1'; then
        ok "extended report carries the extension data"
    else
        fail "extended report lacks the extension data of zone 3"
        nvme zns report-zones "$DEV" -s "$(slba 3)" -d 1 -e
    fi
    zop reset 3
    expect_zone 3 EMPTY 0 0
    expect_status "set-zone-desc on a Closed zone (1)" 0x1bf "Invalid Zone State Transition" \
        zns set-zone-desc "$DEV" -s "$(slba 1)" -d /tmp/zde
fi

echo "--- flush, write zeroes, deallocated reads (zone 6)"
nvme_ok "flush" flush "$DEV"
oncs=$(nvme id-ctrl "$DEV" | awk -F: '$1 ~ /^oncs / { gsub(/ /, "", $2); print $2 }')
dlfeat=$(nvme id-ns "$DEV" | awk -F: '$1 ~ /^dlfeat / { gsub(/ /, "", $2); print $2 }')
head -c $((2 * LBA)) /dev/zero >/tmp/zero2
if [ $((oncs & 8)) -ne 0 ]; then
    nvme_ok "write zeroes 2 LBAs at the write pointer" write-zeroes "$DEV" -s "$(slba 6)" -c 1
    expect_zone 6 IMP_OPENED 2
    readback "$(slba 6)" /tmp/zero2
    expect_status "write zeroes not at the write pointer" 0x1bc "Zone Invalid Write" \
        write-zeroes "$DEV" -s "$(slba 6)" -c 0
else
    say "Write Zeroes not supported (ONCS $oncs)"
fi
mkblock /tmp/d2b 2 dealloc
write_lbas $(($(slba 6) + 2)) 2 /tmp/d2b || fail "write 2 LBAs at zone 6 wp"
readback $(($(slba 6) + 2)) /tmp/d2b
zop reset 6
expect_zone 6 EMPTY 0
if [ $((dlfeat & 7)) -eq 1 ]; then
    # DLFEAT says deallocated blocks read as zeros: a reset zone must not
    # show its old data.
    readback $(($(slba 6) + 2)) /tmp/zero2
else
    say "DLFEAT $dlfeat: deallocated read values not specified, not checked"
fi

echo "--- invalid transitions"
expect_status "close an Empty zone (6)" 0x1bf "Invalid Zone State Transition" zns close-zone "$DEV" -s "$(slba 6)"
expect_status "open a Full zone (2)" 0x1bf "Invalid Zone State Transition" zns open-zone "$DEV" -s "$(slba 2)"
expect_status "close a Full zone (2)" 0x1bf "Invalid Zone State Transition" zns close-zone "$DEV" -s "$(slba 2)"
expect_status "open with an SLBA that is not a zone start" 0x002 "Invalid Field in Command" \
    zns open-zone "$DEV" -s $(($(slba 6) + 1))

echo "--- blkzone (block layer zone management)"
if blkzone finish -o $(($(slba 4) * LBA / 512)) -c 1 "$DEV"; then ok "blkzone finish zone 4"; else fail "blkzone finish zone 4"; fi
expect_zone 4 FULL
if blkzone reset -o $(($(slba 4) * LBA / 512)) -c 1 "$DEV"; then ok "blkzone reset zone 4"; else fail "blkzone reset zone 4"; fi
expect_zone 4 EMPTY 0

echo "--- Select All close / open / finish"
zop open 6
zop open 7
write_lbas "$(slba 6)" 1 || fail "write zone 6"
write_lbas "$(slba 7)" 1 || fail "write zone 7"
write_lbas "$(slba 8)" 1 || fail "write zone 8 (implicit open)"
expect_zone 6 EXP_OPENED 1
expect_zone 7 EXP_OPENED 1
expect_zone 8 IMP_OPENED 1
zop_all close
expect_zone 1 CLOSED 3
expect_zone 6 CLOSED 1
expect_zone 7 CLOSED 1
expect_zone 8 CLOSED 1
expect_zone 2 FULL
# Free some active resources: Select All open opens every Closed zone.
zop reset 1
zop_all open
expect_zone 6 EXP_OPENED 1
expect_zone 7 EXP_OPENED 1
expect_zone 8 EXP_OPENED 1
zop_all finish
expect_zone 6 FULL
expect_zone 7 FULL
expect_zone 8 FULL
check "Full zones after Select All finish" 4 "$(count_state FULL)"

echo "--- Select All reset"
zop_all reset
check "Empty zones after Select All reset" "$NZONES" "$(count_state EMPTY)"
check "zones with attributes after Select All reset" 0 "$(report_zones | awk '$5 != 0' | wc -l)"

echo "--- state left for the host"
mkblock /tmp/d3 3 persist
write_lbas "$(slba 1)" 3 /tmp/d3 || fail "write 3 LBAs at zone 1"
zop close 1
zop finish 2
if [ "$ZNS_ZDES" -gt 0 ]; then
    printf 'zm-zde-final' | dd bs="$ZNS_ZDES" conv=sync 2>/dev/null >/tmp/zde
    nvme_ok "set-zone-desc zone 3" zns set-zone-desc "$DEV" -s "$(slba 3)" -d /tmp/zde
fi
write_lbas "$(slba 4)" 2 /tmp/d2 || fail "write 2 LBAs at zone 4"
bigdata >/tmp/big
dd if=/tmp/big of="$DEV" bs=65536 seek=$(($(slba 7) * LBA / 65536)) oflag=direct 2>/dev/null ||
    fail "1 MiB direct write at zone 7"
zop open 5
write_lbas "$(slba 5)" 1 /tmp/d1 || fail "write 1 LBA at zone 5"
expect_zone 1 CLOSED 3
expect_zone 2 FULL
if [ "$ZNS_ZDES" -gt 0 ]; then expect_zone 3 CLOSED 0 128; fi
expect_zone 4 IMP_OPENED 2
expect_zone 5 EXP_OPENED 1
expect_zone 7 IMP_OPENED $((1048576 / LBA))
nvme zns report-zones "$DEV" -d 8 -v | grep -v '^Attrs' || true

finish
