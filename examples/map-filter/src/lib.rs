//! A stateless map and filter: drops short values, uppercases and prefixes the rest.
//!
//! The operator's `config` is a JSON object (or empty):
//! `{"uppercase": true, "min-length": 0, "prefix": ""}`, with those defaults. The logic
//! is [`MapFilter::apply`], which the host's benchmark also runs natively as its
//! baseline.

use serde::Deserialize;
use weir_sdk::{Context, Operator, Output, Record, Result};

/// The configuration, and the operator itself.
///
/// ```
/// let op: map_filter::MapFilter = Default::default();
/// assert_eq!(op.apply(b"weir"), Some(b"WEIR".to_vec()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MapFilter {
    /// Whether to uppercase the ASCII letters of the value.
    pub uppercase: bool,
    /// Values shorter than this many bytes are dropped.
    pub min_length: usize,
    /// Put in front of every value that passes (not uppercased).
    pub prefix: String,
}

impl Default for MapFilter {
    fn default() -> Self {
        Self {
            uppercase: true,
            min_length: 0,
            prefix: String::new(),
        }
    }
}

impl MapFilter {
    /// The new value for `value`, or `None` to drop the record.
    ///
    /// ```
    /// use map_filter::MapFilter;
    ///
    /// let op = MapFilter { min_length: 2, prefix: "> ".into(), ..MapFilter::default() };
    /// assert_eq!(op.apply(b"weir"), Some(b"> WEIR".to_vec()));
    /// assert_eq!(op.apply(b"w"), None);
    /// ```
    pub fn apply(&self, value: &[u8]) -> Option<Vec<u8>> {
        if value.len() < self.min_length {
            return None;
        }
        let mut mapped = Vec::with_capacity(self.prefix.len() + value.len());
        mapped.extend_from_slice(self.prefix.as_bytes());
        mapped.extend_from_slice(value);
        if self.uppercase {
            mapped[self.prefix.len()..].make_ascii_uppercase();
        }
        Some(mapped)
    }
}

impl Operator for MapFilter {
    fn open(ctx: &Context) -> Result<Self> {
        ctx.config_json()
    }

    fn process(&mut self, batch: Vec<Record>, out: &mut Output) -> Result<()> {
        for record in batch {
            if let Some(value) = self.apply(&record.value) {
                out.emit(Record { value, ..record });
            }
        }
        Ok(())
    }
}

weir_sdk::export_operator!(MapFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn open(config: &str) -> Result<MapFilter> {
        MapFilter::open(&Context {
            config: config.into(),
            ..Context::default()
        })
    }

    #[test]
    fn an_empty_config_uppercases_everything_and_drops_nothing() {
        assert_eq!(open("").ok(), Some(MapFilter::default()));
        assert_eq!(MapFilter::default().apply(b""), Some(Vec::new()));
    }

    #[test]
    fn a_config_sets_each_field_by_its_kebab_case_name() {
        let expected = MapFilter {
            uppercase: false,
            min_length: 2,
            prefix: "> ".into(),
        };
        assert_eq!(
            open(r#"{"uppercase": false, "min-length": 2, "prefix": "> "}"#).ok(),
            Some(expected)
        );
    }

    #[test]
    fn an_unknown_config_field_is_an_error() {
        assert!(open(r#"{"min_length": 2}"#).is_err());
    }

    #[test]
    fn a_value_exactly_min_length_long_passes() {
        let op = MapFilter {
            min_length: 3,
            ..MapFilter::default()
        };
        assert_eq!(op.apply(b"abc"), Some(b"ABC".to_vec()));
        assert_eq!(op.apply(b"ab"), None);
    }

    #[test]
    fn the_prefix_is_not_uppercased() {
        let op = MapFilter {
            prefix: "key: ".into(),
            ..MapFilter::default()
        };
        assert_eq!(op.apply(b"v1"), Some(b"key: V1".to_vec()));
    }

    #[test]
    fn only_ascii_letters_are_uppercased() {
        assert_eq!(
            MapFilter::default().apply("straße 7".as_bytes()),
            Some("STRAßE 7".as_bytes().to_vec())
        );
    }

    #[test]
    fn without_uppercase_the_value_is_kept_as_it_is() {
        let op = MapFilter {
            uppercase: false,
            ..MapFilter::default()
        };
        assert_eq!(op.apply(b"Weir"), Some(b"Weir".to_vec()));
    }

    #[test]
    fn processing_keeps_key_and_timestamp_of_the_records_that_pass() {
        let mut op = MapFilter {
            min_length: 2,
            ..MapFilter::default()
        };
        let mut out = Output::new();
        let batch = vec![
            Record::new("ab").with_key("k").with_timestamp(9),
            Record::new("a"),
        ];
        assert!(op.process(batch, &mut out).is_ok());
        assert_eq!(
            out.records(),
            [Record::new("AB").with_key("k").with_timestamp(9)]
        );
    }
}
