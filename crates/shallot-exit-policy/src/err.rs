//! Errors and warnings of this crate.

use std::fmt;

use shallot_error::{ErrorKind, HasKind};

/// The most characters of a policy line quoted in a message; longer lines are cut with `…`.
const MAX_QUOTED_CHARS: usize = 160;

/// An error from parsing a policy file (specs/06 §3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A line does not follow the grammar of specs/06 §3.2. The message names the file, line
    /// and column, says what was expected, and quotes the line.
    #[error("{location}: {message}\n{quoted}")]
    Syntax {
        /// Where: file, line, column.
        location: Location,
        /// What was expected and what was found.
        message: String,
        /// The offending line, indented, with a caret under the column.
        quoted: QuotedLine,
    },
    /// The file has more rules than [`crate::MAX_RULES`] (specs/06 §3.4).
    #[error("{source_name}: too many rules (more than {max}); merge rules or use prefixes")]
    TooManyRules {
        /// The file name given to the parser.
        source_name: String,
        /// The limit.
        max: usize,
    },
}

impl PolicyError {
    /// Where the error is, for a syntax error.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PolicyError::Syntax { location, .. } => Some(location),
            PolicyError::TooManyRules { .. } => None,
        }
    }
}

/// A position in a policy file: `file:line:column`, both numbers from 1, the column counted in
/// characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name given to the parser.
    pub source_name: String,
    /// Line number, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source_name, self.line, self.column)
    }
}

/// A policy line quoted for a message: control characters escaped, long lines cut, and a caret
/// under the column that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotedLine {
    text: String,
    caret_at: usize,
}

impl QuotedLine {
    /// Quotes `line` with a caret under character `column` (from 1).
    pub(crate) fn new(line: &str, column: u32) -> Self {
        let caret_char = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        let mut text = String::new();
        let mut caret_at = 0;
        for (i, c) in line.chars().enumerate() {
            if i == MAX_QUOTED_CHARS {
                text.push('…');
                break;
            }
            if i == caret_char {
                caret_at = text.chars().count();
            }
            if c.is_control() {
                text.extend(c.escape_default());
            } else {
                text.push(c);
            }
        }
        if caret_char >= line.chars().count().min(MAX_QUOTED_CHARS) {
            caret_at = text.chars().count();
        }
        QuotedLine { text, caret_at }
    }

    /// The quoted line, without indentation or caret.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for QuotedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {}\n  {:>width$}",
            self.text,
            "^",
            width = self.caret_at + 1
        )
    }
}

/// Something in a policy file that parses but probably does not mean what the operator wanted
/// (specs/06 §3.3). Tor logs the same situations as warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseWarning {
    /// Where the suspicious rule is.
    pub location: Location,
    /// What is suspicious and what Shallot does with it.
    pub message: String,
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.location, self.message)
    }
}

/// An error from decoding a policy summary (specs/06 §7.3). Summaries come from other peers, so
/// this is remote input: the decoder rejects anything that is not canonical.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    /// Longer than [`crate::MAX_SUMMARY_LEN`] bytes.
    #[error("policy summary is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The length seen.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid UTF-8 (only from [`crate::PolicySummary::decode_bytes`]).
    #[error("policy summary is not UTF-8")]
    NotUtf8,
    /// Does not start with `accept ` or `reject `.
    #[error("policy summary must start with \"accept \" or \"reject \"")]
    BadKeyword,
    /// A port-list entry is not `PORT` or `LOW-HIGH` with `1 <= LOW < HIGH <= 65535` and no
    /// leading zeros.
    #[error("policy summary entry {index} is not a port or an increasing port range")]
    BadEntry {
        /// The entry's position, from 0.
        index: usize,
    },
    /// An entry does not start after the previous one ended plus one (entries must be
    /// ascending, disjoint and non-adjacent).
    #[error("policy summary entry {index} is out of order, overlaps or touches the one before")]
    NotCanonical {
        /// The entry's position, from 0.
        index: usize,
    },
}

impl HasKind for PolicyError {
    /// A policy file is the operator's configuration.
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadConfig
    }
}

impl HasKind for SummaryError {
    /// Summaries come from other peers' descriptors.
    fn kind(&self) -> ErrorKind {
        ErrorKind::Protocol
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoted_line_puts_caret_under_column() {
        let q = QuotedLine::new("accept *:80x", 10);
        assert_eq!(q.to_string(), "  accept *:80x\n           ^");
    }

    #[test]
    fn quoted_line_escapes_controls_and_cuts_long_lines() {
        let q = QuotedLine::new("a\tb", 3);
        assert_eq!(q.text(), "a\\tb");
        assert_eq!(q.to_string(), "  a\\tb\n     ^");
        let long = "x".repeat(1000);
        let q = QuotedLine::new(&long, 999);
        assert_eq!(q.text().chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(q.text().ends_with('…'));
    }

    #[test]
    fn quoted_line_caret_at_end_of_line() {
        let q = QuotedLine::new("accept", 7);
        assert_eq!(q.to_string(), "  accept\n        ^");
    }
}
