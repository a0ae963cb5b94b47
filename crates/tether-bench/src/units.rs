//! Sizes with units, as people write them on a command line or in a config
//! file: `1048576`, `512B`, `64KiB`, `1MiB`, `1GiB`, `1MB`. It lives here, the
//! lowest crate with flags, so that `tether bench`, `serve`, `echo` and
//! `connect` share one parser.

/// Parse a size in bytes: a bare number is bytes; `B`; binary units `KiB`,
/// `MiB`, `GiB` (powers of 1024); decimal units `KB`, `MB`, `GB` (powers of
/// 1000). Units are case-insensitive and may follow a space; a fraction is
/// allowed with a unit when the result is a whole number of bytes
/// (`1.5KiB`). `K`, `M` and `G` alone are refused as ambiguous.
///
/// ```
/// use tether_bench::parse_size;
/// assert_eq!(parse_size("1MiB"), Ok(1 << 20));
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1MB"), Ok(1_000_000));
/// assert_eq!(parse_size("1048576"), Ok(1_048_576));
/// assert!(parse_size("1M").unwrap_err().contains("MiB"));
/// ```
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.' && c != '_').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num = num.replace('_', "");
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (examples: 1048576, 512B, 64KiB, 1MiB, 1GB)"));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u @ ("k" | "m" | "g") => {
            let u = u.to_ascii_uppercase();
            return Err(format!("{s:?}: is {u} {u}iB (powers of 1024) or {u}B (powers of 1000)? write one of them"));
        }
        other => return Err(format!("unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    let too_large = || format!("{s:?} is too large a size");
    let bytes = match num.parse::<u64>() {
        Ok(n) => n.checked_mul(multiplier).ok_or_else(too_large)?,
        Err(_) => {
            let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512B, 64KiB, 1MiB, 1GB)"))?;
            let bytes = value * multiplier as f64;
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err(too_large());
            }
            if bytes.fract() != 0.0 {
                return Err(format!("{s:?} is not a whole number of bytes"));
            }
            bytes as u64
        }
    };
    usize::try_from(bytes).map_err(|_| too_large())
}

/// A size for people: `1MiB`, `64KiB`, `1000000B`; exact (the largest binary
/// unit that divides it), so that it parses back to the same number.
pub fn format_size(bytes: usize) -> String {
    for (unit, factor) in [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("0", 0),
            ("512B", 512),
            ("512 b", 512),
            ("64KiB", 64 << 10),
            ("64kib", 64 << 10),
            ("1MiB", 1 << 20),
            ("1 MiB", 1 << 20),
            ("1GiB", 1 << 30),
            ("1KB", 1000),
            ("1MB", 1_000_000),
            ("2GB", 2_000_000_000),
            ("1.5KiB", 1536),
            ("1_000_000", 1_000_000),
            (" 4MiB ", 4 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text:?}");
        }
    }

    #[test]
    fn clear_errors() {
        assert!(parse_size("").unwrap_err().contains("not a size"));
        assert!(parse_size("big").unwrap_err().contains("not a size"));
        assert!(parse_size("-1").unwrap_err().contains("not a size"));
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1M").unwrap_err().contains("MiB"));
        assert!(parse_size("1.3B").unwrap_err().contains("whole number"));
        assert!(parse_size("1.2.3MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn format_round_trips() {
        for bytes in [0, 1, 256, 1000, 1024, 1536, 64 << 10, 1 << 20, 4 << 20, 64 << 20, 1 << 30, 3 << 30] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{}", format_size(bytes));
        }
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(1536), "1536B");
    }
}
