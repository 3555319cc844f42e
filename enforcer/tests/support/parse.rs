// Small, strict parsers for what the sinks write: RFC 5424 structured data and CEF lines. The
// sink tests (unit tests by `include!`, integration tests as a module) parse the rendered or
// received text with them, so an escaping mistake shows as a parse error or a changed value.

/// One SD-ELEMENT: the SD-ID and its params, values unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedElement {
    pub id: String,
    pub params: Vec<(String, String)>,
}

impl ParsedElement {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Parses the STRUCTURED-DATA at the start of `input` (`-`, or one or more `[…]`), returning the
/// elements and the rest of the input. A `"` or `]` inside a value must be escaped (RFC 5424
/// §6.3.3); a backslash before any other character stands for itself.
pub fn parse_structured_data(input: &str) -> Result<(Vec<ParsedElement>, &str), String> {
    if let Some(rest) = input.strip_prefix('-') {
        return Ok((Vec::new(), rest));
    }
    let mut elements = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(_, '[')) = chars.peek() {
        chars.next();
        let mut id = String::new();
        let mut params = Vec::new();
        loop {
            match chars.next() {
                Some((_, ' ')) => break,
                Some((_, ']')) => {
                    elements.push(ParsedElement { id, params });
                    id = String::new();
                    params = Vec::new();
                    break;
                }
                Some((_, c)) if c.is_ascii_graphic() && c != '=' && c != '"' => id.push(c),
                other => return Err(format!("bad SD-ID character {other:?}")),
            }
        }
        if id.is_empty() {
            continue;
        }
        loop {
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) if c.is_ascii_graphic() && c != ']' && c != '"' => name.push(c),
                    other => {
                        return Err(format!("bad PARAM-NAME character {other:?} after {name:?}"));
                    }
                }
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("PARAM-VALUE of {name} does not start with a quote"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.peek() {
                        Some(&(_, escaped @ ('"' | '\\' | ']'))) => {
                            value.push(escaped);
                            chars.next();
                        }
                        _ => value.push('\\'),
                    },
                    Some((_, '"')) => break,
                    Some((_, ']')) => return Err(format!("unescaped ] in the value of {name}")),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated value of {name}")),
                }
            }
            params.push((name, value));
            match chars.next() {
                Some((_, ' ')) => {}
                Some((_, ']')) => break,
                other => return Err(format!("{other:?} after a PARAM-VALUE")),
            }
        }
        elements.push(ParsedElement { id, params });
    }
    if elements.is_empty() {
        return Err(format!("no structured data at {input:?}"));
    }
    let rest = chars.peek().map_or("", |&(at, _)| &input[at..]);
    Ok((elements, rest))
}

/// A CEF line: the seven header fields (`CEF:0`, vendor, product, version, signature id, name,
/// severity) unescaped, and the extension's key/value pairs in order, values unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCef {
    pub header: Vec<String>,
    pub extension: Vec<(String, String)>,
}

impl ParsedCef {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extension
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

pub fn parse_cef(line: &str) -> Result<ParsedCef, String> {
    if !line.starts_with("CEF:") {
        return Err(format!("not a CEF line: {line:?}"));
    }
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.char_indices();
    let mut extension_start = None;
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped @ ('\\' | '|'))) => field.push(escaped),
                other => return Err(format!("bad header escape \\{other:?}")),
            },
            '|' => {
                header.push(std::mem::take(&mut field));
                if header.len() == 7 {
                    extension_start = Some(at + 1);
                    break;
                }
            }
            c if c.is_control() => return Err(format!("control character {c:?} in the header")),
            c => field.push(c),
        }
    }
    let extension_start =
        extension_start.ok_or_else(|| format!("fewer than 8 fields: {line:?}"))?;
    let extension = parse_extension(&line[extension_start..])?;
    Ok(ParsedCef { header, extension })
}

/// `key=value key=value …`: a key is the word before an unescaped `=`; a value runs to the space
/// before the next key. Escapes: `\\`, `\=`, `\n`, `\r`.
fn parse_extension(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut equals = Vec::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '=' => equals.push(at),
            _ => {}
        }
    }
    let mut pairs = Vec::new();
    let mut key_start = 0;
    for (index, &at) in equals.iter().enumerate() {
        let key = &text[key_start..at];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad key {key:?} in {text:?}"));
        }
        let value_end = match equals.get(index + 1) {
            Some(&next) => {
                let separator = text[..next]
                    .rfind(' ')
                    .filter(|&space| space > at)
                    .ok_or_else(|| format!("no space before the key ending at {next}"))?;
                key_start = separator + 1;
                separator
            }
            None => text.len(),
        };
        pairs.push((
            key.to_owned(),
            unescape_extension(&text[at + 1..value_end])?,
        ));
    }
    Ok(pairs)
}

fn unescape_extension(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('=') => out.push('='),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => return Err(format!("bad extension escape \\{other:?} in {value:?}")),
        }
    }
    Ok(out)
}
