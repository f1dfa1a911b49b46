# shellcheck shell=sh
# identify.sh: the controller and the zoned namespace identify themselves
# with the expected configuration (nvme-cli and the Linux block layer).
# Optional: ZNS_EXPECT_MN (substring of the model number), ZNS_ZASL.
SCENARIO=identify
# shellcheck source=lib.sh
. /guest/lib.sh

# field KEY: value of "KEY : value" in stdin (nvme-cli normal output).
field() {
    awk -v k="$1" '{
        i = index($0, ":"); if (i == 0) next
        key = substr($0, 1, i - 1); sub(/[ \t]+$/, "", key)
        if (key == k) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v); print v; exit }
    }'
}
# 0's based resource limit as Identify reports it (0 = unlimited -> all ones).
limit0() { if [ "$1" -eq 0 ]; then echo 4294967295; else echo $(($1 - 1)); fi; }

say "device $DEV: $NZONES zones of $ZSZE LBAs (capacity $ZCAP), LBA $LBA B, MOR $MOR, MAR $MAR, ZDES $ZNS_ZDES B"

echo "--- nvme list"
nvme list || fail "nvme list failed"
expect_true "nvme list shows $DEV" sh -c "nvme list | grep -q '^$DEV '"
echo "--- nvme zns list"
nvme zns list 2>&1 || true
expect_true "nvme zns list shows $DEV" sh -c "nvme zns list 2>/dev/null | grep -q '$DEV'"

echo "--- nvme id-ctrl"
idc=$(nvme id-ctrl "$DEV") || die "nvme id-ctrl failed"
echo "$idc" | grep -E '^(vid|ssvid|sn|mn|fr|mdts|cntlid|ver|ctratt|oacs|oncs|vwc|nn|sqes|cqes|subnqn) '
vid=$(echo "$idc" | field vid)
expect_true "vid $vid is not 0" [ "$((vid))" -ne 0 ]
sn=$(echo "$idc" | field sn)
expect_true "serial number '$sn' is not empty" [ -n "$sn" ]
mn=$(echo "$idc" | field mn)
expect_true "model number '$mn' is not empty" [ -n "$mn" ]
if [ -n "${ZNS_EXPECT_MN:-}" ]; then
    case $mn in *"$ZNS_EXPECT_MN"*) ok "model number contains '$ZNS_EXPECT_MN'" ;; *) fail "model number '$mn' does not contain '$ZNS_EXPECT_MN'" ;; esac
fi
ver=$(echo "$idc" | field ver)
expect_true "version $ver is 1.4 or later (ZNS needs it)" [ "$((ver))" -ge $((0x10400)) ]
check "sqes" 0x66 "$(echo "$idc" | field sqes)"
check "cqes" 0x44 "$(echo "$idc" | field cqes)"
nn=$(echo "$idc" | field nn)
expect_true "nn $nn is at least 1" [ "$((nn))" -ge 1 ]
mdts=$(echo "$idc" | field mdts)
say "mdts $mdts"

echo "--- nvme zns id-ctrl"
zidc=$(nvme zns id-ctrl "$DEV") || fail "nvme zns id-ctrl failed"
echo "$zidc"
zasl=$(echo "$zidc" | field zasl)
[ -n "$zasl" ] || fail "no zasl in zns id-ctrl"
[ -n "${ZNS_ZASL:-}" ] && check "zasl" "$ZNS_ZASL" "$zasl"

echo "--- I/O command sets, effects log (CSI 2), SMART"
ctrl=/dev/${BDEV%n*}
iocs=$(nvme id-iocs "$ctrl" 2>&1) || fail "nvme id-iocs failed: $iocs"
echo "$iocs" | head -3
combo=$(echo "$iocs" | sed -n 's/^I\/O Command Set Combination\[0\]: *\([0-9x]*\).*/\1/p')
expect_true "I/O command set combination 0 ($combo) has NVM and ZNS" [ $((${combo:-0} & 5)) -eq 5 ]
if eff=$(nvme effects-log "$ctrl" --csi=2 2>&1); then
    for op in 1:Write 2:Read 121:"Zone Management Send" 122:"Zone Management Receive" 125:"Zone Append"; do
        n=${op%%:*}
        v=$(echo "$eff" | awk -v k="IOCS$n" '$1 == k { print $NF }')
        expect_true "effects log (CSI 2): ${op#*:} (opcode $n) supported ($v)" [ $((0x${v:-0} & 1)) -eq 1 ]
    done
else
    fail "nvme effects-log --csi=2 failed: $eff"
fi
nvme_ok "smart-log" smart-log "$DEV"

echo "--- nvme id-ns"
idn=$(nvme id-ns "$DEV") || die "nvme id-ns failed"
echo "$idn" | grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|dlfeat|lbaf .*in use)'
check "nsze (LBAs)" "$NSZE" "$(($(echo "$idn" | field nsze)))"
check "ncap (LBAs)" "$NSZE" "$(($(echo "$idn" | field ncap)))"
lbads=$(echo "$idn" | sed -n 's/^lbaf.*lbads:\([0-9]*\).*(in use).*/\1/p')
check "LBA size of the format in use" "$LBA" "$((1 << ${lbads:-0}))"

echo "--- nvme zns id-ns"
zidn=$(nvme zns id-ns "$DEV") || die "nvme zns id-ns failed"
echo "$zidn" | grep -vE '^(rrl|frl)[0-9]* '
check "mar (0's based)" "$(limit0 "$MAR")" "$(($(echo "$zidn" | field mar)))"
check "mor (0's based)" "$(limit0 "$MOR")" "$(($(echo "$zidn" | field mor)))"
inuse=$(echo "$zidn" | grep '^lbafe.*(in use)')
zsze=$(echo "$inuse" | sed -n 's/.*zsze:\(0x[0-9a-fA-F]*\).*/\1/p')
zdes=$(echo "$inuse" | sed -n 's/.*zdes:\([0-9]*\).*/\1/p')
check "zone size (LBAs) of the LBA format extension in use" "$ZSZE" "$((${zsze:-0}))"
check "zdes (64 B units)" "$((ZNS_ZDES / 64))" "${zdes:-none}"
ozcs=$(echo "$zidn" | field ozcs)
say "zoc $(echo "$zidn" | field zoc), ozcs $ozcs"

echo "--- Linux block layer"
q=/sys/block/$BDEV/queue
for f in zoned chunk_sectors nr_zones max_open_zones max_active_zones logical_block_size zone_append_max_bytes max_hw_sectors_kb; do
    echo "$f: $(cat "$q/$f" 2>/dev/null)"
done
check "queue/zoned" host-managed "$(cat "$q/zoned")"
check "queue/chunk_sectors" "$((ZNS_ZONE_SIZE / 512))" "$(cat "$q/chunk_sectors")"
check "queue/nr_zones" "$NZONES" "$(cat "$q/nr_zones")"
check "queue/max_open_zones" "$MOR" "$(cat "$q/max_open_zones")"
check "queue/max_active_zones" "$MAR" "$(cat "$q/max_active_zones")"
check "queue/logical_block_size" "$LBA" "$(cat "$q/logical_block_size")"
expect_true "zone append supported (zone_append_max_bytes > 0)" [ "$(cat "$q/zone_append_max_bytes")" -gt 0 ]
check "size (512 B sectors)" "$((NSZE * LBA / 512))" "$(cat "/sys/block/$BDEV/size")"

echo "--- first and last zone"
# shellcheck disable=SC2046 # split the report line into fields
set -- $(zone_line 0)
check "zone 0 capacity (LBAs)" "$ZCAP" "${3:-}"
# shellcheck disable=SC2046
set -- $(zone_line $((NZONES - 1)))
check "last zone start" "$(slba $((NZONES - 1)))" "${1:-}"
check "last zone capacity (LBAs)" "$ZCAP" "${3:-}"

finish
