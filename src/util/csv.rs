//! One CSV cell writer for every export (the console's indicators, `stats --format csv`).
//!
//! Written by hand: the `csv` crate is not available to this build (offline registry), and a
//! cell is all we need to write: RFC 4180 quoting plus the spreadsheet rule below.

use std::borrow::Cow;

/// One cell: a value a spreadsheet would run as a formula (beginning with `=`, `+`, `-`, `@`,
/// a TAB or a CR: an establishment or address name written by someone else) gets a leading
/// `'`, numbers stay numbers; then RFC 4180 quoting (comma, quote or line break: quoted,
/// quotes doubled).
pub fn cell(s: &str) -> Cow<'_, str> {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s: Cow<'_, str> = if risky {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        s
    }
}

/// A row of cells, comma-separated, with its CRLF.
pub fn row<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = cells.into_iter().map(cell).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_quoting_kept() {
        assert_eq!(cell("chu-a"), "chu-a");
        assert_eq!(
            cell("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(cell("+33 1"), "'+33 1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("\rx"), "\"'\rx\"");
        assert_eq!(cell("-cmd|' /C calc'!A0"), "'-cmd|' /C calc'!A0");
        // Numbers are not formulas.
        assert_eq!(cell("-5"), "-5");
        assert_eq!(cell("+1.5"), "+1.5");
        assert_eq!(cell("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(row(["a", "=1+1", "3"]), "a,'=1+1,3\r\n");
    }
}
