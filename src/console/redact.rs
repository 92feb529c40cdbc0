//! Secrets out of every configuration text the console shows (REVIEW 3: auditors read the
//! directory's `bind_password` and a password inside the journal's `url` on `/config`).
//!
//! The console shows and edits the file as text, so redaction is on lines: the value of a key
//! whose name says it is a secret, and the password of a `scheme://user:password@host` URL.
//! An edit sent back with the marker in place of a secret gets the stored value back
//! ([`restore`]); a marker that cannot be matched to a stored line is refused, never written.

use std::collections::HashMap;

/// What is shown in place of a secret.
pub const MARKER: &str = "********";

fn secret_key(key: &str) -> bool {
    let k = key.trim().trim_matches('"').to_ascii_lowercase();
    ["password", "secret", "token", "passphrase"]
        .iter()
        .any(|w| k.contains(w))
}

/// `user:password@` inside a URL: the password replaced.
fn redact_url(line: &str) -> Option<String> {
    let scheme = line.find("://")?;
    let rest = &line[scheme + 3..];
    let end = rest.find(['/', '"', '\'', ' ']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    let start = scheme + 3 + colon + 1;
    let stop = scheme + 3 + at;
    (start < stop).then(|| format!("{}{MARKER}{}", &line[..start], &line[stop..]))
}

/// One line with its secret (if any) replaced by [`MARKER`].
fn redact_line(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    if let Some((key, value)) = line.split_once('=') {
        if secret_key(key) && !value.trim().is_empty() {
            let indent_value = &value[..value.len() - value.trim_start().len()];
            return Some(format!("{key}={indent_value}\"{MARKER}\""));
        }
    }
    redact_url(line)
}

/// The text with every secret replaced by [`MARKER`].
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        match redact_line(body) {
            Some(r) => out.push_str(&r),
            None => out.push_str(body),
        }
        out.push_str(nl);
    }
    out
}

/// An edited text (made from the redacted one) with each untouched secret line put back from
/// `stored`; `Err` names a line that still carries the marker (a secret line that was changed
/// without its value being typed again).
pub fn restore(edited: &str, stored: &str) -> Result<String, String> {
    // (section, redacted line) -> the stored line.
    let mut originals: HashMap<(String, String), String> = HashMap::new();
    let mut section = String::new();
    for line in stored.lines() {
        if line.trim_start().starts_with('[') {
            section = line.trim().to_string();
        }
        if let Some(r) = redact_line(line) {
            originals.insert((section.clone(), r), line.to_string());
        }
    }
    let mut out = String::with_capacity(edited.len());
    let mut section = String::new();
    for (n, line) in edited.lines().enumerate() {
        if line.trim_start().starts_with('[') {
            section = line.trim().to_string();
        }
        if line.contains(MARKER) {
            match originals.get(&(section.clone(), line.to_string())) {
                Some(orig) => out.push_str(orig),
                None => {
                    return Err(format!(
                        "line {}: a secret shown as {MARKER} cannot be saved as is; type its value again or leave the line unchanged",
                        n + 1
                    ))
                }
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "[server]\nhostname = \"gw\"\n\n[directory]\nkind = \"ldap\"\nbind_password = \"s3cret!\"\n\n[journal]\nkind = \"postgres\"\nurl = \"postgres://journal:hunter2@db.example/passerelle\"\n# password = in a comment stays\n";

    #[test]
    fn secrets_are_not_shown() {
        let r = redact(STORED);
        assert!(!r.contains("s3cret!"), "{r}");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("bind_password = \"********\""), "{r}");
        assert!(
            r.contains("postgres://journal:********@db.example/passerelle"),
            "{r}"
        );
        assert!(r.contains("hostname = \"gw\""));
        assert_eq!(
            redact("url = \"http://host/x\"\n"),
            "url = \"http://host/x\"\n"
        );
    }

    #[test]
    fn an_edit_keeps_the_stored_secrets() {
        let edited = redact(STORED).replace("hostname = \"gw\"", "hostname = \"gw2\"");
        let back = restore(&edited, STORED).unwrap();
        assert_eq!(
            back,
            STORED.replace("hostname = \"gw\"", "hostname = \"gw2\"")
        );
        // A new value typed in: kept as typed.
        let typed =
            redact(STORED).replace("bind_password = \"********\"", "bind_password = \"new\"");
        assert!(restore(&typed, STORED)
            .unwrap()
            .contains("bind_password = \"new\""));
        // The marker moved elsewhere: refused, never written.
        let moved = redact(STORED).replace("[directory]", "[other]");
        assert!(restore(&moved, STORED).unwrap_err().contains("line 6"));
    }
}
