# shellcheck shell=sh
# fs.sh: zoned file systems on the namespace. btrfs in zoned mode (data
# goes through zone append) and zonefs (one file per zone; truncating a file
# resets its zone) must store data and read it back intact, also after a
# remount. btrfs is skipped when the namespace allows fewer than 8 active
# zones (mkfs.btrfs refuses).
SCENARIO=fs
# shellcheck source=lib.sh
. /guest/lib.sh

mkdir -p /mnt/fs
dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null
sum=$(md5sum </tmp/data | cut -d' ' -f1)

echo "--- btrfs (zoned)"
reset_all
modprobe btrfs || fail "modprobe btrfs"
if [ "$MAR" -gt 0 ] && [ "$MAR" -lt 8 ]; then
    # mkfs.btrfs refuses: "max active zones 6 is too small, need at least 8".
    say "skipped btrfs: it needs at least 8 active zones, the namespace has $MAR"
elif mkfs.btrfs -f -d single -m single "$DEV" >/tmp/mkfs.out 2>&1; then
    grep -iE 'zoned|zone size' /tmp/mkfs.out | head -3
    ok "mkfs.btrfs"
    if mount -t btrfs "$DEV" /mnt/fs; then
        expect_true "write 16 MiB to btrfs" sh -c 'cp /tmp/data /mnt/fs/data && sync'
        umount /mnt/fs
        if mount -t btrfs "$DEV" /mnt/fs; then
            check "btrfs file after a remount (md5)" "$sum" "$(md5sum </mnt/fs/data | cut -d' ' -f1)"
            umount /mnt/fs
        else
            fail "btrfs remount"
        fi
    else
        fail "mount btrfs"
    fi
else
    cat /tmp/mkfs.out
    fail "mkfs.btrfs"
fi
dmesg | grep -i btrfs | grep -iE 'error|warn|fail' | tail -5

echo "--- zonefs"
reset_all
modprobe zonefs || fail "modprobe zonefs"
if mkzonefs -f "$DEV" >/tmp/mkzonefs.out 2>&1 && mount -t zonefs "$DEV" /mnt/fs; then
    ok "mkzonefs and mount"
    # Without conventional zones the first zone holds the super block.
    check "zonefs sequential files" $((NZONES - 1)) "$(find /mnt/fs/seq -type f | wc -l)"
    if dd if=/tmp/data of=/mnt/fs/seq/0 bs=1M oflag=direct conv=notrunc 2>/dev/null; then
        ok "direct sequential write of 16 MiB to seq/0"
    else
        fail "write to zonefs seq/0"
    fi
    check "seq/0 size" $((16 * 1048576)) "$(stat -c %s /mnt/fs/seq/0)"
    if [ $((16 * 1048576)) -ge "$ZNS_ZONE_CAP" ]; then want=FULL; else want=IMP_OPENED; fi
    expect_zone 1 "$want" $((16 * 1048576 / LBA))
    check "seq/0 content (md5)" "$sum" "$(dd if=/mnt/fs/seq/0 bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
    umount /mnt/fs
    mount -t zonefs "$DEV" /mnt/fs || fail "zonefs remount"
    check "seq/0 size after a remount (from the write pointer)" $((16 * 1048576)) "$(stat -c %s /mnt/fs/seq/0)"
    expect_true "truncate seq/0 (resets zone 1)" truncate -s 0 /mnt/fs/seq/0
    umount /mnt/fs
    expect_zone 1 EMPTY 0
else
    cat /tmp/mkzonefs.out
    fail "mkzonefs/mount zonefs"
fi

reset_all
finish
