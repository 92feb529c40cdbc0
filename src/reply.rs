//! An SMTP reply (code, enhanced status, text). Shared by intake (which sends them), policy
//! (which decides them) and delivery (which receives them), so it sits beside the pipeline.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code, e.g. "5.7.1".
    pub status: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: (!status.is_empty()).then(|| status.to_string()),
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The wire form, multi-line when the text holds several lines.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .collect();
        let mut out = String::with_capacity(self.text.len() + 16 * lines.len());
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if let Some(s) = &self.status {
                out.push_str(s);
                if !line.is_empty() {
                    out.push(' ');
                }
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }

    /// Parses `"550 5.7.1 text"` or `"550 text"` (as written in a reject route).
    pub fn parse(s: &str) -> Result<Reply, String> {
        let s = s.trim();
        let (code, rest) = s.split_once(' ').unwrap_or((s, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("{s:?}: must start with a 3-digit SMTP code"))?;
        let rest = rest.trim_start();
        let (status, text) = match rest.split_once(' ') {
            Some((st, t)) if is_enhanced(st) => (Some(st.to_string()), t.to_string()),
            None if is_enhanced(rest) => (Some(rest.to_string()), String::new()),
            _ => (None, rest.to_string()),
        };
        if let Some(st) = &status {
            if st.as_bytes()[0] != b'0' + (code / 100) as u8 {
                return Err(format!(
                    "{s:?}: enhanced code {st} does not match class {code}"
                ));
            }
        }
        Ok(Reply { code, status, text })
    }
}

fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.status {
            Some(s) => write!(f, "{} {} {}", self.code, s, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let r = Reply::parse("550 5.7.1 only MSSante destinations").unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.status.as_deref(), Some("5.7.1"));
        assert_eq!(r.to_wire(), "550 5.7.1 only MSSante destinations\r\n");
        let r = Reply::parse("554 go away").unwrap();
        assert_eq!(r.status, None);
        assert!(Reply::parse("5x0 no").is_err());
        assert!(Reply::parse("550 4.7.1 mismatched").is_err());
    }

    #[test]
    fn multiline() {
        let r = Reply::new(250, "", "host\nPIPELINING\nSIZE 10");
        assert_eq!(r.to_wire(), "250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    }
}
