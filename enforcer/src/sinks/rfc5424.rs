//! RFC 5424 syslog messages: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`.
//!
//! Header fields are printable US-ASCII (RFC 5424 §6: `PRINTUSASCII`, `%d33-126`): any other
//! character becomes `_`, a field is cut to its maximum length (HOSTNAME 255, APP-NAME 48,
//! PROCID 128, MSGID 32), and an empty one is the NILVALUE `-`. PARAM-VALUEs escape `"`, `\` and
//! `]` with a backslash (§6.3.3). A MSG that is not pure ASCII starts with the UTF-8 BOM, as
//! §6.4 requires of a UTF-8 MSG.

use std::{
    borrow::Cow,
    fmt::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The field that stands for an empty or unknown value.
pub const NILVALUE: &str = "-";
/// The private enterprise number in SD-IDs (`enforcer@32473`): 32473 is the example number
/// RFC 5612 reserves for documentation. A deployment with a PEN of its own can change it here.
pub const ENTERPRISE_NUMBER: u32 = 32473;
const BOM: char = '\u{feff}';
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;
const SD_NAME_MAX: usize = 32;
/// The latest time a four-digit year can show (9999-12-31T23:59:59.999Z).
const LAST_TIMESTAMP: Duration = Duration::from_millis(253_402_300_799_999);

/// RFC 5424 §6.2.1 severities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// One structured-data element: an SD-ID and its parameters, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdElement<'a> {
    pub id: &'a str,
    pub params: Vec<(&'a str, String)>,
}

/// A syslog message; [`fmt::Display`] writes it in RFC 5424 form (without framing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// RFC 5424 §6.2.1 facility code (0–23).
    pub facility: u8,
    pub severity: Severity,
    pub time: SystemTime,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
    pub structured_data: Vec<SdElement<'a>>,
    /// Empty: no MSG part.
    pub msg: &'a str,
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let priority = u32::from(self.facility) * 8 + self.severity as u32;
        write!(out, "<{priority}>1 ")?;
        match timestamp(self.time) {
            Some(time) => out.write_str(&time)?,
            None => out.write_str(NILVALUE)?,
        }
        for (field, max) in [
            (self.hostname, HOSTNAME_MAX),
            (self.app_name, APP_NAME_MAX),
            (self.procid, PROCID_MAX),
            (self.msgid, MSGID_MAX),
        ] {
            out.write_char(' ')?;
            out.write_str(&header_field(field, max, |_| true))?;
        }
        out.write_char(' ')?;
        if self.structured_data.is_empty() {
            out.write_str(NILVALUE)?;
        }
        for element in &self.structured_data {
            write_element(out, element)?;
        }
        if !self.msg.is_empty() {
            out.write_char(' ')?;
            if !self.msg.is_ascii() {
                out.write_char(BOM)?;
            }
            out.write_str(self.msg)?;
        }
        Ok(())
    }
}

fn write_element(out: &mut fmt::Formatter<'_>, element: &SdElement<'_>) -> fmt::Result {
    out.write_char('[')?;
    // An SD-ID may carry the `@` of an enterprise number; a PARAM-NAME may not.
    out.write_str(&sd_name(element.id, true))?;
    for (name, value) in &element.params {
        write!(
            out,
            " {}=\"{}\"",
            sd_name(name, false),
            escape_param_value(value)
        )?;
    }
    out.write_char(']')
}

/// RFC 3339 in UTC with milliseconds (`2024-05-06T07:08:09.123Z`); `None` for a time a
/// four-digit year cannot show (before 1970 or after 9999), which the header gives as `-`.
#[must_use]
pub fn timestamp(time: SystemTime) -> Option<String> {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    (since_epoch <= LAST_TIMESTAMP).then(|| humantime::format_rfc3339_millis(time).to_string())
}

/// A header field as PRINTUSASCII (other characters, and those `allowed` refuses, become `_`),
/// cut to `max` characters; the NILVALUE when empty.
fn header_field(value: &str, max: usize, allowed: impl Fn(char) -> bool) -> Cow<'_, str> {
    let printable = |c: char| c.is_ascii_graphic() && allowed(c);
    if value.is_empty() {
        return Cow::Borrowed(NILVALUE);
    }
    if value.len() <= max && value.chars().all(printable) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .chars()
            .take(max)
            .map(|c| if printable(c) { c } else { '_' })
            .collect(),
    )
}

/// An SD-NAME: PRINTUSASCII except `=`, space, `]` and `"` (and `@` outside an SD-ID), at most 32.
fn sd_name(value: &str, is_id: bool) -> Cow<'_, str> {
    header_field(value, SD_NAME_MAX, |c| {
        !matches!(c, '=' | ']' | '"') && (is_id || c != '@')
    })
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped by a backslash (RFC 5424 §6.3.3); everything
/// else, UTF-8 included, as it is.
#[must_use]
pub fn escape_param_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['"', '\\', ']']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests;
