//! The DATA reader and the BDAT checker, against a plain model of RFC 5321 §4.1.1.4: the
//! content ends at the first CRLF.CRLF and nowhere else (SMTP smuggling), and what is kept is
//! exactly the dot-unstuffed lines before it. Also the delivery side's dot-stuffing: what it
//! sends has no bare CR or LF, and reads back as the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::delivery::client::dot_stuff;
use passerelle::intake::data::{check_bdat, count_received, read_data, DataEnd, DataLimits};
use passerelle::message::plain_lines;
use passerelle::net::{Rewind, Trickle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const MAX_SIZE: usize = 4096;
const MAX_LINE: usize = 200;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A line is acceptable content: CRLF-terminated, no other CR, no NUL, not too long.
fn line_ok(line: &[u8]) -> bool {
    line.len() <= MAX_LINE
        && line.ends_with(b"\r\n")
        && !line[..line.len() - 2].contains(&b'\r')
        && !line.contains(&0)
}

fuzz_target!(|data: &[u8]| {
    let lim = DataLimits {
        max_size: MAX_SIZE,
        max_line: MAX_LINE,
        timeout: Duration::from_secs(5),
        min_rate: 0,
    };
    // Reads of 1 to 64 bytes (from the input's length): lines cut anywhere, and some bytes
    // already in the command reader's buffer when DATA begins.
    let step = if data.len() % 5 == 0 {
        1 << 20
    } else {
        1 + data.len() % 64
    };
    let capacity = 1 + data.len() % 7;
    let trickle = Trickle { data, step };
    let mut reader = tokio::io::BufReader::with_capacity(capacity, Rewind::new(trickle));
    let mut body = Vec::new();
    let end = runtime().block_on(async {
        let _ = reader.fill_buf().await;
        read_data(&mut reader, &mut body, &lim).await
    });
    let unread = reader.buffer().len() + reader.get_ref().pending().len();
    let consumed = data.len() - unread - reader.get_ref().get_ref().data.len();

    // Model: where the content ends.
    let terminator = if data.starts_with(b".\r\n") {
        Some(3)
    } else {
        find(data, b"\r\n.\r\n").map(|i| i + 5)
    };
    match &end {
        DataEnd::Ok | DataEnd::Refused(_) => {
            assert_eq!(
                Some(consumed),
                terminator,
                "ended elsewhere than the first CRLF.CRLF"
            )
        }
        DataEnd::Lost(_) => {
            assert_eq!(terminator, None, "missed a CRLF.CRLF");
            assert_eq!(consumed, data.len());
        }
    }
    if let Some(t) = terminator {
        let content = &data[..t - 3];
        let lines: Vec<&[u8]> = content.split_inclusive(|&b| b == b'\n').collect();
        let unstuffed: Vec<u8> = lines
            .iter()
            .flat_map(|l| {
                if l.first() == Some(&b'.') {
                    &l[1..]
                } else {
                    &l[..]
                }
            })
            .copied()
            .collect();
        let clean = lines.iter().all(|l| line_ok(l)) && unstuffed.len() <= MAX_SIZE;
        match end {
            DataEnd::Ok => {
                assert!(clean, "accepted a bad message");
                assert_eq!(body, unstuffed);
                assert_eq!(check_bdat(&body, MAX_LINE), Ok(()));
                // Relayed: our client's stuffing reads back as exactly this message.
                let wire = dot_stuff(&body);
                let mut r = tokio::io::BufReader::new(Rewind::new(&wire[..]));
                let mut again = Vec::new();
                let lim = DataLimits {
                    max_line: MAX_LINE + 1,
                    ..lim
                };
                let end = runtime().block_on(read_data(&mut r, &mut again, &lim));
                assert!(matches!(end, DataEnd::Ok), "{end:?}");
                assert!(r.buffer().is_empty() && r.get_ref().pending().is_empty());
                assert!(r.get_ref().get_ref().is_empty());
                assert_eq!(again, body);
            }
            DataEnd::Refused(e) => assert!(!clean, "refused a good message: {e:?}"),
            DataEnd::Lost(_) => unreachable!(),
        }
    }

    // The client sends a clean message as it is stored, without stuffing: only when every
    // line ends with CRLF, holds no other CR or LF nor a NUL, and does not start with a dot.
    let model_clean = data.split_inclusive(|&b| b == b'\n').all(|l| {
        l.ends_with(b"\r\n")
            && !l[..l.len() - 2].contains(&b'\r')
            && !l.contains(&0)
            && l[0] != b'.'
    });
    assert_eq!(plain_lines(data), model_clean);
    if model_clean {
        assert_eq!(dot_stuff(data), [data, b".\r\n"].concat());
    }

    // Whatever the input, the client never sends a bare CR or LF.
    if !data.contains(&0) {
        assert_eq!(check_bdat(&dot_stuff(data), usize::MAX), Ok(()));
    }

    // BDAT: the same line rules without dot-stuffing.
    let lines_ok = data.split_inclusive(|&b| b == b'\n').all(line_ok);
    assert_eq!(check_bdat(data, MAX_LINE).is_ok(), lines_ok);
    assert!(count_received(data) <= data.len() / 9);
});
