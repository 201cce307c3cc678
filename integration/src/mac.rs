//! MAC addresses as text: the one parser (`aa:bb:cc:dd:ee:ff`, either case,
//! as iproute2, arping and ndisc6 print them) and the one formatter
//! (lower-case colon form) of this crate. Addresses themselves are plain
//! `[u8; 6]`, as in `bpf::MacAddr`.

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits of either case).
pub fn parse(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Lower-case colon form.
pub fn format(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_case_and_formats_lower_case() {
        let mac = [0x02, 0x1a, 0xb0, 0, 0, 0x11];
        assert_eq!(parse("02:1A:B0:00:00:11"), Some(mac));
        assert_eq!(parse(" 02:1a:b0:00:00:11\n"), Some(mac));
        assert_eq!(format(mac), "02:1a:b0:00:00:11");
        for bad in [
            "",
            "02:1a:b0:00:00",
            "02:1a:b0:00:00:11:22",
            "02:1a:b0:00:00:1g",
            "02::b0:00:00:11:2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
