# identify.sh: the controller and the zoned namespace identify themselves
# with the expected configuration (nvme-cli and the Linux block layer).
# Optional: ZNS_EXPECT_MN (substring of the model number), ZNS_ZASL.
SCENARIO=identify
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
nvme list | grep -q "^$DEV " && ok "nvme list shows $DEV" || fail "nvme list does not show $DEV"
echo "--- nvme zns list"
nvme zns list 2>&1 || true
nvme zns list 2>/dev/null | grep -q "$DEV" && ok "nvme zns list shows $DEV" || fail "nvme zns list does not show $DEV"

echo "--- nvme id-ctrl"
idc=$(nvme id-ctrl "$DEV") || die "nvme id-ctrl failed"
echo "$idc" | grep -E '^(vid|ssvid|sn|mn|fr|mdts|cntlid|ver|ctratt|oacs|oncs|vwc|nn|sqes|cqes|subnqn) '
vid=$(echo "$idc" | field vid)
[ "$((vid))" -ne 0 ] && ok "vid $vid" || fail "vid is 0"
sn=$(echo "$idc" | field sn)
[ -n "$sn" ] && ok "sn '$sn'" || fail "empty serial number"
mn=$(echo "$idc" | field mn)
[ -n "$mn" ] && ok "mn '$mn'" || fail "empty model number"
if [ -n "${ZNS_EXPECT_MN:-}" ]; then
    case $mn in *"$ZNS_EXPECT_MN"*) ok "mn contains $ZNS_EXPECT_MN" ;; *) fail "mn '$mn' lacks '$ZNS_EXPECT_MN'" ;; esac
fi
ver=$(echo "$idc" | field ver)
[ "$((ver))" -ge $((0x10400)) ] && ok "ver $ver >= 1.4" || fail "ver $ver < 1.4 (ZNS needs 1.4+)"
check "sqes" 0x66 "$(echo "$idc" | field sqes)"
check "cqes" 0x44 "$(echo "$idc" | field cqes)"
nn=$(echo "$idc" | field nn)
[ "$((nn))" -ge 1 ] && ok "nn $nn" || fail "nn $nn"
mdts=$(echo "$idc" | field mdts)
say "mdts $mdts"

echo "--- nvme zns id-ctrl"
zidc=$(nvme zns id-ctrl "$DEV") || fail "nvme zns id-ctrl failed"
echo "$zidc"
zasl=$(echo "$zidc" | field zasl)
[ -n "$zasl" ] || fail "no zasl in zns id-ctrl"
[ -n "${ZNS_ZASL:-}" ] && check "zasl" "$ZNS_ZASL" "$zasl"

echo "--- nvme id-ns"
idn=$(nvme id-ns "$DEV") || die "nvme id-ns failed"
echo "$idn" | grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|dlfeat|lbaf .*in use)'
check "nsze (LBAs)" "$NSZE" "$(($(echo "$idn" | field nsze)))"
check "ncap (LBAs)" "$NSZE" "$(($(echo "$idn" | field ncap)))"
lbads=$(echo "$idn" | sed -n 's/^lbaf.*lbads:\([0-9]*\).*(in use).*/\1/p')
[ -n "$lbads" ] && check "LBA size of the format in use" "$LBA" "$((1 << lbads))" || fail "no LBA format in use"

echo "--- nvme zns id-ns"
zidn=$(nvme zns id-ns "$DEV") || die "nvme zns id-ns failed"
echo "$zidn" | grep -vE '^(rrl|frl)[0-9]* '
check "mar (0's based)" "$(limit0 "$MAR")" "$(($(echo "$zidn" | field mar)))"
check "mor (0's based)" "$(limit0 "$MOR")" "$(($(echo "$zidn" | field mor)))"
inuse=$(echo "$zidn" | grep '^lbafe.*(in use)')
zsze=$(echo "$inuse" | sed -n 's/.*zsze:\(0x[0-9a-fA-F]*\).*/\1/p')
zdes=$(echo "$inuse" | sed -n 's/.*zdes:\([0-9]*\).*/\1/p')
[ -n "$zsze" ] && check "zone size (LBAs)" "$ZSZE" "$((zsze))" || fail "no LBA format extension in use"
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
[ "$(cat "$q/zone_append_max_bytes")" -gt 0 ] && ok "zone append supported" || fail "zone_append_max_bytes is 0"
check "size (512 B sectors)" "$((NSZE * LBA / 512))" "$(cat "/sys/block/$BDEV/size")"

echo "--- first and last zone"
set -- $(zone_line 0)
check "zone 0 capacity (LBAs)" "$ZCAP" "${3:-}"
set -- $(zone_line $((NZONES - 1)))
check "last zone start" "$(slba $((NZONES - 1)))" "${1:-}"
check "last zone capacity (LBAs)" "$ZCAP" "${3:-}"

finish
