//! The policy-file parser (specs/06 §3). Takes text and a source name; does no IO.

use std::net::{IpAddr, Ipv6Addr};

use crate::addr::{AddressFamily, IpPrefix, PRIVATE_NETS, dotted_mask_len, parse_ipv4};
use crate::err::{Location, ParseWarning, PolicyError, QuotedLine};
use crate::rule::{Decision, Origin, PortRange, Rule};

/// The most rules (non-blank, non-comment lines) a policy file may have. specs/06 §3.4.
pub const MAX_RULES: usize = 4096;

/// A rule line of the file, kept to say which rule decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceLine {
    /// Line number, from 1.
    pub(crate) number: u32,
    /// The rule as written, without surrounding blanks or comment.
    pub(crate) text: String,
}

/// The result of parsing a file.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) lines: Vec<SourceLine>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) warnings: Vec<ParseWarning>,
}

/// Parses a whole policy file. specs/06 §3.
pub(crate) fn parse(source_name: &str, text: &str) -> Result<Parsed, PolicyError> {
    let mut out = Parsed {
        lines: Vec::new(),
        rules: Vec::new(),
        warnings: Vec::new(),
    };
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        // specs/06 §3.1: a UTF-8 byte-order mark at the start of the file is ignored.
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        let ctx = LineCtx {
            source_name,
            number: u32::try_from(index + 1).unwrap_or(u32::MAX),
            line,
        };
        ctx.parse_into(&mut out)?;
        if out.lines.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules {
                source_name: source_name.to_owned(),
                max: MAX_RULES,
            });
        }
    }
    Ok(out)
}

/// Which addresses a parsed address pattern stands for.
enum Pattern {
    /// Both wildcards (`*` under `accept`/`reject`).
    AnyBoth,
    /// One family's wildcard (`*4`, `*6`, or `*` under `accept6`/`reject6`).
    Any(AddressFamily),
    /// An address (and later a mask).
    Addr(IpAddr),
}

struct LineCtx<'a> {
    source_name: &'a str,
    number: u32,
    line: &'a str,
}

/// The expected-address phrase used in several messages.
const EXPECTED_ADDRESS: &str =
    "an address (\"*\", \"*4\", \"*6\", \"private\", an IPv4 address or a bracketed IPv6 address)";

impl LineCtx<'_> {
    fn location(&self, offset: usize) -> Location {
        let column = self
            .line
            .get(..offset)
            .map_or(0, |s| s.chars().count())
            .saturating_add(1);
        Location {
            source_name: self.source_name.to_owned(),
            line: self.number,
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }

    fn error(&self, offset: usize, message: String) -> PolicyError {
        let location = self.location(offset);
        let quoted = QuotedLine::new(self.line, location.column);
        PolicyError::Syntax {
            location,
            message,
            quoted,
        }
    }

    fn warning(&self, offset: usize, message: String) -> ParseWarning {
        ParseWarning {
            location: self.location(offset),
            message,
        }
    }

    /// Parses one line. specs/06 §3.2.
    fn parse_into(&self, out: &mut Parsed) -> Result<(), PolicyError> {
        // specs/06 §3.1: '#' starts a comment that runs to the end of the line.
        let content = self.line.split('#').next().unwrap_or("");
        let mut tokens = tokens(content);
        let Some((kw_at, keyword)) = tokens.next() else {
            return Ok(()); // blank or comment-only line
        };
        let (decision, v6_keyword) = match keyword {
            "accept" => (Decision::Accept, false),
            "reject" => (Decision::Reject, false),
            "accept6" => (Decision::Accept, true),
            "reject6" => (Decision::Reject, true),
            other => return Err(self.error(kw_at, keyword_message(other))),
        };
        let Some((pat_at, pattern)) = tokens.next() else {
            return Err(self.error(
                content.trim_end().len(),
                format!("expected an address pattern after \"{keyword}\", found end of line"),
            ));
        };
        if let Some(comma) = pattern.find(',') {
            return Err(self.error(
                pat_at + comma,
                "expected one rule per line, found ',' (a torrc list): \
                 put each rule on its own line"
                    .to_owned(),
            ));
        }
        if let Some((extra_at, extra)) = tokens.next() {
            return Err(self.error(
                extra_at,
                format!(
                    "expected end of line or a '#' comment after the rule, found \"{}\"",
                    shown(extra)
                ),
            ));
        }
        let line_index = out.lines.len();
        let before = out.rules.len();
        let mut push = |prefix: IpPrefix, ports: PortRange| {
            out.rules.push(Rule {
                decision,
                prefix,
                ports,
                origin: Origin::Line(line_index),
            });
        };

        // specs/06 §4.1: "private" (Tor matches the prefix, then requires ':' and a port).
        if let Some(rest) = pattern.strip_prefix("private") {
            let Some(port_text) = rest.strip_prefix(':') else {
                return Err(self.error(
                    pat_at + "private".len(),
                    format!(
                        "expected ':' and a port after \"private\" (write \"private:*\" for \
                         every port), found {}",
                        found(rest)
                    ),
                ));
            };
            let ports = self.ports(port_text, pat_at + "private:".len(), &mut out.warnings)?;
            for net in PRIVATE_NETS {
                push(net, ports);
            }
            if v6_keyword {
                // tor's router_parse_addr_policy_private() warns the same way.
                out.warnings.push(self.warning(
                    kw_at,
                    format!(
                        "\"{keyword} private\" also covers the IPv4 private networks, as in \
                         Tor; write \"{}\" to say so",
                        &keyword[..keyword.len() - 1]
                    ),
                ));
            }
        } else {
            let (prefix_pattern, ports) =
                self.address_mask_ports(pattern, pat_at, v6_keyword, &mut out.warnings)?;
            match prefix_pattern {
                None => {} // accept6/reject6 with an IPv4 pattern: ignored (specs/06 §5.2)
                Some(Expanded::Both) => {
                    push(IpPrefix::any(AddressFamily::Ipv4), ports);
                    push(IpPrefix::any(AddressFamily::Ipv6), ports);
                }
                Some(Expanded::One(prefix)) => push(prefix, ports),
            }
        }
        if out.rules.len() > before {
            out.lines.push(SourceLine {
                number: self.number,
                text: content.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Parses `ADDR[/MASK][:PORTS]` the way Tor's `tor_addr_parse_mask_ports` does, with the
    /// stricter points of specs/06 §3.5. Returns `None` for a pattern that `accept6`/`reject6`
    /// ignore.
    fn address_mask_ports(
        &self,
        pattern: &str,
        at: usize,
        v6_keyword: bool,
        warnings: &mut Vec<ParseWarning>,
    ) -> Result<(Option<Expanded>, PortRange), PolicyError> {
        // Split into address, mask and ports as Tor does: a '[' address runs to ']'; otherwise
        // the address runs to the first '/' or ':'.
        let (addr_text, after, bracketed) = if let Some(inner) = pattern.strip_prefix('[') {
            let Some(close) = inner.find(']') else {
                return Err(self.error(
                    at + pattern.len(),
                    format!(
                        "expected ']' to close the IPv6 address, found {}",
                        found("")
                    ),
                ));
            };
            (&inner[..close], close + 2, true)
        } else {
            let end = pattern.find(['/', ':']).unwrap_or(pattern.len());
            (&pattern[..end], end, false)
        };
        let rest = &pattern[after..];
        let (mask_text, ports_text) = if let Some(m) = rest.strip_prefix('/') {
            match m.split_once(':') {
                Some((mask, ports)) => (Some(mask), Some(ports)),
                None => (Some(m), None),
            }
        } else if let Some(p) = rest.strip_prefix(':') {
            (None, Some(p))
        } else if rest.is_empty() {
            (None, None)
        } else {
            return Err(self.error(
                at + after,
                format!(
                    "expected '/' or ':' after the IPv6 address, found \"{}\"",
                    shown(rest)
                ),
            ));
        };
        let mask_at = at + after + 1;
        let ports_at = at + pattern.len() - ports_text.map_or(0, str::len);

        // The address. specs/06 §3.2, §5.1.
        let addr_at = if bracketed { at + 1 } else { at };
        let parsed = if bracketed {
            match addr_text.parse::<Ipv6Addr>() {
                Ok(a) => Pattern::Addr(IpAddr::V6(a)),
                Err(_) => {
                    return Err(self.error(
                        addr_at,
                        format!(
                            "expected an IPv6 address inside '[' ']', found \"{}\"",
                            shown(addr_text)
                        ),
                    ));
                }
            }
        } else {
            match addr_text {
                // tor(1) ExitPolicy: "*" is both wildcards, except under accept6/reject6.
                "*" if v6_keyword => Pattern::Any(AddressFamily::Ipv6),
                "*" => Pattern::AnyBoth,
                "*4" => Pattern::Any(AddressFamily::Ipv4),
                "*6" => Pattern::Any(AddressFamily::Ipv6),
                other => match parse_ipv4(other) {
                    Some(a) => Pattern::Addr(IpAddr::V4(a)),
                    None => {
                        let message = if pattern.matches(':').count() > 1 {
                            format!(
                                "expected {EXPECTED_ADDRESS}, found \"{}\": IPv6 addresses \
                                 go in brackets, as in \"[::1]:80\"",
                                shown(pattern)
                            )
                        } else {
                            format!("expected {EXPECTED_ADDRESS}, found {}", found(other))
                        };
                        return Err(self.error(addr_at, message));
                    }
                },
            }
        };

        // The mask. specs/06 §3.2.
        let prefix = match (parsed, mask_text) {
            (Pattern::AnyBoth | Pattern::Any(_), Some(mask)) => {
                return Err(self.error(
                    mask_at - 1,
                    format!(
                        "expected ':' or end of rule after a wildcard address (a wildcard takes \
                         no mask), found \"/{}\"",
                        shown(mask)
                    ),
                ));
            }
            (Pattern::AnyBoth, None) => None,
            (Pattern::Any(family), None) => Some(IpPrefix::any(family)),
            (Pattern::Addr(addr), None) => Some(IpPrefix::host(addr)),
            (Pattern::Addr(addr), Some(mask)) => {
                let len = self.mask_len(addr, mask, mask_at, warnings)?;
                IpPrefix::new(addr, len)
            }
        };

        let ports = match ports_text {
            None => PortRange::ALL,
            Some(text) => self.ports(text, ports_at, warnings)?,
        };

        // specs/06 §5.2: accept6/reject6 only make IPv6 rules; an IPv4 pattern is ignored.
        let expanded = match prefix {
            None => Expanded::Both,
            Some(p) if v6_keyword && p.family() == AddressFamily::Ipv4 => {
                warnings.push(self.warning(
                    at,
                    format!(
                        "\"{}\" is an IPv4 pattern under accept6/reject6: ignored, as in Tor \
                         (use accept/reject for IPv4)",
                        shown(pattern)
                    ),
                ));
                return Ok((None, ports));
            }
            Some(p) => Expanded::One(p),
        };
        Ok((Some(expanded), ports))
    }

    /// Parses the text after '/'. specs/06 §3.2.
    fn mask_len(
        &self,
        addr: IpAddr,
        mask: &str,
        at: usize,
        warnings: &mut Vec<ParseWarning>,
    ) -> Result<u8, PolicyError> {
        let width = AddressFamily::of(addr).width();
        let expected = match addr {
            IpAddr::V4(_) => "a prefix length 0-32 or a dotted IPv4 netmask",
            IpAddr::V6(_) => "a prefix length 0-128",
        };
        let mut len = if !mask.is_empty() && mask.len() <= 3 && is_digits(mask) {
            match mask.parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => {
                    return Err(self.error(
                        at,
                        format!("expected {expected} after '/', found \"{mask}\""),
                    ));
                }
            }
        } else if let (IpAddr::V4(_), Some(dotted)) = (addr, parse_ipv4(mask)) {
            dotted_mask_len(dotted).ok_or_else(|| {
                self.error(
                    at,
                    format!(
                        "expected a contiguous netmask such as 255.255.0.0 after '/', found \
                         \"{mask}\""
                    ),
                )
            })?
        } else {
            return Err(self.error(
                at,
                format!("expected {expected} after '/', found {}", found(mask)),
            ));
        };
        // Tor's quirk for IPv4-mapped IPv6 addresses (tor_addr_parse_mask_ports):
        // lengths 33-95 are refused and the others become 96 + len % 32.
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            if len > 32 && len < 96 {
                return Err(self.error(
                    at,
                    format!(
                        "expected a prefix length 0-32 or 96-128 for an IPv4-mapped address, \
                         found \"{mask}\""
                    ),
                ));
            }
            let tor_len = 96 + len % 32;
            if tor_len != len {
                warnings.push(self.warning(
                    at,
                    format!(
                        "Tor reads /{len} on an IPv4-mapped address as /{tor_len}; \
                         Shallot does the same"
                    ),
                ));
            }
            len = tor_len;
        }
        Ok(len)
    }

    /// Parses the text after ':' as Tor's `parse_port_range` does, but refuses trailing text.
    /// specs/06 §3.2.
    fn ports(
        &self,
        text: &str,
        at: usize,
        warnings: &mut Vec<ParseWarning>,
    ) -> Result<PortRange, PolicyError> {
        // Tor reads an empty port list as "*".
        if text.is_empty() || text == "*" {
            return Ok(PortRange::ALL);
        }
        let bad = || {
            self.error(
                at,
                format!(
                    "expected a port or port range after ':', found \"{}\"",
                    shown(text)
                ),
            )
        };
        let (low_text, high_text) = match text.split_once('-') {
            Some((l, h)) => (l, Some(h)),
            None => (text, None),
        };
        let low = port_number(low_text).ok_or_else(bad)?;
        let high = match high_text {
            None => low,
            Some(h) => match port_number(h) {
                Some(0) | None => return Err(bad()),
                Some(p) => p,
            },
        };
        if low > high {
            return Err(self.error(
                at,
                format!(
                    "expected a port range LOW-HIGH with LOW <= HIGH, found \"{}\"",
                    shown(text)
                ),
            ));
        }
        match PortRange::new(low.max(1), high) {
            Some(range) => Ok(range),
            None => {
                // Only "0" (or "0-0", refused above) gets here: Tor makes it the range 1-0.
                warnings.push(self.warning(
                    at,
                    "port 0 matches no connection: this rule never applies (as in Tor)".to_owned(),
                ));
                Ok(PortRange::EMPTY)
            }
        }
    }
}

/// A parsed address-and-mask, before ports are attached.
enum Expanded {
    Both,
    One(IpPrefix),
}

/// Whitespace-separated tokens with their byte offsets.
fn tokens(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split([' ', '\t', '\u{b}', '\u{c}'])
        .scan(0usize, |offset, tok| {
            let at = *offset;
            *offset += tok.len() + 1;
            Some((at, tok))
        })
        .filter(|(_, tok)| !tok.is_empty())
}

fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// A decimal port number 0-65535 of one to five digits.
fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !is_digits(s) {
        return None;
    }
    s.parse::<u16>().ok()
}

/// At most 40 characters of `s`, control characters escaped, for a message.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 40 {
            out.push('…');
            break;
        }
        if c.is_control() || c == '"' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `"text"`, or `end of rule` for an empty string.
fn found(s: &str) -> String {
    if s.is_empty() {
        "end of rule".to_owned()
    } else {
        format!("\"{}\"", shown(s))
    }
}

fn keyword_message(word: &str) -> String {
    let expected = "expected \"accept\", \"reject\", \"accept6\" or \"reject6\"";
    let hint = if word.eq_ignore_ascii_case("exitpolicy") {
        ": drop the torrc option name and write one rule per line"
    } else if ["accept", "reject", "accept6", "reject6"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
    {
        ": keywords are lower case, as in Tor"
    } else {
        ""
    };
    format!("{expected}, found \"{}\"{hint}", shown(word))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse("test.policy", text) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    fn warnings(text: &str) -> Vec<String> {
        match parse("test.policy", text) {
            Ok(p) => p.warnings.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn error_names_file_line_column_expected_and_quotes_line() {
        let text = "# web\naccept *:443\naccept *:80x\n";
        assert_eq!(
            err(text),
            "test.policy:3:10: expected a port or port range after ':', found \"80x\"\n  \
             accept *:80x\n           ^"
        );
    }

    #[test]
    fn error_messages_say_what_was_expected() {
        let cases: &[(&str, &str)] = &[
            (
                "ACCEPT *:80",
                "1:1: expected \"accept\", \"reject\", \"accept6\" or \"reject6\", found \"ACCEPT\": keywords are lower case",
            ),
            (
                "ExitPolicy accept *:80",
                "1:1: expected \"accept\", \"reject\", \"accept6\" or \"reject6\", found \"ExitPolicy\": drop the torrc option name",
            ),
            ("allow *:80", "1:1: expected \"accept\""),
            (
                "accept",
                "1:7: expected an address pattern after \"accept\", found end of line",
            ),
            ("accept   # nothing", "1:7: expected an address pattern"),
            (
                "accept *:80, reject *:*",
                "1:12: expected one rule per line, found ','",
            ),
            (
                "accept *:80 reject",
                "1:13: expected end of line or a '#' comment after the rule, found \"reject\"",
            ),
            (
                "accept example.com:80",
                "1:8: expected an address (\"*\", \"*4\", \"*6\", \"private\", an IPv4 address or a bracketed IPv6 address), found \"example.com\"",
            ),
            ("accept 2001:db8::1:80", "1:8: expected an address"),
            ("accept 2001:db8::1:80", "IPv6 addresses go in brackets"),
            (
                "accept [2001:db8::1:80",
                "1:23: expected ']' to close the IPv6 address",
            ),
            (
                "accept [1.2.3.4]:80",
                "1:9: expected an IPv6 address inside '[' ']', found \"1.2.3.4\"",
            ),
            (
                "accept [::1]x:80",
                "1:13: expected '/' or ':' after the IPv6 address, found \"x:80\"",
            ),
            ("accept 256.0.0.1:80", "1:8: expected an address"),
            ("accept 1.2.3:80", "1:8: expected an address"),
            (
                "accept 10.0.0.0/33",
                "1:17: expected a prefix length 0-32 or a dotted IPv4 netmask after '/', found \"33\"",
            ),
            (
                "accept [::]/129",
                "1:13: expected a prefix length 0-128 after '/', found \"129\"",
            ),
            (
                "accept 10.0.0.0/255.0.255.0",
                "1:17: expected a contiguous netmask",
            ),
            (
                "accept [::]/255.0.0.0",
                "1:13: expected a prefix length 0-128 after '/'",
            ),
            (
                "accept 10.0.0.0/:80",
                "1:17: expected a prefix length 0-32 or a dotted IPv4 netmask after '/', found end of rule",
            ),
            (
                "accept */8:80",
                "1:9: expected ':' or end of rule after a wildcard address",
            ),
            (
                "accept *:65536",
                "1:10: expected a port or port range after ':', found \"65536\"",
            ),
            (
                "accept *:99999999999999999999",
                "1:10: expected a port or port range",
            ),
            ("accept *:80-", "1:10: expected a port or port range"),
            ("accept *:-80", "1:10: expected a port or port range"),
            ("accept *:1-2-3", "1:10: expected a port or port range"),
            ("accept *:0-0", "1:10: expected a port or port range"),
            (
                "accept *:90-80",
                "1:10: expected a port range LOW-HIGH with LOW <= HIGH, found \"90-80\"",
            ),
            ("accept *:+80", "1:10: expected a port or port range"),
            (
                "reject private",
                "1:15: expected ':' and a port after \"private\"",
            ),
            (
                "reject private/8:*",
                "1:15: expected ':' and a port after \"private\" (write \"private:*\" for every port), found \"/8:*\"",
            ),
            (
                "reject [::ffff:1.2.3.4]/64",
                "expected a prefix length 0-32 or 96-128 for an IPv4-mapped address",
            ),
            ("accept é:80", "1:8: expected an address"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text:?}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn columns_count_characters_and_later_lines() {
        let got = err("\n\n# ünïcödé comment\n\taccept  ü:80");
        assert!(got.starts_with("test.policy:4:10: "), "{got}");
    }

    #[test]
    fn blank_comment_crlf_and_bom_lines_are_fine() {
        let p = match parse(
            "t",
            "\u{feff}# header\r\n\r\n   \t \naccept *:80 # web\r\nreject *:*",
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let texts: Vec<(u32, &str)> = p
            .lines
            .iter()
            .map(|l| (l.number, l.text.as_str()))
            .collect();
        assert_eq!(texts, [(4, "accept *:80"), (5, "reject *:*")]);
        // '*' expands to an IPv4 and an IPv6 rule per line.
        assert_eq!(p.rules.len(), 4);
    }

    #[test]
    fn warnings_for_what_tor_warns_about() {
        assert_eq!(
            warnings("accept6 1.2.3.4:80"),
            [
                "test.policy:1:9: warning: \"1.2.3.4:80\" is an IPv4 pattern under accept6/reject6: ignored, as in Tor (use accept/reject for IPv4)"
            ]
        );
        assert_eq!(warnings("reject6 *4:*").len(), 1);
        assert!(warnings("reject6 private:*")[0].contains("also covers the IPv4 private networks"));
        assert!(warnings("accept *:0")[0].contains("port 0 matches no connection"));
        assert!(
            warnings("accept [::ffff:1.2.3.4]/128")[0]
                .contains("/128 on an IPv4-mapped address as /96")
        );
        assert!(warnings("accept *:80\naccept6 *:80\nreject *4:*").is_empty());
    }

    #[test]
    fn too_many_rules_is_an_error() {
        let text = "reject *:1\n".repeat(MAX_RULES + 1);
        assert!(matches!(
            parse("big", &text),
            Err(PolicyError::TooManyRules { max: MAX_RULES, .. })
        ));
        let text = "reject *:1\n".repeat(MAX_RULES);
        assert!(parse("ok", &text).is_ok());
    }

    #[test]
    fn long_and_strange_lines_do_not_panic() {
        let long = format!("accept {}", "9".repeat(100_000));
        assert!(err(&long).contains("expected an address"));
        for text in [
            "\0",
            "accept [",
            "accept [",
            "accept [:",
            "accept ]",
            "accept *:\u{0}",
            "accept /",
            "accept :",
            "accept 1.2.3.4/",
            "accept6 [",
            "reject private:",
        ] {
            let _ = parse("t", text);
        }
    }
}
