//! Sizes in bytes as written in job files: `"64MiB"`, `"512 KiB"`, `"1GiB"`, `"4096B"`,
//! or a bare integer number of bytes.

use serde::de::{Deserialize, Deserializer};

use super::raw::text_or_integer;

/// What every size error says after its own words.
const EXPECTED: &str =
    "expected a number followed by B, KiB, MiB or GiB, e.g. \"64MiB\", or a number of bytes";

/// Parses a size: a whole number, an optional space and one of the binary units `B`,
/// `KiB`, `MiB`, `GiB`; a bare number is bytes. Decimal units (`MB`) are refused with
/// a hint, since whether they mean 10⁶ or 2²⁰ is a guess. The error is a sentence
/// fragment to append to e.g. `invalid size "x" for `memory-limit`: `.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" | "MB" | "GB" => {
            return Err(format!(
                "decimal units are ambiguous; write {digits}{} instead",
                unit.replace('B', "iB").replace('k', "K")
            ));
        }
        _ => return Err(EXPECTED.to_owned()),
    };
    let too_large = || format!("the number is too large; {EXPECTED}");
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    number.checked_mul(factor).ok_or_else(too_large)
}

/// A size as people read it: the largest binary unit that divides it, e.g. `64 MiB`.
pub fn format_size(bytes: u64) -> String {
    for (unit, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{} {unit}", bytes / factor);
        }
    }
    format!("{bytes} B")
}

/// A size's text as deserialized from the job file; [`parse_size`] reads it later,
/// where the key's name is known for the error. Integers are kept as their decimal
/// text (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SizeText(pub(crate) String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text_or_integer(
            deserializer,
            "a size such as \"64MiB\" or a number of bytes",
        )
        .map(SizeText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_unit_is_understood() {
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    }

    #[test]
    fn a_bare_number_is_bytes_and_a_space_is_allowed() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
    }

    #[test]
    fn decimal_units_are_refused_with_the_binary_spelling() {
        let err = parse_size("64MB").expect_err("ambiguous");
        assert!(err.contains("64MiB"), "{err}");
        let err = parse_size("1kB").expect_err("ambiguous");
        assert!(err.contains("1KiB"), "{err}");
    }

    #[test]
    fn nonsense_and_overflow_are_rejected() {
        assert_eq!(parse_size("lots"), Err(EXPECTED.to_owned()));
        assert_eq!(parse_size("64 parsecs"), Err(EXPECTED.to_owned()));
        assert!(parse_size("-1MiB").is_err());
        assert!(parse_size("1.5GiB").is_err());
        let err = parse_size("99999999999999GiB").expect_err("too large");
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn sizes_are_shown_in_the_largest_unit_that_divides_them() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(format_size(0), "0 B");
    }
}
