//! The line protocol a worker command uses to report through `nightshift agent`: lines on its
//! stdout that start with `::nightshift::`.
//!
//! - `::nightshift:: progress DONE/TOTAL [message...]` (DONE <= TOTAL, plain decimal integers);
//! - `::nightshift:: result {json object}`;
//! - `::nightshift:: checkpoint TEXT` (TEXT: the rest of the line, outer whitespace dropped; the
//!   next attempt of the shard receives it; an empty TEXT clears the checkpoint).
//!
//! Any other line, a malformed directive included, is ordinary output: the agent passes every
//! line through unchanged, and a typo in a directive must never stop the work.

use serde_json::Value;

/// The marker that starts a directive line.
pub const PREFIX: &str = "::nightshift::";

/// What a directive line asks the agent to report.
#[derive(Clone, Debug, PartialEq)]
pub enum Directive {
    /// `progress DONE/TOTAL [message...]`; `message` is empty when the line has none.
    Progress { done: u64, total: u64, message: String },
    /// `result {...}`: always a JSON object.
    Result(Value),
    /// `checkpoint TEXT`: the text, possibly empty.
    Checkpoint(String),
}

/// Parses one line of output (with or without its line ending). None for ordinary output and
/// for malformed directives.
pub fn parse_line(line: &str) -> Option<Directive> {
    let rest = line.trim_start().strip_prefix(PREFIX)?;
    // `::nightshift::progress` is not a directive: the keyword is a word of its own.
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let (keyword, rest) = split_word(rest.trim_start());
    match keyword {
        "progress" => {
            let (fraction, message) = split_word(rest.trim_start());
            let (done, total) = fraction.split_once('/')?;
            let (done, total) = (parse_count(done)?, parse_count(total)?);
            // More done than there is to do is a bug in the worker; showing it as progress
            // (over 100%) would mislead more than ignoring the line.
            if done > total {
                return None;
            }
            Some(Directive::Progress { done, total, message: message.trim().to_string() })
        }
        "result" => match serde_json::from_str(rest.trim()).ok()? {
            value @ Value::Object(_) => Some(Directive::Result(value)),
            _ => None,
        },
        "checkpoint" => Some(Directive::Checkpoint(rest.trim().to_string())),
        _ => None,
    }
}

/// The first whitespace-separated word of `s` (which starts with no whitespace) and the rest.
fn split_word(s: &str) -> (&str, &str) {
    s.split_once(char::is_whitespace).unwrap_or((s, ""))
}

/// A count: ASCII digits only (no sign, no spaces), as `u64::from_str` alone would accept `+3`.
fn parse_count(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn progress(done: u64, total: u64, message: &str) -> Option<Directive> {
        Some(Directive::Progress { done, total, message: message.to_string() })
    }

    #[test]
    fn progress_well_formed() {
        assert_eq!(parse_line("::nightshift:: progress 40/100"), progress(40, 100, ""));
        assert_eq!(parse_line("::nightshift:: progress 0/0"), progress(0, 0, ""));
        assert_eq!(parse_line("::nightshift:: progress 100/100 done"), progress(100, 100, "done"));
        assert_eq!(parse_line("::nightshift:: progress 3/10 loading"), progress(3, 10, "loading"));
    }

    #[test]
    fn progress_message_keeps_inner_spaces_and_drops_outer_whitespace() {
        assert_eq!(
            parse_line("::nightshift:: progress 3/10   loading  rows 1-300 of 1000  \n"),
            progress(3, 10, "loading  rows 1-300 of 1000")
        );
        assert_eq!(parse_line("::nightshift:: progress 3/10\tnow\r\n"), progress(3, 10, "now"));
        assert_eq!(parse_line("::nightshift:: progress 3/10 ünïcödé ✓"), progress(3, 10, "ünïcödé ✓"));
    }

    #[test]
    fn whitespace_around_the_parts_is_tolerated() {
        assert_eq!(parse_line("   ::nightshift:: progress 1/2"), progress(1, 2, ""));
        assert_eq!(parse_line("\t::nightshift::   progress   1/2   x"), progress(1, 2, "x"));
        assert_eq!(parse_line("::nightshift:: progress 1/2\n"), progress(1, 2, ""));
        assert_eq!(parse_line("::nightshift:: progress 1/2\r\n"), progress(1, 2, ""));
    }

    #[test]
    fn largest_counts_parse() {
        let max = u64::MAX;
        assert_eq!(parse_line(&format!("::nightshift:: progress {max}/{max}")), progress(max, max, ""));
    }

    #[test]
    fn malformed_progress_is_ordinary_output() {
        for line in [
            "::nightshift:: progress",
            "::nightshift:: progress 3",
            "::nightshift:: progress 3/",
            "::nightshift:: progress /10",
            "::nightshift:: progress 3 / 10",
            "::nightshift:: progress three/10",
            "::nightshift:: progress 3/ten",
            "::nightshift:: progress 3.5/10",
            "::nightshift:: progress -1/10",
            "::nightshift:: progress +3/10",
            "::nightshift:: progress 3/10/20",
            "::nightshift:: progress 3/10loading",
            "::nightshift:: progress 18446744073709551616/18446744073709551616",
            // More done than total.
            "::nightshift:: progress 11/10",
            "::nightshift:: progress 1/0",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn result_well_formed() {
        assert_eq!(
            parse_line(r#"::nightshift:: result {"created":3}"#),
            Some(Directive::Result(json!({"created": 3})))
        );
        assert_eq!(
            parse_line("  ::nightshift:: result  { \"a\": [1, 2], \"b\": {\"c\": null} }  \r\n"),
            Some(Directive::Result(json!({"a": [1, 2], "b": {"c": null}})))
        );
        assert_eq!(parse_line("::nightshift:: result {}"), Some(Directive::Result(json!({}))));
    }

    #[test]
    fn bad_or_non_object_results_are_ordinary_output() {
        for line in [
            "::nightshift:: result",
            "::nightshift:: result {",
            "::nightshift:: result {created: 3}",
            r#"::nightshift:: result {"created":3} trailing"#,
            r#"::nightshift:: result {"a":1}{"b":2}"#,
            "::nightshift:: result [1, 2]",
            "::nightshift:: result 3",
            r#"::nightshift:: result "text""#,
            "::nightshift:: result null",
            "::nightshift:: result true",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn checkpoint_is_the_rest_of_the_line() {
        let checkpoint = |text: &str| Some(Directive::Checkpoint(text.to_string()));
        assert_eq!(parse_line("::nightshift:: checkpoint row=250"), checkpoint("row=250"));
        assert_eq!(
            parse_line("::nightshift:: checkpoint  {\"row\": 250, \"file\": \"a b\"} \r\n"),
            checkpoint(r#"{"row": 250, "file": "a b"}"#)
        );
        assert_eq!(parse_line("::nightshift:: checkpoint"), checkpoint(""));
        assert_eq!(parse_line("::nightshift:: checkpoint   \n"), checkpoint(""));
        assert_eq!(parse_line("::nightshift:: checkpointrow=1"), None);
    }

    #[test]
    fn other_lines_are_ordinary_output() {
        for line in [
            "",
            "hello",
            "progress 3/10",
            "::nightshift::",
            "::nightshift:: ",
            "::nightshift::progress 3/10",
            "::nightshift:: Progress 3/10",
            "::nightshift:: unknown 3/10",
            "::nightshift:: progress3/10",
            ":: nightshift:: progress 3/10",
            "echo ::nightshift:: progress 3/10",
            "::NIGHTSHIFT:: progress 3/10",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }
}
