# shellcheck shell=sh
# fs-persist.sh: a zoned btrfs survives a restart of the controller process
# with every file intact. Two boots, driven by e2e (znsd only); fs.sh checks
# btrfs within one boot, this one across a stop and start of znsd.
#
# ZNS_FSP_PHASE=fill: reset every zone, mkfs.btrfs -O zoned, fill the file
#   system with files of many sizes (inline extents, partial blocks, several
#   block groups' worth of data, a file rewritten in the middle, one deleted,
#   a hard link and a symlink), unmount it and print every file's md5 (of the
#   data as it was written, not as it reads back) with emit_state. The guest
#   powers off; e2e stops znsd with SIGTERM and starts it again.
# ZNS_FSP_PHASE=verify: /guest/fs-persist-sums.txt holds those lines (from
#   e2e); the file system mounts, holds exactly those files with those
#   checksums, `btrfs scrub` finds no checksum error and `btrfs check` no
#   damage. Ends with every zone reset.
#
# btrfs needs at least 8 active zones; with fewer the fill phase prints
# ===ZNS-FSP-SKIPPED=== and e2e skips the second boot.
SCENARIO=fs-persist
# shellcheck source=lib.sh
. /guest/lib.sh

MNT=/mnt/fsp
mkdir -p $MNT

# sums DIR: "md5 size path" of every regular file under DIR, sorted by path.
sums() {
    (cd "$1" && find . -type f | sort | while read -r f; do
        echo "$(md5sum <"$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
    done)
}

case ${ZNS_FSP_PHASE:-} in
fill)
    reset_all
    modprobe btrfs || fail "modprobe btrfs"
    if [ "$MAR" -gt 0 ] && [ "$MAR" -lt 8 ]; then
        say "skipped: btrfs needs at least 8 active zones, the namespace has $MAR"
        echo "===ZNS-FSP-SKIPPED==="
        finish
    fi
    if ! mkfs.btrfs -f -O zoned -d single -m single "$DEV" >/tmp/mkfs.out 2>&1; then
        cat /tmp/mkfs.out
        die "mkfs.btrfs -O zoned"
    fi
    grep -iE 'zoned|zone size' /tmp/mkfs.out | head -3
    mount -t btrfs "$DEV" $MNT || die "mount btrfs"
    # The data is built in /tmp first so its md5 is that of what was meant
    # to be written; the copy in btrfs is only read back in the next boot.
    mkdir -p /tmp/src/a/b/c /tmp/src/big /tmp/src/small
    n=0
    # Small files (some inline in the metadata) and odd sizes around blocks.
    for s in 0 1 100 2047 4095 4096 4097 8191 65535 65536 65537 131073; do
        head -c "$s" /dev/urandom >/tmp/src/small/f$s
        n=$((n + 1))
    done
    # Bigger files, together about 58 MiB with the ones below: more than
    # one data block group (a zone each, 48 MiB capacity by default).
    for s in 1048576 3145728 5242880 9437184 12582912 16777216; do
        head -c "$s" /dev/urandom >/tmp/src/big/f$s
        n=$((n + 1))
    done
    head -c 7340033 /dev/urandom >/tmp/src/big/odd
    for i in 1 2 3 4 5 6 7 8; do
        head -c $((i * 12345)) /dev/urandom >/tmp/src/a/b/c/deep$i
    done
    cp -a /tmp/src/. $MNT/ || fail "copy the files into btrfs"
    # A rewrite in the middle of a file (copy-on-write into a new zone), a
    # file written with O_DIRECT, a deleted file, a hard link and a symlink.
    head -c 262144 /dev/urandom >/tmp/patch
    dd if=/tmp/patch of=/tmp/src/big/f5242880 bs=4096 seek=300 conv=notrunc 2>/dev/null
    dd if=/tmp/patch of=$MNT/big/f5242880 bs=4096 seek=300 conv=notrunc 2>/dev/null || fail "rewrite inside big/f5242880"
    head -c 4194304 /dev/urandom >/tmp/src/direct
    dd if=/tmp/src/direct of=$MNT/direct bs=1M oflag=direct 2>/dev/null || fail "O_DIRECT write of /direct"
    head -c 500000 /dev/urandom >$MNT/gone
    sync
    rm $MNT/gone
    ln $MNT/big/odd $MNT/a/odd-link || fail "hard link"
    cp /tmp/src/big/odd /tmp/src/a/odd-link
    ln -s big/odd $MNT/symlink || fail "symlink"
    sync
    expect_true "btrfs filesystem sync" btrfs filesystem sync $MNT
    umount $MNT || fail "umount"
    # The expected list comes from the sources in /tmp, under the same names.
    sums /tmp/src >/tmp/sums.txt
    say "$(wc -l </tmp/sums.txt) files, $(awk '{ b += $2 } END { printf "%.1f", b / 1048576 }' /tmp/sums.txt) MiB"
    emit_state fs-persist-sums /tmp/sums.txt
    # The zones btrfs used, for the log.
    say "zones in use: $(report_zones | awk '$4 != "EMPTY"' | wc -l) of $NZONES"
    finish
    ;;
verify)
    [ -f /guest/fs-persist-sums.txt ] || die "no /guest/fs-persist-sums.txt (run this phase from e2e)"
    modprobe btrfs || fail "modprobe btrfs"
    mount -t btrfs "$DEV" $MNT || die "mount btrfs after the restart"
    sums $MNT >/tmp/sums.now
    d=$(awk '
        NR == FNR { e[$3] = $0; n++; next }
        { m++; if (!($3 in e)) print "unexpected file: " $0
               else if (e[$3] != $0) print "expected [" e[$3] "] got [" $0 "]"
          seen[$3] = 1 }
        END { for (f in e) if (!(f in seen)) print "missing file: " e[f] }' /guest/fs-persist-sums.txt /tmp/sums.now)
    if [ -z "$d" ]; then
        ok "all $(wc -l </tmp/sums.now) files with their checksums after the restart"
    else
        echo "$d" | head -20 | sed 's/^/  /'
        fail "the files after the restart differ from the ones written"
    fi
    check "symlink after the restart" big/odd "$(readlink $MNT/symlink)"
    check "hard link after the restart (link count)" 2 "$(stat -c %h $MNT/big/odd)"
    # scrub reads every copy of every block and checks btrfs' own checksums,
    # metadata included.
    if btrfs scrub start -B $MNT >/tmp/scrub.out 2>&1; then
        ok "btrfs scrub: $(grep -iE 'error summary' /tmp/scrub.out | sed 's/^[ \t]*//')"
    else
        cat /tmp/scrub.out
        fail "btrfs scrub found errors"
    fi
    umount $MNT || fail "umount"
    if btrfs check --readonly "$DEV" >/tmp/check.out 2>&1; then
        ok "btrfs check --readonly"
    else
        tail -20 /tmp/check.out
        fail "btrfs check --readonly"
    fi
    dmesg | grep -i btrfs | grep -iE 'error|corrupt|csum|fail' | tail -5
    reset_all
    finish
    ;;
*)
    die "set ZNS_FSP_PHASE=fill or verify"
    ;;
esac
