//! `directory.kind = "extract"`: the RCPT-time lookup answered from the extract in memory.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::policy::directory";
use crate::directory::extract::{Extract, ExtractError, Keep, DIRECTORY_COLUMNS};
use crate::policy::directory::{BoxFuture, Directory, DirectoryError, Lookup};

/// The extract's `Identification Structure` (kept by [`DIRECTORY_COLUMNS`]).
const STRUCTURE_COLUMN: usize = 6;

/// `directory.kind = "extract"`: the ANS extract held in memory.
pub struct ExtractDirectory {
    extract: Extract,
    name: String,
}

impl ExtractDirectory {
    pub fn load(path: &std::path::Path, max_size: u64) -> Result<ExtractDirectory, ExtractError> {
        let started = std::time::Instant::now();
        let (extract, report) =
            Extract::load_capped(path, Keep::Columns(DIRECTORY_COLUMNS), max_size)?;
        for (line, why) in report.bad_lines.iter().take(20) {
            tracing::warn!(target: LOG_TARGET, file = %path.display(), line, "directory extract: line skipped: {why}");
        }
        if report.bad_lines.len() > 20 {
            tracing::warn!(target: LOG_TARGET, file = %path.display(), "directory extract: {} more bad lines skipped", report.bad_lines.len() - 20);
        }
        tracing::info!(target: LOG_TARGET, file = %path.display(), addresses = report.addresses, lines = report.lines,
            bad_lines = report.bad_lines.len(), load_ms = started.elapsed().as_millis() as u64,
            "directory extract loaded");
        release_freed_memory();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(ExtractDirectory {
            extract,
            name: format!("extract {name}"),
        })
    }
}

/// Gives back to the system the memory a load's temporary tables or a replaced directory
/// held: glibc keeps freed heap memory below its trim threshold (64 MiB in `serve`, see
/// main.rs), and these are tens of MiB (measured: 94 MB resident for 535,000 lines without
/// this, see benches/RESULTS.md).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Drop for ExtractDirectory {
    /// After a reload the old directory goes: its memory goes back to the system.
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.extract));
        release_freed_memory();
    }
}

impl Directory for ExtractDirectory {
    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Lookup, DirectoryError>> {
        let r = match self.extract.lookup(address) {
            Some(entries) => Lookup::Found {
                bal_type: entries
                    .first()
                    .map(|e| e.bal_type.to_string())
                    .unwrap_or_default(),
                structures: entries
                    .iter()
                    .filter_map(|e| e.field(STRUCTURE_COLUMN))
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            None => Lookup::NotFound,
        };
        Box::pin(async move { Ok(r) })
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}
