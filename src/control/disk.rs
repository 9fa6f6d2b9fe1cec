//! The control task's file work, run on tokio's blocking pool.
//!
//! Reading the control file, validating it (which reads TLS certificates and
//! CA bundles), waiting for the write lock, writing, fsyncing and renaming
//! all block a thread for as long as the disk takes — a stuck NFS mount, a
//! replica holding the lock, a slow fsync. On a runtime worker that would
//! stall every connection the worker serves; so the control task hands each
//! piece of file work to `spawn_blocking` and awaits it. It stays the only
//! writer and applies one change at a time: it awaits the result before it
//! takes the next change.

use std::path::PathBuf;

use crate::config::write::{self, TenantEdit};
use crate::config::{self, Config, ConfigError, ListenOverrides};

/// What file work needs: the control file and the `--listen-*` overrides
/// every parsed version gets. Cheap to clone into each piece of work.
#[derive(Clone)]
pub struct Disk {
    /// The control file as given on the command line (a link stays a link).
    pub path: PathBuf,
    /// Applied to every version read, as at start-up.
    pub overrides: ListenOverrides,
}

impl Disk {
    /// Runs `work` on the blocking pool and waits for it. `Err` (a message)
    /// only when the work could not finish: it panicked, or the runtime is
    /// shutting down.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Disk) -> T + Send + 'static,
    ) -> Result<T, String> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || work(&disk))
            .await
            .map_err(|e| format!("file work did not finish: {e}"))
    }

    /// A problem of the file as a whole.
    pub fn error(&self, message: String) -> ConfigError {
        ConfigError::general(&self.path, message)
    }

    /// The control file's text.
    pub fn read(&self) -> Result<String, ConfigError> {
        config::read(&self.path)
    }

    /// Validates `text` as a version of the control file (reading the files
    /// it names) and applies the `--listen-*` overrides: `config::load`'s
    /// second half, as start-up and `check` run it.
    pub fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let env = |var: &str| std::env::var(var).ok();
        config::load_text(text, &self.path, &env, &self.overrides).for_serving()
    }

    /// Under the write lock: removes temporary files killed writers left,
    /// reads the file, applies `edits`, validates the result and replaces the
    /// file with it. Returns the written text and its parsed state.
    pub fn write_through(&self, edits: &[TenantEdit]) -> Result<(String, Config), String> {
        let _lock = write::lock(&self.path).map_err(|e| format!("cannot lock: {e}"))?;
        self.remove_stale_temps();
        let text = std::fs::read_to_string(&self.path).map_err(|e| format!("cannot read: {e}"))?;
        let edited = write::edit(&text, edits)?;
        let parsed = self
            .parse(&edited)
            .map_err(|e| format!("the edited file would not validate: {e}"))?;
        write::write_atomically(&self.path, &edited).map_err(|e| format!("cannot write: {e}"))?;
        Ok((edited, parsed))
    }

    /// At start: takes the write lock (a bounded wait) and removes the
    /// temporary files killed writers left. Skipped, logged, when another
    /// writer holds the lock: the next write-through cleans.
    pub fn clean_up(&self) {
        match write::lock(&self.path) {
            Ok(_lock) => self.remove_stale_temps(),
            Err(error) => {
                tracing::debug!(path = %self.path.display(), %error, "stale temporary files not looked for now");
            }
        }
    }

    /// The cleaning itself; the caller holds the write lock. A failure is
    /// logged, never a reason to refuse a change.
    fn remove_stale_temps(&self) {
        match write::remove_stale_temps(&self.path) {
            Ok(removed) => {
                for file in removed {
                    tracing::info!(file = %file.display(), "removed a temporary file a killed writer left");
                }
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot look for stale temporary files");
            }
        }
    }
}
