//! The one atomic file write of the project: a temporary file with a random name beside the
//! destination (two writers never share it), written, given its mode, fsync'd, renamed over the
//! destination, then the directory fsync'd so that the rename itself survives a power cut.
//!
//! A reader sees the old file or the new one, never a part. The temporary file is created with
//! mode 0600 (tempfile's default) and only then given its final mode, so a secret is never
//! readable by others, not even for an instant.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The permissions the written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// These bits, whatever the file had.
    Set(u32),
    /// The bits of the file being replaced; these bits when there is none.
    KeepOr(u32),
}

/// Writes `data` to `path` atomically with the given mode; creates the parent directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: Mode) -> std::io::Result<()> {
    write_atomic_modified(path, data, mode, None)
}

/// [`write_atomic`], and the file's modification time set to `modified` (a download keeps the
/// server's Last-Modified, so that the next conditional request asks the right question).
pub fn write_atomic_modified(
    path: &Path,
    data: &[u8],
    mode: Mode,
    modified: Option<SystemTime>,
) -> std::io::Result<()> {
    write_atomic_with(path, mode, modified, |w| w.write_all(data))
}

/// [`write_atomic_modified`] for a file written as a stream by `fill` (an LDIF of the whole
/// national directory is hundreds of megabytes: it never sits in memory). Nothing replaces
/// `path` when `fill` fails.
pub fn write_atomic_with<T>(
    path: &Path,
    mode: Mode,
    modified: Option<SystemTime>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir)?;
    let bits = match mode {
        Mode::Set(b) => b,
        Mode::KeepOr(b) => std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(b),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, tmp);
    let value = fill(&mut out)?;
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    let f = tmp.as_file();
    f.set_permissions(std::fs::Permissions::from_mode(bits))?;
    if let Some(m) = modified {
        f.set_modified(m)?;
    }
    f.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(&dir)?;
    Ok(value)
}

/// fsync of a directory: what makes a rename or a removal in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory a relative or bare file name lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Default bound of a CRL file (`tls.crl_max_size`); IGC-Santé's largest are a few MiB.
pub const DEFAULT_MAX_CRL_BYTES: u64 = 64 << 20;
/// Default bound of the whitelist (`whitelist.max_size`); the real signed list is 3.6 MB.
pub const DEFAULT_MAX_WHITELIST_BYTES: u64 = 64 << 20;
/// Default bound of the national extract (`directory.max_size`, `directory.sync.max_size`),
/// its text after unzipping; the real one (535,000 lines) is about 90 MB.
pub const DEFAULT_MAX_EXTRACT_BYTES: u64 = 1 << 30;

/// Reads a file that comes from outside, refusing it when it is over `max` bytes: the size is
/// checked before reading and the read stops one byte past it (a file that grows meanwhile,
/// or a device, costs no more).
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() > max {
        return Err(too_large(max));
    }
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(buf)
}

/// A reader that fails, rather than ends, once more than its bound has come through: a
/// stream that must be read whole (an unzipped member whose declared size may lie) is refused
/// with a reason instead of being cut silently.
pub struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R> Capped<R> {
    pub fn new(inner: R, max: u64) -> Capped<R> {
        Capped {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte more than is left is asked for, so reaching the bound exactly is not over it.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(too_large(self.max));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The error of a file over its bound, naming the bound.
pub fn too_large(max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("larger than the limit of {}", human_size(max)),
    )
}

/// `64 MiB`, `2 GiB`, `1500 bytes`: a size as an administrator reads it.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/users.toml");
        write_atomic(&p, b"one", Mode::Set(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(mode_of(&p), 0o600);
        write_atomic(&p, b"two", Mode::Set(0o640)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p), 0o640);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("users.toml")]);
    }

    #[test]
    fn keeps_the_replaced_files_mode_or_takes_the_default() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passerelle.toml");
        write_atomic(&p, b"a", Mode::KeepOr(0o640)).unwrap();
        assert_eq!(mode_of(&p), 0o640);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        write_atomic(&p, b"b", Mode::KeepOr(0o640)).unwrap();
        assert_eq!(mode_of(&p), 0o604);
    }

    #[test]
    fn sets_the_modification_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("list.xml");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        write_atomic_modified(&p, b"x", Mode::Set(0o644), Some(t)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), t);
    }

    #[test]
    fn two_writers_never_share_a_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[i; 4096], Mode::Set(0o600)).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(
            got.iter().all(|b| *b == got[0]),
            "one writer's content, whole"
        );
    }

    #[test]
    fn a_file_over_its_bound_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'x'; 2048]).expect("write");
        assert_eq!(read_capped(&p, 2048).map(|b| b.len()).ok(), Some(2048));
        let e = read_capped(&p, 2047).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("larger than the limit of 2047 bytes"));
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(2 << 30), "2 GiB");
        assert_eq!(human_size(3 << 10), "3 KiB");
    }

    #[test]
    fn a_capped_stream_fails_past_its_bound() {
        let mut ok = Vec::new();
        let r = Capped::new(&[7u8; 100][..], 100).read_to_end(&mut ok);
        assert_eq!(r.ok(), Some(100));
        let mut over = Vec::new();
        let e = Capped::new(&[7u8; 101][..], 100).read_to_end(&mut over);
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("larger than the limit of 100 bytes")
        );
    }
}
