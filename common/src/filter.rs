//! containerd's filter language (`github.com/containerd/containerd/v2/pkg/filters`), ported
//! scanner-for-scanner so that List/Walk requests select exactly what containerd would.
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)?
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_-]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := Go string syntax in "..."; after "~=" also /.../ and |...|
//! ```
//!
//! A selector without operator tests for presence. The selectors of one filter string are
//! AND-ed; the filter strings of a request are OR-ed ([`Filter::parse_all`]).
//!
//! Where this differs from containerd:
//! - An invalid `~=` regular expression is a parse error here; containerd accepts it and the
//!   selector then never matches (it compiles lazily and logs). Failing the request tells the
//!   client why nothing matched.
//! - Regular expressions use the `regex` crate: RE2 syntax like Go's, but `\d`, `\w`, `\s` and
//!   `\b` are Unicode-aware where Go's are ASCII-only.
//! - Which runes may start or continue a bare value follows Go's `unicode.IsGraphic`; the
//!   standard library has no general-category tables, so unassigned code points (other than
//!   noncharacters) are accepted where Go would stop the value.
//! - `\x` and octal escapes that produce invalid UTF-8 become U+FFFD; Go keeps the raw bytes,
//!   which no (UTF-8) label value can equal anyway.

use std::collections::BTreeMap;

use regex::Regex;

/// A value whose fields a filter can look at (containerd's `filters.Adaptor`).
pub trait Adaptor {
    /// The value at `fieldpath` (e.g. `["labels", "a.b"]`), or `None` when the field is not
    /// present. Present-but-empty (`Some("")`) differs from absent for the presence and `==`
    /// operators.
    fn field(&self, fieldpath: &[String]) -> Option<String>;
}

impl<F> Adaptor for F
where
    F: Fn(&[String]) -> Option<String>,
{
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        self(fieldpath)
    }
}

/// An [`Adaptor`] for the shape containerd gives snapshots and content: named top-level
/// fields plus a label map addressed as `labels.<key>`.
///
/// As in containerd's adaptors, a top-level field is matched on the first path element only,
/// the remaining elements of a `labels` path are joined with `.` (so `labels.a.b` and
/// `labels."a.b"` are the same label), and fields not added are absent. containerd reports
/// snapshots' `name`, `parent` and `kind` (`active`, `view`, `committed`; absent for other
/// kinds), content's `digest` (never `size`) and ingest statuses' `ref`, each present even
/// when empty.
#[derive(Debug, Clone, Default)]
pub struct FieldMap<'a> {
    fields: Vec<(&'a str, &'a str)>,
    labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> FieldMap<'a> {
    /// A map with no fields: every field path is absent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a top-level field that is present with `value`, even when `value` is empty.
    #[must_use]
    pub fn with_field(mut self, name: &'a str, value: &'a str) -> Self {
        self.fields.push((name, value));
        self
    }

    /// Serves `labels.<key>` from `labels`.
    #[must_use]
    pub fn with_labels(mut self, labels: &'a BTreeMap<String, String>) -> Self {
        self.labels = Some(labels);
        self
    }
}

impl Adaptor for FieldMap<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        let (first, rest) = fieldpath.split_first()?;
        if let (Some(labels), "labels") = (self.labels, first.as_str()) {
            return labels.get(&rest.join(".")).cloned();
        }
        self.fields
            .iter()
            .find(|(name, _)| name == first)
            .map(|(_, value)| (*value).to_owned())
    }
}

/// A parsed list of filter strings: matches when any string's selectors all match.
#[derive(Debug, Clone)]
pub struct Filter {
    // An empty inner list (from "" or from no filters at all) matches everything.
    any: Vec<Vec<Selector>>,
}

impl Default for Filter {
    /// The filter that matches everything, as containerd uses for an empty filter list.
    fn default() -> Self {
        Filter {
            any: vec![Vec::new()],
        }
    }
}

impl Filter {
    /// Parses the filters of a List/Walk request; an empty list matches everything.
    ///
    /// containerd appends `: invalid argument` (errdefs) to the error when it maps it to a
    /// gRPC status; callers map [`FilterError`] to InvalidArgument.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, FilterError> {
        if filters.is_empty() {
            return Ok(Filter::default());
        }
        let any = filters
            .iter()
            .map(|f| parse_selectors(f.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Filter { any })
    }

    /// Parses one filter string; the empty string matches everything.
    pub fn parse(filter: &str) -> Result<Filter, FilterError> {
        Ok(Filter {
            any: vec![parse_selectors(filter)?],
        })
    }

    /// Whether `a` is selected.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any
            .iter()
            .any(|all| all.iter().all(|selector| selector.matches(a)))
    }
}

/// A filter string that does not parse. Displays as containerd's `filters.Parse` error, e.g.
/// `filters: parse error: [name==foo >|,|< ]: ...`, marking the offending rune.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filters: parse error: {}: {message}", located(.input, .position))]
pub struct FilterError {
    input: String,
    position: usize,
    message: String,
}

impl FilterError {
    /// The filter string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Byte offset in [`input`](Self::input) where parsing failed.
    pub fn position(&self) -> usize {
        self.position
    }

    /// What was wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn located(input: &str, position: &usize) -> String {
    let position = *position;
    // Go slices one byte at the position; show the whole rune so the message stays UTF-8.
    match input.get(position..).and_then(|rest| rest.chars().next()) {
        Some(c) => {
            let before = input.get(..position).unwrap_or_default();
            let after = input.get(position + c.len_utf8()..).unwrap_or_default();
            format!("[{before} >|{c}|< {after}]")
        }
        None => format!("[{input}]"),
    }
}

#[derive(Debug, Clone)]
struct Selector {
    fieldpath: Vec<String>,
    operator: Operator,
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let value = a.field(&self.fieldpath);
        match &self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal(want) => value.as_deref() == Some(want.as_str()),
            // containerd compares against "" when absent, so `!=` selects absent fields too.
            Operator::NotEqual(want) => value.as_deref().unwrap_or_default() != want,
            Operator::Matches(re) => re.is_match(value.as_deref().unwrap_or_default()),
        }
    }
}

fn parse_selectors(input: &str) -> Result<Vec<Selector>, FilterError> {
    if input.is_empty() {
        return Ok(Vec::new());
    }
    Parser {
        input,
        scanner: Scanner::new(input),
    }
    .selectors()
}

struct Parser<'a> {
    input: &'a str,
    scanner: Scanner<'a>,
}

impl Parser<'_> {
    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut selectors = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Rune::Ch(',') => {
                    let (pos, tok, _) = self.scanner.scan();
                    if tok != Token::Separator {
                        return Err(self.error(pos, "expected a separator"));
                    }
                    selectors.push(self.selector()?);
                }
                Rune::Eof => return Ok(selectors),
                other => {
                    let message = format!("unexpected input: {}", other.as_char());
                    return Err(self.error(self.scanner.ppos, message));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let fieldpath = self.fieldpath()?;
        if matches!(self.scanner.peek(), Rune::Ch(',') | Rune::Eof) {
            return Ok(Selector {
                fieldpath,
                operator: Operator::Present,
            });
        }
        let op = self.operator()?;
        let (pos, value) = self.value(op == "~=")?;
        let operator = match op {
            "==" => Operator::Equal(value),
            "!=" => Operator::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Operator::Matches(re),
                Err(err) => {
                    let message =
                        format!("error parsing regexp: {}: `{value}`", regex_reason(&err));
                    return Err(self.error(pos, message));
                }
            },
        };
        Ok(Selector {
            fieldpath,
            operator,
        })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut fields = vec![self.field()?];
        while self.scanner.peek() == Rune::Ch('.') {
            let (pos, tok, _) = self.scanner.scan();
            if tok != Token::Separator {
                return Err(self.error(pos, "expected a field separator (`.`)"));
            }
            fields.push(self.field()?);
        }
        Ok(fields)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Field => Ok(text.to_owned()),
            Token::Quoted => self.unquote(pos, text, false),
            Token::Illegal => Err(self.error(pos, self.scanner.err)),
            _ => Err(self.error(pos, "expected field or quoted")),
        }
    }

    fn operator(&mut self) -> Result<&'static str, FilterError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Operator => match text {
                "==" => Ok("=="),
                "!=" => Ok("!="),
                "~=" => Ok("~="),
                // Operator runes are all ASCII, so Go's %q is plain double quoting here.
                _ => Err(self.error(pos, format!("unsupported operator \"{text}\""))),
            },
            Token::Illegal => Err(self.error(pos, self.scanner.err)),
            _ => Err(self.error(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        }
    }

    fn value(&mut self, allow_alt_quotes: bool) -> Result<(usize, String), FilterError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Value | Token::Field => Ok((pos, text.to_owned())),
            Token::Quoted => Ok((pos, self.unquote(pos, text, allow_alt_quotes)?)),
            Token::Illegal => Err(self.error(pos, self.scanner.err)),
            _ => Err(self.error(pos, "expected value or quoted")),
        }
    }

    fn unquote(&self, pos: usize, text: &str, allow_alts: bool) -> Result<String, FilterError> {
        if !allow_alts && !text.starts_with(['\'', '"']) {
            return Err(self.error(pos, "invalid quote encountered"));
        }
        unquote(text).ok_or_else(|| self.error(pos, "unquoting failed: quote syntax error"))
    }

    fn error(&self, position: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_owned(),
            position,
            message: message.into(),
        }
    }
}

/// The one-line reason out of the regex crate's multi-line, caret-annotated error.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

/// What the scanner reads: a rune, or one of Go's negative sentinel values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rune {
    Eof,
    Illegal,
    Ch(char),
}

impl Rune {
    fn as_char(self) -> char {
        match self {
            Rune::Ch(c) => c,
            // Go's string(rune(-n)) for the sentinels.
            Rune::Eof | Rune::Illegal => char::REPLACEMENT_CHARACTER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Eof,
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    Illegal,
    /// A rune that starts no token, returned as itself (Go's `token(ch)`).
    Char(char),
}

/// containerd's scanner. `pos` is the start of the last rune read and `ppos` its end; peeking
/// reads and rewinds, which can still record an error (the first error sticks, as in Go).
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    ppos: usize,
    // Set after an operator: the next word is a value, which may hold more than field runes.
    value: bool,
    err: &'static str,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner {
            input,
            pos: 0,
            ppos: 0,
            value: false,
            err: "",
        }
    }

    fn next(&mut self) -> Rune {
        if self.pos >= self.input.len() {
            return Rune::Eof;
        }
        self.pos = self.ppos;
        let Some(c) = self.input.get(self.ppos..).and_then(|s| s.chars().next()) else {
            return Rune::Eof;
        };
        self.ppos += c.len_utf8();
        // Go's decoder reports U+FFFD for invalid UTF-8 and the scanner rejects it either way.
        if c == char::REPLACEMENT_CHARACTER {
            self.error("rune error");
            return Rune::Illegal;
        }
        if c == '\0' {
            self.error("unexpected null");
            return Rune::Illegal;
        }
        Rune::Ch(c)
    }

    fn peek(&mut self) -> Rune {
        let (pos, ppos) = (self.pos, self.ppos);
        let ch = self.next();
        self.pos = pos;
        self.ppos = ppos;
        ch
    }

    fn text(&self, from: usize) -> &'a str {
        self.input.get(from..self.ppos).unwrap_or_default()
    }

    fn scan(&mut self) -> (usize, Token, &'a str) {
        let mut ch = self.next();
        let mut pos = self.pos;
        while let Rune::Ch(c) = ch {
            if is_quote_rune(c) {
                let tok = if self.scan_quoted(c) {
                    Token::Quoted
                } else {
                    Token::Illegal
                };
                return (pos, tok, self.text(pos));
            }
            if is_separator_rune(c) {
                self.value = false;
                return (pos, Token::Separator, self.text(pos));
            }
            if is_operator_rune(c) {
                self.scan_operator();
                self.value = true;
                return (pos, Token::Operator, self.text(pos));
            }
            if c.is_whitespace() {
                ch = self.next();
                pos = self.pos;
                continue;
            }
            if self.value {
                self.scan_value();
                self.value = false;
                return (pos, Token::Value, self.text(pos));
            }
            if is_field_rune(ch) {
                self.scan_field();
                return (pos, Token::Field, self.text(pos));
            }
            break;
        }
        let tok = match ch {
            Rune::Eof => Token::Eof,
            Rune::Illegal => Token::Illegal,
            Rune::Ch(c) => Token::Char(c),
        };
        (self.pos, tok, "")
    }

    fn scan_field(&mut self) {
        while is_field_rune(self.peek()) {
            self.next();
        }
    }

    fn scan_operator(&mut self) {
        while matches!(self.peek(), Rune::Ch(c) if is_operator_rune(c)) {
            self.next();
        }
    }

    fn scan_value(&mut self) {
        while is_value_rune(self.peek()) {
            self.next();
        }
    }

    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut illegal = false;
        let mut ch = self.next();
        while ch != Rune::Ch(quote) {
            match ch {
                Rune::Ch('\n') | Rune::Eof | Rune::Illegal => {
                    self.error("quoted literal not terminated");
                    return false;
                }
                Rune::Ch('\\') => {
                    let (after, legal) = self.scan_escape(quote);
                    ch = after;
                    illegal |= !legal;
                }
                Rune::Ch(_) => ch = self.next(),
            }
        }
        !illegal
    }

    /// Reads the escape after a backslash; returns the rune after it and whether it is legal.
    fn scan_escape(&mut self, quote: char) -> (Rune, bool) {
        let ch = self.next();
        match ch {
            Rune::Ch('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => (self.next(), true),
            Rune::Ch(c) if c == quote => (self.next(), true),
            Rune::Ch('0'..='7') => self.scan_digits(ch, 8, 3),
            Rune::Ch('x') => {
                let first = self.next();
                self.scan_digits(first, 16, 2)
            }
            Rune::Ch('u') => {
                let first = self.next();
                self.scan_digits(first, 16, 4)
            }
            Rune::Ch('U') => {
                let first = self.next();
                self.scan_digits(first, 16, 8)
            }
            _ => {
                self.error("illegal escape sequence");
                (ch, false)
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Rune, base: u32, mut n: usize) -> (Rune, bool) {
        while n > 0 && digit_val(ch) < base {
            ch = self.next();
            n -= 1;
        }
        if n > 0 {
            self.error("illegal numeric escape sequence");
            return (ch, false);
        }
        (ch, true)
    }

    fn error(&mut self, msg: &'static str) {
        if self.err.is_empty() {
            self.err = msg;
        }
    }
}

fn digit_val(ch: Rune) -> u32 {
    match ch {
        Rune::Ch(c) => c.to_digit(16).unwrap_or(16),
        Rune::Eof | Rune::Illegal => 16,
    }
}

fn is_field_rune(ch: Rune) -> bool {
    matches!(ch, Rune::Ch(c) if c == '-' || c == '_' || c.is_ascii_alphanumeric())
}

fn is_operator_rune(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_quote_rune(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}

fn is_separator_rune(c: char) -> bool {
    matches!(c, ',' | '.')
}

fn is_value_rune(ch: Rune) -> bool {
    matches!(ch, Rune::Ch(c) if c != ',' && !c.is_whitespace() && is_graphic(c))
}

/// Approximates Go's `unicode.IsGraphic` (letters, marks, numbers, punctuation, symbols and
/// space separators) by excluding the other categories that have fixed, known members:
/// controls, format characters, private use and noncharacters.
pub(crate) fn is_graphic(c: char) -> bool {
    let u = u32::from(c);
    let format = matches!(
        u,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private_use = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    let noncharacter = matches!(u, 0xFDD0..=0xFDEF) || u & 0xFFFE == 0xFFFE;
    let line_or_paragraph = matches!(u, 0x2028 | 0x2029);
    !(c.is_control() || format || private_use || noncharacter || line_or_paragraph)
}

/// Go's `strconv.Unquote`, as containerd extends it with `/` and `|` as double quotes.
/// `None` is Go's "quote syntax error".
fn unquote(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let (&quote, rest) = bytes.split_first()?;
    let (&last, body) = rest.split_last()?;
    if quote != last || !matches!(quote, b'"' | b'\'' | b'|' | b'/') || body.contains(&b'\n') {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        rest = unquote_char(rest, quote, &mut out)?;
        if quote == b'\'' && !rest.is_empty() {
            // A single-quoted literal is one character.
            return None;
        }
    }
    Some(match String::from_utf8(out) {
        Ok(s) => s,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// Decodes the first (possibly escaped) character of `s` into `out`; returns the rest.
fn unquote_char<'s>(s: &'s [u8], quote: u8, out: &mut Vec<u8>) -> Option<&'s [u8]> {
    let (&c, rest) = s.split_first()?;
    if c == quote {
        return None;
    }
    if c != b'\\' {
        // Multi-byte UTF-8 sequences pass through byte by byte unchanged.
        out.push(c);
        return Some(rest);
    }
    let (&c, rest) = rest.split_first()?;
    let simple = match c {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0C),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0B),
        b'\\' => Some(b'\\'),
        b'\'' | b'"' | b'|' | b'/' if c == quote => Some(c),
        _ => None,
    };
    if let Some(byte) = simple {
        out.push(byte);
        return Some(rest);
    }
    match c {
        b'x' | b'u' | b'U' => {
            let n = match c {
                b'x' => 2,
                b'u' => 4,
                _ => 8,
            };
            let digits = rest.get(..n)?;
            let mut v: u32 = 0;
            for &d in digits {
                v = v << 4 | char::from(d).to_digit(16)?;
            }
            if c == b'x' {
                // A single byte, possibly not UTF-8 on its own.
                out.push(u8::try_from(v).ok()?);
            } else {
                if v > 0x10FFFF {
                    return None;
                }
                // Go encodes surrogate halves as U+FFFD.
                let ch = char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            rest.get(n..)
        }
        b'0'..=b'7' => {
            let mut v = u32::from(c - b'0');
            for &d in rest.get(..2)? {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                v = v << 3 | u32::from(d - b'0');
            }
            out.push(u8::try_from(v).ok()?);
            rest.get(2..)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's filter_test.go corpus entry.
    struct Entry {
        name: &'static str,
        other: &'static str,
        labels: Vec<(&'static str, &'static str)>,
    }

    fn corpus() -> Vec<Entry> {
        let entry = |name, other, labels| Entry {
            name,
            other,
            labels,
        };
        vec![
            entry("foo", "", vec![("foo", "true")]),
            entry("bar", "", vec![]),
            entry(
                "foo",
                "",
                vec![("foo", "present"), ("more complex label", "present")],
            ),
            entry("bar", "", vec![("bar", "true")]),
            entry(
                "fooer",
                "",
                vec![("more complex label with \\ and \"", "present")],
            ),
            entry(
                "fooer",
                "",
                vec![("more complex label with \\ and \".post", "present")],
            ),
            entry("baz", "too complex, yo", vec![]),
            entry("bazo", "abc", vec![]),
            entry("compound", "", vec![("foo", "omg_asdf.asdf-qwer")]),
        ]
    }

    // The adaptor from filter_test.go: name and other are present when non-empty.
    impl Adaptor for Entry {
        fn field(&self, fieldpath: &[String]) -> Option<String> {
            let nonempty = |v: &str| (!v.is_empty()).then(|| v.to_owned());
            match fieldpath.first()?.as_str() {
                "name" => nonempty(self.name),
                "other" => nonempty(self.other),
                "labels" => {
                    let key = fieldpath[1..].join(".");
                    self.labels
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| (*v).to_owned())
                }
                _ => None,
            }
        }
    }

    fn matched(filter: &Filter) -> Vec<usize> {
        corpus()
            .iter()
            .enumerate()
            .filter(|(_, e)| filter.matches(*e))
            .map(|(i, _)| i)
            .collect()
    }

    fn parse_err(input: &str) -> String {
        match Filter::parse(input) {
            Ok(f) => panic!("{input:?} parsed: {f:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn containerd_filter_table() {
        let all: Vec<usize> = (0..9).collect();
        let cases: &[(&str, &str, &[usize])] = &[
            ("Empty", "", &all),
            ("Present", "name", &all),
            ("LabelPresent", "labels.foo", &[0, 2, 8]),
            ("NameAndLabelPresent", "labels.foo,name", &[0, 2, 8]),
            ("LabelValue", "labels.foo==true", &[0]),
            (
                "LabelValuePunctuated",
                "labels.foo==omg_asdf.asdf-qwer",
                &[8],
            ),
            ("Name", "name==bar", &[1, 3]),
            ("NameNotEqual", "name!=bar", &[0, 2, 4, 5, 6, 7, 8]),
            ("NameAndLabelPresent", "name==bar,labels.bar", &[3]),
            ("QuotedValue", "other==\"too complex, yo\"", &[6]),
            ("RegexpValue", "other~=[abc]+,name!=foo", &[6, 7]),
            ("RegexpQuotedValue", "other~=/[abc]+/,name!=foo", &[6, 7]),
            (
                "RegexpQuotedValue",
                "other~=/[abc]{1,2}/,name!=foo",
                &[6, 7],
            ),
            (
                "RegexpQuotedValueGarbage",
                "other~=/[abc]{0,1}\"\\//,name!=foo",
                &[],
            ),
            ("NameAndLabelValue", "name==bar,labels.bar==true", &[3]),
            (
                "NameAndLabelValueNoMatch",
                "name==bar,labels.bar==wrong",
                &[],
            ),
            (
                "LabelQuotedFieldPathPresent",
                r#"name==foo,labels."more complex label""#,
                &[2],
            ),
            (
                "LabelQuotedFieldPathPresentWithQuoted",
                r#"labels."more complex label with \\ and \""==present"#,
                &[4],
            ),
            (
                "LabelQuotedFieldPathPresentWithQuotedEmbed",
                r#"labels."more complex label with \\ and \"".post==present"#,
                &[5],
            ),
        ];
        for (name, input, expected) in cases {
            let filter = Filter::parse(input).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(matched(&filter), *expected, "{name}: {input:?}");
        }
    }

    #[test]
    fn containerd_parse_errors() {
        let cases = [
            (
                "LabelValueNoAltQuoting",
                "labels.|foo|==omg_asdf.asdf-qwer",
                "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
            ),
            (
                "LabelQuotedFieldPathPresentWithQuotedEmbedInvalid",
                r#"labels.?"more complex label with \\ and \"".post==present"#,
                r#"filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#,
            ),
            (
                "TrailingComma",
                "name==foo,",
                "filters: parse error: [name==foo,]: expected field or quoted",
            ),
            (
                "TrailingFieldSeparator",
                "labels.",
                "filters: parse error: [labels.]: expected field or quoted",
            ),
            (
                "MissingValue",
                "image~=,id?=?fbaq",
                "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
            ),
            (
                "FieldQuotedLiteralNotTerminated",
                "labels.ns/key==value",
                "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
            ),
            (
                "ValueQuotedLiteralNotTerminated",
                "labels.key==/value",
                "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(parse_err(input), expected, "{name}");
        }
    }

    #[test]
    fn more_parse_errors() {
        let cases = [
            (
                "name=foo",
                r#"filters: parse error: [name >|=|< foo]: unsupported operator "=""#,
            ),
            (
                "name foo",
                r#"filters: parse error: [name  >|f|< oo]: expected an operator ("=="|"!="|"~=")"#,
            ),
            (
                "name~=",
                "filters: parse error: [name~=]: expected value or quoted",
            ),
            // Like Go, whitespace is skipped before tokens but not where a separator may follow.
            (
                "name==foo ",
                "filters: parse error: [name==foo >| |< ]: unexpected input:  ",
            ),
            (
                "name==foo bar",
                "filters: parse error: [name==foo >| |< bar]: unexpected input:  ",
            ),
            (
                "name==\"x\".y",
                r#"filters: parse error: [name=="x" >|.|< y]: unexpected input: ."#,
            ),
            (
                r#"labels."\g""#,
                r#"filters: parse error: [labels. >|"|< \g"]: illegal escape sequence"#,
            ),
            (
                r#"name=="\777""#,
                r#"filters: parse error: [name== >|"|< \777"]: unquoting failed: quote syntax error"#,
            ),
            // The scanner allows only the quote's own escape, so \| cannot appear in /.../.
            (
                r"name~=/a\|b/",
                r"filters: parse error: [name~= >|/|< a\|b/]: illegal escape sequence",
            ),
            // The operator position holds the illegal rune, so the scanner's error is reported.
            (
                "foo\0bar",
                "filters: parse error: [foo >|\0|< bar]: unexpected null",
            ),
            (" ", "filters: parse error: [ ]: expected field or quoted"),
            (
                "name~=牛,名==x",
                "filters: parse error: [name~=牛, >|名|< ==x]: expected field or quoted",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_err(input), expected, "{input:?}");
        }
    }

    #[test]
    fn invalid_regexp_is_a_parse_error() {
        let err = Filter::parse("name==x,other~=[abc").err();
        let err = err.as_ref().map(|e| (e.position(), e.message(), e.input()));
        assert_eq!(
            err,
            Some((
                15,
                "error parsing regexp: unclosed character class: `[abc`",
                "name==x,other~=[abc"
            ))
        );
        assert!(Filter::parse("name~=|(|").is_err());
    }

    #[test]
    fn parse_all_ors_filters() {
        let filter = Filter::parse_all(&["name==foo", "labels.bar"]).unwrap();
        assert_eq!(matched(&filter), [0, 2, 3]);

        let empty: [&str; 0] = [];
        assert_eq!(
            matched(&Filter::parse_all(&empty).unwrap()),
            (0..9).collect::<Vec<_>>()
        );
        assert_eq!(matched(&Filter::default()), (0..9).collect::<Vec<_>>());
        // containerd's Any over an Always: one empty string selects everything.
        let filter = Filter::parse_all(&[String::from("name==nope"), String::new()]).unwrap();
        assert_eq!(matched(&filter).len(), 9);

        let err = Filter::parse_all(&["name==foo", "name==foo,"]).unwrap_err();
        assert_eq!(err.input(), "name==foo,");
        assert_eq!(err.position(), 10);
    }

    #[test]
    fn not_equal_and_regexp_see_absent_fields_as_empty() {
        // containerd compares the zero value, so absent `other` is != "abc" and matches ^$.
        let filter = Filter::parse("other!=abc").unwrap();
        assert_eq!(matched(&filter), [0, 1, 2, 3, 4, 5, 6, 8]);
        let filter = Filter::parse("other~=^$").unwrap();
        assert_eq!(matched(&filter), [0, 1, 2, 3, 4, 5, 8]);
        let filter = Filter::parse("labels.foo!=true").unwrap();
        assert_eq!(matched(&filter), [1, 2, 3, 4, 5, 6, 7, 8]);
        // But == needs the field to be present.
        let filter = Filter::parse("other==\"\"").unwrap();
        assert_eq!(matched(&filter), Vec::<usize>::new());
    }

    #[test]
    fn documentation_examples() {
        let labels: BTreeMap<String, String> = [
            ("bar", "1"),
            ("foo.bar", "baz"),
            ("very complex label", "something"),
            ("tab", "a\tb"),
            ("path", "/usr/lib|x"),
            ("e", "é"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let item = FieldMap::new()
            .with_field("name", "foo")
            .with_labels(&labels);
        let yes = [
            "name==foo",
            "labels.bar",
            "name==foo,labels.bar",
            r#"labels."very complex label"==something"#,
            r#"labels."foo.bar"==baz"#,
            "labels.foo.bar==baz",
            "name~=^foo",
            "name~=/^fo+$/",
            "name~=|^f|",
            "labels.path~=|^/usr/|",
            r"labels.path~=/^\/usr/",
            r#"labels.path~="\\|x$""#,
            r#"labels.tab=="a\tb""#,
            r#"labels.tab=="a\x09b""#,
            r#"labels.tab=="a\011b""#,
            r#"labels.e=="\u00e9""#,
            r#"labels.e=="\U000000E9""#,
            "labels.e==é",
            r"name~=\w+",
            "name == foo",
            "name==foo, labels.bar",
            r#""name"==foo"#,
        ];
        for input in yes {
            let filter = Filter::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert!(filter.matches(&item), "{input:?} should match");
        }
        let no = [
            "name==bar",
            "labels.baz",
            "name==foo,labels.baz",
            "name~=^oo",
            "labels.tab==a\\tb",
            "name!=foo",
        ];
        for input in no {
            let filter = Filter::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert!(!filter.matches(&item), "{input:?} should not match");
        }
    }

    #[test]
    fn field_map_matches_containerd_adaptors() {
        let no_labels = BTreeMap::new();
        let snapshot = FieldMap::new()
            .with_field("name", "snap")
            .with_field("parent", "")
            .with_field("kind", "committed")
            .with_labels(&no_labels);
        let m = |f: &str| Filter::parse(f).unwrap().matches(&snapshot);
        // parent is present even when empty, as in containerd's adaptSnapshot.
        assert!(m("parent"));
        assert!(m("parent==\"\""));
        assert!(m("kind==committed"));
        assert!(!m("labels"));
        assert!(!m("labels.x"));
        assert!(!m("size"));
        // Only the first element picks a top-level field.
        assert!(m("name.whatever==snap"));

        let digest_only = FieldMap::new().with_field("digest", "sha256:abc");
        let f = Filter::parse("digest==sha256:abc,labels.x!=y").unwrap();
        assert!(f.matches(&digest_only));
        assert!(!Filter::parse("labels.x").unwrap().matches(&digest_only));
    }

    #[test]
    fn closures_are_adaptors() {
        let adaptor = |path: &[String]| {
            (path.first().map(String::as_str) == Some("id")).then(|| "x".to_owned())
        };
        assert!(Filter::parse("id==x").unwrap().matches(&adaptor));
        assert!(!Filter::parse("name").unwrap().matches(&adaptor));
    }

    #[test]
    fn unquote_like_go() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#""abc""#, Some("abc")),
            (r#""a\"b""#, Some("a\"b")),
            (r"/a\/b/", Some("a/b")),
            (r"|a\|b|", Some("a|b")),
            (r"|a/b|", Some("a/b")),
            (r#"|a"b|"#, Some("a\"b")),
            (
                r#""\a\b\f\n\r\t\v\\""#,
                Some("\u{7}\u{8}\u{c}\n\r\t\u{b}\\"),
            ),
            (r#""\u263a\U0001F600""#, Some("☺😀")),
            (r#""\ud800""#, Some("\u{FFFD}")),
            (r#""\xff""#, Some("\u{FFFD}")),
            (r#""牛""#, Some("牛")),
            (r#""a"b""#, None),
            (r#""\/""#, None),
            (r#""\q""#, None),
            (r#""\x4""#, None),
            (r#""\400""#, None),
            (r#""\U00110000""#, None),
            ("\"a\nb\"", None),
            (r#""abc|"#, None),
            ("\"", None),
        ];
        for (input, expected) in cases {
            assert_eq!(unquote(input).as_deref(), *expected, "{input:?}");
        }
    }

    type Tok = (usize, Token, &'static str, &'static str);

    fn scan_all(input: &str) -> Vec<(usize, Token, String, &'static str)> {
        let mut sc = Scanner::new(input);
        let mut out = Vec::new();
        loop {
            let (pos, tok, text) = sc.scan();
            let err = if tok == Token::Illegal { sc.err } else { "" };
            out.push((pos, tok, text.to_owned(), err));
            if tok == Token::Eof {
                break;
            }
            assert!(out.len() < 100, "scanner does not terminate on {input:?}");
        }
        assert_eq!(sc.scan().1, Token::Eof, "must consume all input");
        out
    }

    #[test]
    fn containerd_scanner_table() {
        use Token::*;
        let cases: &[(&str, &str, &[Tok])] = &[
            ("Field", "name", &[(0, Field, "name", ""), (4, Eof, "", "")]),
            (
                "SelectorsWithOperators",
                "name==value,foo!=bar",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "==", ""),
                    (6, Value, "value", ""),
                    (11, Separator, ",", ""),
                    (12, Field, "foo", ""),
                    (15, Operator, "!=", ""),
                    (17, Value, "bar", ""),
                    (20, Eof, "", ""),
                ],
            ),
            (
                "SelectorsWithFieldPaths",
                "name==value,labels.foo=value,other.bar~=match",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "==", ""),
                    (6, Value, "value", ""),
                    (11, Separator, ",", ""),
                    (12, Field, "labels", ""),
                    (18, Separator, ".", ""),
                    (19, Field, "foo", ""),
                    (22, Operator, "=", ""),
                    (23, Value, "value", ""),
                    (28, Separator, ",", ""),
                    (29, Field, "other", ""),
                    (34, Separator, ".", ""),
                    (35, Field, "bar", ""),
                    (38, Operator, "~=", ""),
                    (40, Value, "match", ""),
                    (45, Eof, "", ""),
                ],
            ),
            (
                "RegexpValue",
                "name~=[abc]+,foo=test",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Value, "[abc]+", ""),
                    (12, Separator, ",", ""),
                    (13, Field, "foo", ""),
                    (16, Operator, "=", ""),
                    (17, Value, "test", ""),
                    (21, Eof, "", ""),
                ],
            ),
            (
                "RegexpEscapedValue",
                r"name~=[abc]\+,foo=test",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Value, "[abc]\\+", ""),
                    (13, Separator, ",", ""),
                    (14, Field, "foo", ""),
                    (17, Operator, "=", ""),
                    (18, Value, "test", ""),
                    (22, Eof, "", ""),
                ],
            ),
            (
                "RegexpQuotedValue",
                "name~=/[abc]{0,2}/,foo=test",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Quoted, "/[abc]{0,2}/", ""),
                    (18, Separator, ",", ""),
                    (19, Field, "foo", ""),
                    (22, Operator, "=", ""),
                    (23, Value, "test", ""),
                    (27, Eof, "", ""),
                ],
            ),
            (
                "Cowsay",
                "name~=牛,labels.moo=true",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Value, "牛", ""),
                    (9, Separator, ",", ""),
                    (10, Field, "labels", ""),
                    (16, Separator, ".", ""),
                    (17, Field, "moo", ""),
                    (20, Operator, "=", ""),
                    (21, Value, "true", ""),
                    (25, Eof, "", ""),
                ],
            ),
            (
                "CowsayRegexpQuoted",
                "name~=|牛|,labels.moo=true",
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Quoted, "|牛|", ""),
                    (11, Separator, ",", ""),
                    (12, Field, "labels", ""),
                    (18, Separator, ".", ""),
                    (19, Field, "moo", ""),
                    (22, Operator, "=", ""),
                    (23, Value, "true", ""),
                    (27, Eof, "", ""),
                ],
            ),
            (
                "Escapes",
                r#"name~="asdf\n\tfooo""#,
                &[
                    (0, Field, "name", ""),
                    (4, Operator, "~=", ""),
                    (6, Quoted, "\"asdf\\n\\tfooo\"", ""),
                    (20, Eof, "", ""),
                ],
            ),
            (
                "NullInput",
                "foo\x00bar",
                &[
                    (0, Field, "foo", ""),
                    (3, Illegal, "", "unexpected null"),
                    (4, Field, "bar", ""),
                    (7, Eof, "", ""),
                ],
            ),
            (
                "SpacesChomped",
                "foo = bar    ",
                &[
                    (0, Field, "foo", ""),
                    (4, Operator, "=", ""),
                    (6, Value, "bar", ""),
                    (13, Eof, "", ""),
                ],
            ),
            (
                "ValuesPunctauted",
                "compound.labels==punctuated_value.foo-bar",
                &[
                    (0, Field, "compound", ""),
                    (8, Separator, ".", ""),
                    (9, Field, "labels", ""),
                    (15, Operator, "==", ""),
                    (17, Value, "punctuated_value.foo-bar", ""),
                    (41, Eof, "", ""),
                ],
            ),
            (
                "PartialInput",
                "interrupted=",
                &[
                    (0, Field, "interrupted", ""),
                    (11, Operator, "=", ""),
                    (12, Eof, "", ""),
                ],
            ),
            (
                "DoubleValue",
                "doublevalue=value value",
                &[
                    (0, Field, "doublevalue", ""),
                    (11, Operator, "=", ""),
                    (12, Value, "value", ""),
                    (18, Field, "value", ""),
                    (23, Eof, "", ""),
                ],
            ),
            (
                "LeadingWithQuoted",
                r#""leading quote".postquote==value"#,
                &[
                    (0, Quoted, "\"leading quote\"", ""),
                    (15, Separator, ".", ""),
                    (16, Field, "postquote", ""),
                    (25, Operator, "==", ""),
                    (27, Value, "value", ""),
                    (32, Eof, "", ""),
                ],
            ),
            (
                "MissingValue",
                "input==,id!=ff",
                &[
                    (0, Field, "input", ""),
                    (5, Operator, "==", ""),
                    (7, Separator, ",", ""),
                    (8, Field, "id", ""),
                    (10, Operator, "!=", ""),
                    (12, Value, "ff", ""),
                    (14, Eof, "", ""),
                ],
            ),
            (
                "QuotedRegexp",
                "input~=/foo\\/bar/,id!=ff",
                &[
                    (0, Field, "input", ""),
                    (5, Operator, "~=", ""),
                    (7, Quoted, "/foo\\/bar/", ""),
                    (17, Separator, ",", ""),
                    (18, Field, "id", ""),
                    (20, Operator, "!=", ""),
                    (22, Value, "ff", ""),
                    (24, Eof, "", ""),
                ],
            ),
            (
                "QuotedRegexpAlt",
                "input~=|foo/bar|,id!=ff",
                &[
                    (0, Field, "input", ""),
                    (5, Operator, "~=", ""),
                    (7, Quoted, "|foo/bar|", ""),
                    (16, Separator, ",", ""),
                    (17, Field, "id", ""),
                    (19, Operator, "!=", ""),
                    (21, Value, "ff", ""),
                    (23, Eof, "", ""),
                ],
            ),
            (
                "IllegalQuoted",
                "labels.containerd.io/key==value",
                &[
                    (0, Field, "labels", ""),
                    (6, Separator, ".", ""),
                    (7, Field, "containerd", ""),
                    (17, Separator, ".", ""),
                    (18, Field, "io", ""),
                    (20, Illegal, "/key==value", "quoted literal not terminated"),
                    (31, Eof, "", ""),
                ],
            ),
            (
                "IllegalQuotedWithNewLine",
                "labels.\"containerd.io\nkey\"==value",
                &[
                    (0, Field, "labels", ""),
                    (6, Separator, ".", ""),
                    (
                        7,
                        Illegal,
                        "\"containerd.io\n",
                        "quoted literal not terminated",
                    ),
                    (22, Field, "key", ""),
                    (25, Illegal, "\"==value", "quoted literal not terminated"),
                    (33, Eof, "", ""),
                ],
            ),
            (
                "IllegalEscapeSequence",
                r#"labels."\g""#,
                &[
                    (0, Field, "labels", ""),
                    (6, Separator, ".", ""),
                    (7, Illegal, r#""\g""#, "illegal escape sequence"),
                    (11, Eof, "", ""),
                ],
            ),
            (
                "IllegalNumericEscapeSequence",
                r#"labels."\xaz""#,
                &[
                    (0, Field, "labels", ""),
                    (6, Separator, ".", ""),
                    (7, Illegal, r#""\xaz""#, "illegal numeric escape sequence"),
                    (13, Eof, "", ""),
                ],
            ),
        ];
        for (name, input, expected) in cases {
            let got = scan_all(input);
            let expected: Vec<_> = expected
                .iter()
                .map(|&(pos, tok, text, err)| (pos, tok, text.to_owned(), err))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn scanner_edge_runes() {
        // U+FFFD is what Go decodes invalid UTF-8 to; its scanner rejects it.
        assert_eq!(
            scan_all("a\u{FFFD}")[1],
            (1, Token::Illegal, String::new(), "rune error")
        );
        // A zero-width space is not graphic: it ends a bare value.
        assert_eq!(
            scan_all("a==b\u{200B}c")[2],
            (3, Token::Value, "b".to_owned(), "")
        );
        assert!(is_graphic('牛') && is_graphic('+') && is_graphic('\u{A0}'));
        assert!(!is_graphic('\u{7F}') && !is_graphic('\u{E000}') && !is_graphic('\u{FFFF}'));
    }
}
