//! Where the extract comes from: a file (the ANS zip or the `.txt`), or a URL downloaded to a
//! temporary file first. Either way it must prove itself before anything is written: the zip
//! reads to its end with good CRCs, the header has the 31 columns, and it holds at least a
//! minimum number of entries (an empty or cut publication must not reach the LDAP).

use crate::directory::extract::{Extract, ExtractError, ExtractReport};
use crate::directory::ldif;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest download accepted. The national zip is about 20 MB and its text about 90 MB;
/// anything far bigger is not the extract, and would only fill the disk.
const MAX_DOWNLOAD: u64 = 1 << 30;

/// Whole-download timeout: 90 MB at 1 Mbit/s takes 12 minutes.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Url(u) => write!(f, "{u}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error("{url}: download failed: {why}")]
    Download { url: String, why: String },
    #[error("{origin}: {entries} entries, fewer than the minimum of {min}: is the extract cut short? nothing was written")]
    TooFew {
        origin: String,
        entries: usize,
        min: usize,
    },
}

/// The extract, checked.
pub struct Loaded {
    pub extract: Extract,
    pub report: ExtractReport,
}

/// Loads and checks the extract (blocking: run it off the async runtime).
pub fn load(source: &Source, min_entries: usize, max_size: u64) -> Result<Loaded, SourceError> {
    let (extract, report) = match source {
        Source::File(p) => Extract::load_capped(p, ldif::KEEP, max_size)?,
        Source::Url(url) => {
            let tmp = TempFile::new();
            download(url, &tmp.0, max_size.min(MAX_DOWNLOAD))?;
            Extract::load_capped(&tmp.0, ldif::KEEP, max_size)?
        }
    };
    if report.entries < min_entries {
        return Err(SourceError::TooFew {
            origin: source.to_string(),
            entries: report.entries,
            min: min_entries,
        });
    }
    Ok(Loaded { extract, report })
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TempFile(std::env::temp_dir().join(format!(
            "passerelle-extract-{}-{nanos}.download",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// HTTP(S) GET into `dest` (HTTPS verified against the Mozilla roots ureq carries; proxies
/// from the usual environment variables). A non-2xx status, a body cut before its
/// Content-Length, or one over [`MAX_DOWNLOAD`] are errors.
fn download(url: &str, dest: &Path, max: u64) -> Result<(), SourceError> {
    let err = |why: String| SourceError::Download {
        url: url.to_string(),
        why,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_connect(Some(Duration::from_secs(30)))
        .user_agent(concat!("passerelle/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| err(e.to_string()))?;
    let mut reader = resp.body_mut().with_config().limit(max).reader();
    let mut file = std::fs::File::create(dest)
        .map_err(|e| err(format!("cannot create {}: {e}", dest.display())))?;
    let n = std::io::copy(&mut reader, &mut file).map_err(|e| err(e.to_string()))?;
    file.flush()
        .map_err(|e| err(format!("writing {}: {e}", dest.display())))?;
    tracing::info!(url, bytes = n, "directory sync: extract downloaded");
    Ok(())
}
