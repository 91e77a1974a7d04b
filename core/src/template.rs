//! `{field}` templates: how the `http` builtin handler builds a request from an item
//! (docs/job-spec.md, "Handlers").
//!
//! Why here and not in the worker: `orch validate` and the operator must refuse a template the
//! worker could not fill, with the field path, before any task runs; one parser serves both.
//! A template is literal text with `{name}` placeholders naming top-level fields of the item;
//! `{{` and `}}` stand for literal braces. The other checks of a request template (header
//! names, the result pointer) are here for the same reason.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// A top-level field of the item, by name.
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Parses `text`; the error says what is wrong and where (a character offset).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, next)| *next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, next)| *next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` at offset {at} (write `}}}}` for a literal brace)"
                    ));
                }
                '{' => {
                    let mut name = String::new();
                    let closed = loop {
                        match chars.next() {
                            Some((_, '}')) => break true,
                            Some((inner, '{')) => {
                                return Err(format!(
                                    "`{{` inside the placeholder opened at offset {at} (offset {inner}); \
                                     write `{{{{` for a literal brace"
                                ));
                            }
                            Some((_, c)) => name.push(c),
                            None => break false,
                        }
                    };
                    if !closed {
                        return Err(format!(
                            "the placeholder opened at offset {at} is not closed with `}}` \
                             (write `{{{{` for a literal brace)"
                        ));
                    }
                    field_name(&name)
                        .map_err(|why| format!("placeholder at offset {at}: {why}"))?;
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Field(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The field, when the template is exactly one placeholder (`"{id}"`): in a JSON body that
    /// stands for the field's value with its JSON type.
    pub fn sole_field(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Field(name)] => Some(name),
            _ => None,
        }
    }

    /// Whether the template has no placeholder (its text is used as is).
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The literal text before the first placeholder.
    pub fn prefix(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Literal(text)) => text,
            _ => "",
        }
    }
}

/// A placeholder names a top-level field as written: not empty, no surrounding spaces, no
/// control characters. Nested paths (`{a.b}`) are not supported: `.` is part of the name.
fn field_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`{}` names no field".into());
    }
    if name.trim() != name {
        return Err(format!("`{{{name}}}`: spaces around the field name"));
    }
    if name.chars().any(char::is_control) {
        return Err("the field name has a control character".into());
    }
    Ok(())
}

/// An HTTP header name: an RFC 9110 token.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An RFC 6901 JSON pointer: empty (the whole document) or `/`-separated tokens in which `~` is
/// only `~0` or `~1`.
pub fn json_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "`{pointer}` is not a JSON pointer: it must be empty or start with `/` (e.g. `/data/0`)"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "`{pointer}` is not a JSON pointer: `~` must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }
    fn field(s: &str) -> Segment {
        Segment::Field(s.into())
    }

    #[test]
    fn placeholders_and_escaped_braces() {
        let t = Template::parse("https://api/{kind}/items/{id}?q={{x}}").unwrap();
        assert_eq!(
            t.segments(),
            [
                lit("https://api/"),
                field("kind"),
                lit("/items/"),
                field("id"),
                lit("?q={x}"),
            ]
        );
        assert_eq!(t.prefix(), "https://api/");
        assert_eq!(t.sole_field(), None);
        assert!(!t.is_literal());
        let t = Template::parse("{text}").unwrap();
        assert_eq!(t.sole_field(), Some("text"));
        assert_eq!(t.prefix(), "");
        let t = Template::parse("plain").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.segments(), [lit("plain")]);
        assert!(Template::parse("").unwrap().segments().is_empty());
        assert_eq!(
            Template::parse("{a.b}{c-d}").unwrap().segments(),
            [field("a.b"), field("c-d")]
        );
    }

    #[test]
    fn malformed_templates_say_where() {
        for (text, expect) in [
            ("a{id", "not closed"),
            ("a}b", "unmatched `}` at offset 1"),
            ("{}", "names no field"),
            ("{ id }", "spaces"),
            ("{a{b}}", "inside the placeholder"),
            ("${id", "not closed"),
        ] {
            let e = Template::parse(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn header_names_and_pointers() {
        assert!(is_header_name("X-Api-Key"));
        assert!(!is_header_name("Bad Header"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a:b"));
        for ok in ["", "/", "/data/0", "/a~0b/c~1d"] {
            assert_eq!(json_pointer(ok), Ok(()), "{ok}");
        }
        for bad in ["data", "/a~", "/a~2"] {
            assert!(json_pointer(bad).is_err(), "{bad}");
        }
    }
}
