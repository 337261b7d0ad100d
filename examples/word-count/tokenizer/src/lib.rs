//! Word count, step one: splits lines of text into words.
//!
//! Each input record holds one UTF-8 line. The operator emits one record per word, with
//! the word as both key and value and the line's timestamp, so that a `key-by` edge
//! can send every occurrence of a word to the same counter subtask.

use weir_sdk::{Batch, Context, Error, Operator, Output, RecordRef, Result};

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
    words(line).map(str::to_lowercase)
}

/// The words of `line` as they are written.
fn words(line: &str) -> impl Iterator<Item = &str> + '_ {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
}

/// Calls `f` with each word of `line`, lowercased as [`tokenize`] does, in a buffer
/// reused from word to word: an ASCII word is lowercased in place, without an
/// allocation.
///
/// ```
/// let mut seen = Vec::new();
/// word_count_tokenizer::for_each_word("The WEIR", &mut String::new(), |w| seen.push(w.to_owned()));
/// assert_eq!(seen, ["the", "weir"]);
/// ```
pub fn for_each_word(line: &str, scratch: &mut String, mut f: impl FnMut(&str)) {
    for word in words(line) {
        scratch.clear();
        if word.is_ascii() {
            scratch.push_str(word);
            scratch.make_ascii_lowercase();
        } else {
            // `str::to_lowercase` knows the final sigma; a per-char mapping would not.
            scratch.push_str(&word.to_lowercase());
        }
        f(scratch);
    }
}

/// The tokenizer operator; it keeps no state but a buffer for the current word.
#[derive(Default)]
pub struct Tokenizer {
    word: String,
}

impl Operator for Tokenizer {
    fn open(_ctx: &Context) -> Result<Self> {
        Ok(Tokenizer::default())
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        for record in batch.iter() {
            let line = std::str::from_utf8(record.value).map_err(|e| {
                Error::new(format!(
                    "tokenizer needs UTF-8 text, but a record is not: {e}"
                ))
            })?;
            for_each_word(line, &mut self.word, |word| {
                out.emit(RecordRef {
                    key: Some(word.as_bytes()),
                    value: word.as_bytes(),
                    timestamp: record.timestamp,
                });
            });
        }
        Ok(())
    }
}

weir_sdk::export_operator!(Tokenizer);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Record;

    fn words(line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for_each_word(line, &mut String::new(), |w| seen.push(w.to_owned()));
        assert_eq!(seen, tokenize(line).collect::<Vec<_>>());
        seen
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
    fn a_final_capital_sigma_lowercases_to_the_final_form() {
        assert_eq!(words("ΟΔΟΣ"), ["οδος"]);
    }

    #[test]
    fn a_line_without_letters_has_no_words() {
        assert!(words(" -- !? ").is_empty());
        assert!(words("").is_empty());
    }

    #[test]
    fn each_word_becomes_a_keyed_record_with_the_line_timestamp() {
        let mut op = Tokenizer::default();
        let mut out = Output::new();
        let line = Record::new("Weir, weir").with_timestamp(5);
        assert!(
            op.process(&[line.as_ref()].into_iter().collect(), &mut out)
                .is_ok()
        );
        let expected = RecordRef::new(b"weir").with_key(b"weir").with_timestamp(5);
        assert_eq!(out.iter().collect::<Vec<_>>(), [expected, expected]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error() {
        let mut out = Output::new();
        let batch = [RecordRef::new(&[0xff, 0xfe])].into_iter().collect();
        let result = Tokenizer::default().process(&batch, &mut out);
        assert!(result.is_err_and(|e| e.message().contains("UTF-8")));
    }
}
