//! A stateless map and filter: drops short values, uppercases and prefixes the rest.
//!
//! The operator's `config` is a JSON object (or empty):
//! `{"uppercase": true, "min-length": 0, "prefix": ""}`, with those defaults. The logic
//! is [`MapFilter::apply`], which the host's benchmark also runs natively as its
//! baseline.

use serde::Deserialize;
use weir_sdk::{Batch, Context, Operator, Output, Result};

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
        let mut mapped = Vec::new();
        self.keeps(value).then(|| {
            self.write(value, &mut mapped);
            mapped
        })
    }

    /// Whether `value` passes the filter.
    pub fn keeps(&self, value: &[u8]) -> bool {
        value.len() >= self.min_length
    }

    /// Appends the mapped `value` to `out`, which may hold other values before it.
    ///
    /// ```
    /// let mut out = b"before|".to_vec();
    /// map_filter::MapFilter::default().write(b"weir", &mut out);
    /// assert_eq!(out, b"before|WEIR");
    /// ```
    pub fn write(&self, value: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix.as_bytes());
        let start = out.len();
        out.extend_from_slice(value);
        if self.uppercase {
            out[start..].make_ascii_uppercase();
        }
    }
}

impl Operator for MapFilter {
    fn open(ctx: &Context) -> Result<Self> {
        ctx.config_json()
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        for record in batch.iter() {
            if self.keeps(record.value) {
                out.emit_with(record.key, record.timestamp, |value| {
                    self.write(record.value, value);
                });
            }
        }
        Ok(())
    }
}

weir_sdk::export_operator!(MapFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::RecordRef;

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
        let batch = [
            RecordRef::new(b"ab").with_key(b"k").with_timestamp(9),
            RecordRef::new(b"a"),
        ]
        .into_iter()
        .collect();
        assert!(op.process(&batch, &mut out).is_ok());
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            [RecordRef::new(b"AB").with_key(b"k").with_timestamp(9)]
        );
    }
}
