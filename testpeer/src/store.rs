//! Message storage (`DIR/<n>.eml` + `DIR/<n>.json`) and the event log.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// TLS parameters of a session, as written in the JSON envelope.
#[derive(Debug, Clone, Serialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub client_dn: Option<String>,
}

/// The JSON envelope written next to each message.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub mail_from: &'a str,
    pub rcpt_to: Vec<&'a str>,
    pub helo: &'a str,
    pub tls: Option<&'a TlsInfo>,
    pub mail_params: &'a str,
    pub rcpt_params: Vec<&'a str>,
}

pub struct Store {
    dir: PathBuf,
    /// Last number handed out (or found in the directory at startup).
    last: AtomicU64,
    /// Count messages without writing them (benchmarks: a sink that is not the limit).
    discard: bool,
}

/// `123.eml` / `123.json` -> 123.
fn message_number(file_name: &str) -> Option<u64> {
    let stem = file_name
        .strip_suffix(".eml")
        .or_else(|| file_name.strip_suffix(".json"))?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl Store {
    /// Creates `dir` if needed; numbering continues after the highest
    /// `<n>.eml`/`<n>.json` already present.
    pub fn open(dir: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut max = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(n) = entry.file_name().to_str().and_then(message_number) {
                max = max.max(n);
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            last: AtomicU64::new(max),
            discard: false,
        })
    }

    /// A store that only counts: each message prints `mesg=N` on stdout (as `smtp-sink -c`).
    pub fn discarding(mut self) -> Store {
        self.discard = true;
        self
    }

    /// Writes the message then its envelope; returns the message number.
    pub async fn save(&self, body: &[u8], envelope: &Envelope<'_>) -> io::Result<u64> {
        if self.discard {
            let n = self.last.fetch_add(1, Ordering::SeqCst) + 1;
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "mesg={n}");
            return Ok(n);
        }
        let mut json = serde_json::to_vec_pretty(envelope).map_err(io::Error::other)?;
        json.push(b'\n');
        // create_new: never clobber a file written by someone else sharing the dir.
        let (n, eml_path) = loop {
            let n = self.last.fetch_add(1, Ordering::SeqCst) + 1;
            let path = self.dir.join(format!("{n}.eml"));
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(mut f) => {
                    use tokio::io::AsyncWriteExt;
                    f.write_all(body).await?;
                    f.flush().await?;
                    break (n, path);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let tmp = self.dir.join(format!(".{n}.json.tmp"));
        let result = async {
            tokio::fs::write(&tmp, &json).await?;
            tokio::fs::rename(&tmp, self.dir.join(format!("{n}.json"))).await
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            let _ = tokio::fs::remove_file(&eml_path).await;
            return Err(e);
        }
        Ok(n)
    }
}

/// Append-only event log, one line per event, flushed per line.
#[derive(Clone)]
pub struct EventLog(Option<Arc<Mutex<File>>>);

impl EventLog {
    pub fn open(path: &Path) -> io::Result<EventLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog(Some(Arc::new(Mutex::new(file)))))
    }

    pub fn disabled() -> EventLog {
        EventLog(None)
    }

    pub fn event(&self, line: &str) {
        let Some(file) = &self.0 else { return };
        // One event must stay one line, whatever the peer sent.
        let mut text: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        text.push('\n');
        let mut file = match file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A single write of the whole line keeps lines from different
        // connections (and O_APPEND writers) from interleaving.
        if let Err(e) = file.write_all(text.as_bytes()).and_then(|_| file.flush()) {
            eprintln!("mss-peer: cannot write the event log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mss-peer-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn message_numbers() {
        assert_eq!(message_number("1.eml"), Some(1));
        assert_eq!(message_number("42.json"), Some(42));
        assert_eq!(message_number(".42.json.tmp"), None);
        assert_eq!(message_number("x.eml"), None);
        assert_eq!(message_number(".eml"), None);
        assert_eq!(message_number("+1.eml"), None);
    }

    #[tokio::test]
    async fn numbering_continues_after_existing_files() {
        let dir = temp_dir("numbering");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("7.eml"), b"x").unwrap();
        std::fs::write(dir.join("3.json"), b"{}").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        let store = Store::open(&dir).unwrap();
        let env = Envelope {
            mail_from: "a@b",
            rcpt_to: vec!["c@d"],
            helo: "h",
            tls: None,
            mail_params: "",
            rcpt_params: vec![""],
        };
        assert_eq!(store.save(b"hello\r\n", &env).await.unwrap(), 8);
        assert_eq!(store.save(b"again\r\n", &env).await.unwrap(), 9);
        assert_eq!(std::fs::read(dir.join("8.eml")).unwrap(), b"hello\r\n");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("9.json")).unwrap()).unwrap();
        assert_eq!(json["mail_from"], "a@b");
        assert_eq!(json["rcpt_to"][0], "c@d");
        assert!(json["tls"].is_null());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
