//! [`JobError`] and the [`Location`] every error carries, plus the mapping from
//! parser spans back to a line of the job file or to a `-D` override.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where in the user's configuration an error is: a line of the job file, a `-D`
/// override, or the file as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The job file, as the user named it.
    pub file: PathBuf,
    /// The place inside it.
    pub place: Place,
}

/// The place of an error inside the job file or the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The file as a whole (e.g. "the job has no sink").
    Whole,
    /// A 1-based line of the job file.
    Line(usize),
    /// A 1-based line and column of the job file (syntax errors).
    LineColumn(usize, usize),
    /// A `-D key=value` override, rendered as `key=value`.
    Override(String),
}

impl Location {
    /// The 1-based line of the job file, when the error has one.
    pub fn line(&self) -> Option<usize> {
        match self.place {
            Place::Line(line) | Place::LineColumn(line, _) => Some(line),
            Place::Whole | Place::Override(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.place {
            Place::Whole => write!(f, "{file}"),
            Place::Line(line) => write!(f, "{file}, line {line}"),
            Place::LineColumn(line, column) => write!(f, "{file}, line {line}, column {column}"),
            Place::Override(text) => write!(f, "{file}, in -D {text}"),
        }
    }
}

/// What a missing file was supposed to be, for [`MissingFile`]'s message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    /// An operator's `.wasm` component.
    Component,
    /// One of a file source's input files.
    SourceInput,
}

/// A file that the job file refers to and that is not there.
#[derive(Debug)]
pub struct MissingFile {
    /// Where the path is written.
    pub at: Location,
    /// The node that refers to it, e.g. `operator "tokenize"`.
    pub node: String,
    /// What the file is for.
    pub role: FileRole,
    /// The path as written in the job file.
    pub given: String,
    /// The path resolved against the job file's directory.
    pub resolved: PathBuf,
    /// Whether something exists at `resolved` but is not a regular file.
    pub not_a_file: bool,
}

/// A key that the table it is in does not have.
#[derive(Debug)]
pub struct UnknownKey {
    /// Where the key is written.
    pub at: Location,
    /// The key.
    pub key: String,
    /// The table, e.g. `[[operator]] "count"` or `[restart] with strategy "none"`.
    pub table: String,
    /// The keys that the table does have.
    pub known: Vec<&'static str>,
    /// A suggestion: a close spelling, or the kind or strategy the key belongs to.
    pub hint: Option<String>,
}

/// An error in the job file or its overrides. Always the user's configuration to
/// fix; retrying does not help. The `Display` form is one or more sentences that
/// start with the file and line, e.g.
/// `job.toml, line 3: invalid duration "10 parsecs" for `interval`: ...`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file is not valid TOML.
    Syntax {
        /// Line and column of the parser's error.
        at: Location,
        /// The TOML parser's message.
        message: String,
    },
    /// A key that does not exist where it is written.
    UnknownKey(Box<UnknownKey>),
    /// A value that is the wrong type, out of range, or contradicts another.
    Invalid {
        /// The value's line, or its override.
        at: Location,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The nodes do not form a valid job graph (unknown inputs, cycles, ids,
    /// partitioning that does not fit the parallelism).
    Graph {
        /// The offending node's line.
        at: Location,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A referenced file does not exist.
    MissingFile(Box<MissingFile>),
    /// A `-D key=value` override that cannot be applied.
    Override {
        /// The override.
        at: Location,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The job file cannot be read.
    Io {
        /// The job file.
        at: Location,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl JobError {
    /// Where the error is.
    pub fn location(&self) -> &Location {
        match self {
            JobError::Syntax { at, .. }
            | JobError::Invalid { at, .. }
            | JobError::Graph { at, .. }
            | JobError::Override { at, .. }
            | JobError::Io { at, .. } => at,
            JobError::UnknownKey(detail) => &detail.at,
            JobError::MissingFile(detail) => &detail.at,
        }
    }

    /// The error without its location: what is wrong and the fix.
    pub fn message(&self) -> String {
        match self {
            JobError::Syntax { message, .. } => format!("invalid TOML: {message}."),
            JobError::Invalid { message, .. }
            | JobError::Graph { message, .. }
            | JobError::Override { message, .. } => message.clone(),
            JobError::UnknownKey(u) => {
                let mut text = format!(
                    "unknown key `{}` in {}. Known keys: {}.",
                    u.key,
                    u.table,
                    u.known.join(", ")
                );
                if let Some(hint) = &u.hint {
                    text.push(' ');
                    text.push_str(hint);
                }
                text
            }
            JobError::MissingFile(m) => {
                let problem = if m.not_a_file {
                    "is not a regular file"
                } else {
                    "does not exist"
                };
                let (what, fix) = match m.role {
                    FileRole::Component => (
                        "the component file",
                        "Build the guests first (scripts/build-guests.sh) or fix the path.",
                    ),
                    FileRole::SourceInput => (
                        "the input file",
                        "Fix the path; relative paths are resolved against the job file's directory.",
                    ),
                };
                format!(
                    "{}: {what} {} {problem} (resolved to {}). {fix}",
                    m.node,
                    m.given,
                    m.resolved.display()
                )
            }
            JobError::Io { source, .. } => {
                format!("cannot read the job file: {source}. Check the path and its permissions.")
            }
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message())
    }
}

/// The text that spans point into: the job file, followed by one snippet per
/// `-D` override in the same address space, so that any span maps back to a line
/// of the file or to the override that produced it.
pub(crate) struct Origin<'a> {
    file: &'a Path,
    text: &'a str,
    overrides: Vec<(Range<usize>, String)>,
}

impl<'a> Origin<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Origin {
            file,
            text,
            overrides: Vec::new(),
        }
    }

    /// The first offset after everything registered so far; an override's
    /// snippet is padded to start there.
    pub(crate) fn next_offset(&self) -> usize {
        self.overrides
            .last()
            .map_or(self.text.len() + 1, |(range, _)| range.end + 1)
    }

    /// Registers the span range of an override's snippet.
    pub(crate) fn add_override(&mut self, range: Range<usize>, text: String) {
        self.overrides.push((range, text));
    }

    pub(crate) fn whole(&self) -> Location {
        self.at_place(Place::Whole)
    }

    pub(crate) fn at_place(&self, place: Place) -> Location {
        Location {
            file: self.file.to_path_buf(),
            place,
        }
    }

    pub(crate) fn at_override(&self, text: &str) -> Location {
        self.at_place(Place::Override(text.to_owned()))
    }

    /// The location of a span; `None` means the file as a whole.
    pub(crate) fn at(&self, span: Option<Range<usize>>) -> Location {
        let Some(span) = span else {
            return self.whole();
        };
        if span.start <= self.text.len() {
            return self.at_place(Place::Line(self.line_of(span.start)));
        }
        match self
            .overrides
            .iter()
            .find(|(range, _)| range.start <= span.start && span.start <= range.end)
        {
            Some((_, text)) => self.at_override(text),
            None => self.whole(),
        }
    }

    /// The location of a span with its column, for syntax errors.
    pub(crate) fn at_with_column(&self, span: Option<Range<usize>>) -> Location {
        match span {
            Some(span) if span.start <= self.text.len() => {
                let before = &self.text[..floor_char_boundary(self.text, span.start)];
                let column = before
                    .rsplit('\n')
                    .next()
                    .map_or(0, |line| line.chars().count())
                    + 1;
                self.at_place(Place::LineColumn(self.line_of(span.start), column))
            }
            other => self.at(other),
        }
    }

    /// The trimmed text of the file's line at `offset`, if it is short enough to
    /// quote in a message.
    pub(crate) fn line_text(&self, offset: usize) -> Option<&'a str> {
        /// Longer lines are not quoted; the line and column still point at them.
        const MAX_QUOTED: usize = 80;
        if offset > self.text.len() {
            return None;
        }
        let offset = floor_char_boundary(self.text, offset);
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = self.text[start..end].trim();
        (!line.is_empty() && line.len() <= MAX_QUOTED).then_some(line)
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = floor_char_boundary(self.text, offset);
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}
