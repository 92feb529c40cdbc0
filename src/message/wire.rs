//! The wire form of a stored message: whether it can be sent as it is.

/// Whether `text` is lines that need no attention on the wire: each ends with CRLF, holds no
/// other CR or LF and no NUL, and none starts with a dot. Nearly all mail is; intake then
/// keeps a whole read as it is, and delivery sends the stored message without dot-stuffing.
///
/// Hand-written rather than a memchr call per line (a call per 80-byte line cost more than
/// the check itself): one branch-free pass over byte pairs that the compiler vectorises,
/// built a second time for AVX2 and chosen at run time (~11 GB/s instead of ~7).
pub fn plain_lines(text: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { plain_lines_avx2(text) };
    }
    plain_lines_any(text)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn plain_lines_avx2(text: &[u8]) -> bool {
    plain_lines_any(text)
}

#[inline(always)]
fn plain_lines_any(text: &[u8]) -> bool {
    let (Some(&first), true) = (text.first(), text.ends_with(b"\r\n")) else {
        return text.is_empty();
    };
    if first == b'.' || first == b'\n' {
        return false;
    }
    // A pair is bad when its first byte is a NUL, a CR not followed by LF, a CR-less LF (seen
    // from the byte before it), or an LF followed by a dot. The last byte is the final LF.
    let bad = text.iter().zip(&text[1..]).fold(false, |bad, (&a, &b)| {
        bad | (a == 0) | ((a == b'\r') != (b == b'\n')) | ((a == b'\n') & (b == b'.'))
    });
    !bad
}

#[cfg(test)]
mod plain_tests {
    use super::plain_lines;

    #[test]
    fn plain_lines_cases() {
        assert!(plain_lines(b""));
        assert!(plain_lines(b"a\r\n"));
        assert!(plain_lines(b"\r\n\r\n"));
        let long = "0123456789abcdef".repeat(40) + "\r\n";
        assert!(plain_lines(long.repeat(7).as_bytes()));
        for bad in [
            &b".a\r\n"[..],
            b"a\r\n.b\r\n",
            b"a\nb\r\n",
            b"a\rb\r\n",
            b"a\r\nb",
            b"\n",
            b"a\x00\r\n",
            b"\r\n\r\r\n",
        ] {
            assert!(!plain_lines(bad), "{bad:?}");
            if !bad.ends_with(b"\n") {
                continue; // an unfinished last line is only a fault at the end
            }
            // The same fault deep inside a longer text, at several offsets.
            for at in [0, 31, 32, 33, 64, 100] {
                let mut t = "x".repeat(at).into_bytes();
                t.extend_from_slice(b"\r\n");
                t.extend_from_slice(bad);
                t.extend_from_slice(b"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n");
                assert!(!plain_lines(&t), "{at} {bad:?}");
            }
        }
    }
}
