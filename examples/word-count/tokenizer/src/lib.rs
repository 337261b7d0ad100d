//! Word count, step one: splits lines of text into words.
//!
//! Each input record holds one UTF-8 line. The operator emits one record per word, with
//! the word as both key and value and the line's timestamp, so that a `key-by` edge
//! can send every occurrence of a word to the same counter subtask.

use weir_sdk::{Context, Error, Operator, Output, Record, Result};

/// The words of `line`, lowercased, in order.
///
/// A word is a maximal run of alphanumeric characters ([`char::is_alphanumeric`]);
/// everything else separates words and empty tokens are dropped. The line is split
/// first and each word lowercased after, so a word stays one token even where
/// lowercasing yields a combining mark (as `İ` does).
///
/// ```
/// let words: Vec<String> = word_count_tokenizer::tokenize("The weir, the WEIR!").collect();
/// assert_eq!(words, ["the", "weir", "the", "weir"]);
/// ```
pub fn tokenize(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// The tokenizer operator; it keeps no state.
pub struct Tokenizer;

impl Operator for Tokenizer {
    fn open(_ctx: &Context) -> Result<Self> {
        Ok(Tokenizer)
    }

    fn process(&mut self, batch: Vec<Record>, out: &mut Output) -> Result<()> {
        for record in batch {
            let line = std::str::from_utf8(&record.value).map_err(|e| {
                Error::new(format!(
                    "tokenizer needs UTF-8 text, but a record is not: {e}"
                ))
            })?;
            for word in tokenize(line) {
                let word = word.into_bytes();
                out.emit(Record {
                    key: Some(word.clone()),
                    value: word,
                    timestamp: record.timestamp,
                });
            }
        }
        Ok(())
    }
}

weir_sdk::export_operator!(Tokenizer);

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line).collect()
    }

    #[test]
    fn words_are_lowercased() {
        assert_eq!(words("River WEIR Mill"), ["river", "weir", "mill"]);
    }

    #[test]
    fn punctuation_and_runs_of_spaces_separate_words_without_empty_tokens() {
        assert_eq!(
            words("  the weir--and, the mill...  "),
            ["the", "weir", "and", "the", "mill"]
        );
    }

    #[test]
    fn digits_belong_to_words() {
        assert_eq!(
            words("lock 42 opened in 1790s"),
            ["lock", "42", "opened", "in", "1790s"]
        );
    }

    #[test]
    fn letters_beyond_ascii_stay_in_their_words() {
        assert_eq!(words("Ærø straße, ĐÚRA"), ["ærø", "straße", "đúra"]);
    }

    #[test]
    fn a_line_without_letters_has_no_words() {
        assert!(words(" -- !? ").is_empty());
        assert!(words("").is_empty());
    }

    #[test]
    fn each_word_becomes_a_keyed_record_with_the_line_timestamp() {
        let mut op = Tokenizer;
        let mut out = Output::new();
        let line = Record::new("Weir, weir").with_timestamp(5);
        assert!(op.process(vec![line], &mut out).is_ok());
        let expected = Record::new("weir").with_key("weir").with_timestamp(5);
        assert_eq!(out.records(), [expected.clone(), expected]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error() {
        let mut out = Output::new();
        let result = Tokenizer.process(vec![Record::new(vec![0xff, 0xfe])], &mut out);
        assert!(result.is_err_and(|e| e.message().contains("UTF-8")));
    }
}
