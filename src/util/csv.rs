//! One CSV writer for every export (the console's indicators, `stats --format csv`): the `csv`
//! crate's RFC 4180 quoting, after the spreadsheet rule below.

use std::borrow::Cow;

/// The spreadsheet rule: a value a spreadsheet would run as a formula (beginning with `=`,
/// `+`, `-`, `@`, a TAB or a CR: an establishment or address name written by someone else) gets
/// a leading `'`; numbers stay numbers.
fn neutralised(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A row of cells, neutralised then quoted by the `csv` crate, with its CRLF.
pub fn row<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let fields: Vec<Cow<'_, str>> = cells.into_iter().map(neutralised).collect();
    // Writing to a Vec cannot fail; an empty row is the only thing a failure could give.
    if w.write_record(fields.iter().map(|f| f.as_bytes())).is_err() {
        return "\r\n".to_string();
    }
    w.into_inner()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| "\r\n".to_string())
}

/// One cell, as [`row`] writes it (without the line end).
pub fn cell(s: &str) -> Cow<'_, str> {
    if s.is_empty() {
        // Alone in a record the crate writes `""` (an empty record would be no row at all);
        // inside a row an empty cell is nothing.
        return Cow::Borrowed("");
    }
    let r = row([s]);
    Cow::Owned(r.strip_suffix("\r\n").unwrap_or(&r).to_string())
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
        assert_eq!(row(["a", "", "b"]), "a,,b\r\n");
        assert_eq!(cell(""), "");
    }
}
