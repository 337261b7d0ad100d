//! Durations as written in job files: `"500ms"`, `"2s"`, `"10 min"`, `"1h"`, `"1d"`, `"0"`.

use std::time::Duration;

use serde::de::{Deserialize, Deserializer};

use super::raw::text_or_integer;

/// What every duration error says after its own words.
const EXPECTED: &str = "expected a number followed by ms, s, min, h or d, e.g. \"500ms\"";

/// Parses a duration: a whole number, an optional space and one of the units
/// `ms`, `s`, `min`, `h`, `d` (Flink's short unit names). A bare `0` is allowed;
/// any other number needs a unit. The error is a sentence fragment to append to
/// e.g. `invalid duration "x" for `interval`: `.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let seconds_per_unit = match unit {
        "ms" => None,
        "s" => Some(1),
        "min" => Some(60),
        "h" => Some(60 * 60),
        "d" => Some(24 * 60 * 60),
        "" => return Err(format!("a number needs a unit; {EXPECTED}")),
        _ => return Err(EXPECTED.to_owned()),
    };
    let too_large = || format!("the number is too large; {EXPECTED}");
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    match seconds_per_unit {
        None => Ok(Duration::from_millis(number)),
        Some(factor) => number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
    }
}

/// A duration's text as deserialized from the job file; [`parse_duration`] reads
/// it later, where the key's name is known for the error. Integers are accepted
/// and kept as their decimal text, because `-D checkpointing.min-pause=0` arrives
/// as the TOML integer 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DurationText(pub(crate) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text_or_integer(deserializer, "a duration string such as \"500ms\"").map(DurationText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_understood() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn a_space_between_number_and_unit_is_allowed() {
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1 min"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn a_bare_zero_is_allowed_and_zero_with_a_unit_too() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_bare_number_other_than_zero_needs_a_unit() {
        let err = parse_duration("500").expect_err("invalid");
        assert!(err.contains("needs a unit"), "{err}");
    }

    #[test]
    fn an_unknown_unit_is_rejected_with_the_expected_form() {
        let err = parse_duration("10 parsecs").expect_err("invalid");
        assert_eq!(err, EXPECTED);
        assert!(
            parse_duration("1m").is_err(),
            "`m` is ambiguous, so not a unit"
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn a_duration_too_large_to_represent_is_rejected() {
        let err = parse_duration("99999999999999999999d").expect_err("invalid");
        assert!(err.contains("too large"), "{err}");
        let err = parse_duration("18446744073709551615d").expect_err("invalid");
        assert!(err.contains("too large"), "{err}");
    }
}
