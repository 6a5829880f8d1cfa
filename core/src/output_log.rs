//! The full output of a session, kept (when its profile says `limits.output_log = true`) as a
//! gzip file in the data directory, `logs/<session>.log.gz`, never in the events table. Each
//! turn appends one gzip member, so the file is one valid gzip stream of every turn in order
//! (`zcat` reads it). A file is bounded: past [`MAX_LOG_BYTES`] of compressed output it ends
//! with a line saying so.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

/// The most compressed bytes one session's log file holds.
pub const MAX_LOG_BYTES: u64 = 1 << 30;

/// Where a session's log lives under `dir`; `None` for an id that is not a session id (so a
/// name from a request can never leave the directory).
pub fn path(dir: &Path, session_id: &str) -> Option<PathBuf> {
    let ok = session_id.starts_with("ses_")
        && session_id.len() <= 64
        && session_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then(|| dir.join(format!("{session_id}.log.gz")))
}

/// One turn's part of a session's log: written as output arrives, finished when dropped.
pub struct OutputLog {
    gz: Option<GzEncoder<File>>,
}

impl OutputLog {
    /// Opens (creating, owner-only) the session's log for another turn.
    pub fn open(dir: &Path, session_id: &str) -> std::io::Result<OutputLog> {
        let path = path(dir, session_id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a session id")
        })?;
        std::fs::create_dir_all(dir)?;
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&path)?;
        Ok(OutputLog {
            gz: Some(GzEncoder::new(file, Compression::fast())),
        })
    }

    /// Adds output. Past the bound, a last line says the log stops, and the rest is dropped.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some(gz) = self.gz.as_mut() else {
            return Ok(());
        };
        // The file as written so far (earlier turns included; the encoder's buffer aside).
        if gz.get_ref().metadata()?.len() >= MAX_LOG_BYTES {
            gz.write_all(b"\n[airlock: the full log stops here, at its 1 GiB bound]\n")?;
            if let Some(gz) = self.gz.take() {
                gz.finish()?;
            }
            return Ok(());
        }
        gz.write_all(data)
    }

    /// Ends the turn's gzip member.
    pub fn finish(mut self) -> std::io::Result<()> {
        match self.gz.take() {
            Some(gz) => gz.finish().map(drop),
            None => Ok(()),
        }
    }
}
