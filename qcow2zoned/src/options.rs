//! Parsing of qemu-img style sizes and `-o key=value,…` creation options, shared by every
//! front end that creates zoned images (`qcow2zoned create`, `znsd serve --create -o`), so
//! the same option string means the same image everywhere.

use crate::image::{CreateOptions, ZoneOptions};

/// Default cluster size of a new image.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// Default zone-append limit (capped by the zone capacity).
pub const DEFAULT_MAX_APPEND_BYTES: u32 = 64 << 10;

/// Parse a size: decimal or `0x` hex, with an optional binary suffix `B`, `K`, `M`, `G`, `T`
/// (also `KiB`, `MiB`, …), case-insensitive: "4096", "0x1000", "4k", "64M", "2GiB".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| format!("invalid number '{s}'"));
    }
    let t = match t.strip_suffix("iB") {
        Some(r) if r.ends_with(|c: char| c.is_ascii_alphabetic()) => r,
        _ => t,
    };
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("invalid size suffix in '{s}'")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid number '{s}'"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' too large"))
}

fn parse_u32(key: &str, v: &str) -> Result<u32, String> {
    let n = parse_size(v)?;
    u32::try_from(n).map_err(|_| format!("{key} {n} does not fit in 32 bits"))
}

/// Parse a `-o` option string (qemu-img names, comma separated) into the options of a new
/// image of `size` bytes. Keys: `cluster_size` (default 64 KiB), `zone.mode` (only
/// `host-managed`), `zone.size` (default 256 MiB), `zone.capacity` (default: the zone size),
/// `zone.conventional_zones`, `zone.max_open_zones` (default: max_active),
/// `zone.max_active_zones` (0 = unlimited), `zone.max_append_bytes` (default: the smaller of
/// the capacity and 64 KiB), `zone.zd_extension_size`. An empty string gives the defaults.
/// Values are checked when the image is created, not here.
pub fn parse_create_options(opts: &str, size: u64) -> Result<CreateOptions, String> {
    let mut cluster_size = DEFAULT_CLUSTER_SIZE;
    let mut z = ZoneOptions::default();
    let mut capacity = None;
    let mut max_append = None;
    for kv in opts.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("option '{kv}' is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        match k {
            "zone.mode" => {
                if v != "host-managed" {
                    return Err(format!(
                        "zone.mode '{v}' is not supported (only host-managed)"
                    ));
                }
            }
            "cluster_size" => cluster_size = parse_size(v)?,
            "zone.size" => z.size = parse_size(v)?,
            "zone.capacity" => capacity = Some(parse_size(v)?),
            "zone.conventional_zones" => z.conventional_zones = parse_u32(k, v)?,
            "zone.max_open_zones" => z.max_open_zones = parse_u32(k, v)?,
            "zone.max_active_zones" => z.max_active_zones = parse_u32(k, v)?,
            "zone.max_append_bytes" => max_append = Some(parse_u32(k, v)?),
            "zone.zd_extension_size" => z.zd_extension_size = parse_u32(k, v)?,
            _ => return Err(format!("unknown option '{k}'")),
        }
    }
    z.capacity = capacity.unwrap_or(z.size);
    z.max_append_bytes = match max_append {
        Some(m) => m,
        None => u32::try_from(z.capacity.min(u64::from(DEFAULT_MAX_APPEND_BYTES)))
            .unwrap_or(DEFAULT_MAX_APPEND_BYTES),
    };
    if z.max_open_zones == 0 {
        z.max_open_zones = z.max_active_zones;
    }
    Ok(CreateOptions {
        size,
        cluster_size,
        zone: z,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_parse_like_qemu_img() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("0x200"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("4GiB"), Ok(4 * GIB));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1t"), Ok(1024 * GIB));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn create_defaults_follow_the_series() {
        let o = parse_create_options("", GIB).unwrap();
        assert_eq!(o.size, GIB);
        assert_eq!(o.cluster_size, 65536);
        assert_eq!(o.zone.size, 256 * MIB);
        assert_eq!(o.zone.capacity, 256 * MIB);
        assert_eq!(o.zone.max_append_bytes, 65536);
        assert_eq!((o.zone.max_open_zones, o.zone.max_active_zones), (0, 0));
        assert_eq!(
            (o.zone.conventional_zones, o.zone.zd_extension_size),
            (0, 0)
        );
    }

    #[test]
    fn every_key_is_honoured() {
        let o = parse_create_options(
            "zone.mode=host-managed, cluster_size=4K,zone.size=128M,zone.capacity=96M,\
             zone.conventional_zones=1,zone.max_open_zones=4,zone.max_active_zones=8,\
             zone.max_append_bytes=128K,zone.zd_extension_size=128",
            GIB,
        )
        .unwrap();
        assert_eq!(o.cluster_size, 4096);
        assert_eq!((o.zone.size, o.zone.capacity), (128 * MIB, 96 * MIB));
        assert_eq!(o.zone.conventional_zones, 1);
        assert_eq!((o.zone.max_open_zones, o.zone.max_active_zones), (4, 8));
        assert_eq!(o.zone.max_append_bytes, 128 << 10);
        assert_eq!(o.zone.zd_extension_size, 128);
    }

    #[test]
    fn derived_defaults() {
        let o = parse_create_options("zone.max_active_zones=6,zone.size=1M", GIB).unwrap();
        assert_eq!((o.zone.max_open_zones, o.zone.max_active_zones), (6, 6));
        assert_eq!(o.zone.capacity, MIB);
        let o = parse_create_options("zone.size=16K", GIB).unwrap();
        assert_eq!(o.zone.max_append_bytes, 16 << 10, "capped by the capacity");
    }

    #[test]
    fn bad_options_name_the_problem() {
        let e = |s| parse_create_options(s, GIB).unwrap_err();
        assert!(e("zone.mode=host-aware").contains("zone.mode"));
        assert!(e("bogus=1").contains("bogus"));
        assert!(e("zone.size").contains("key=value"));
        assert!(e("zone.max_open_zones=8G").contains("32 bits"));
        assert!(e("zone.size=12Q").contains("suffix"));
    }
}
