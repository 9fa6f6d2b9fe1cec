//! Sources of reloads: the file watcher and SIGHUP.
//!
//! The watcher watches the control file's directory, not the file: an
//! editor's write-then-rename and a Kubernetes ConfigMap swap (the file is a
//! link through `..data`, and `..data` is replaced) both replace the file's
//! inode, which a watch on the file itself would lose. Any event in the
//! directory triggers a re-read after a short debounce; the control task
//! ignores a file whose text has not changed (including turnout's own
//! write-through).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, watch};

use super::{Change, Control, Origin};

/// A reload waits until the directory has been quiet this long, so a burst
/// of events (truncate, write, rename, chmod) becomes one reload of the
/// finished file...
const DEBOUNCE: Duration = Duration::from_millis(100);
/// ...but never longer than this after the first event.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Keeps the OS watch alive; dropping it stops watching.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    watched: std::collections::HashSet<PathBuf>,
}

impl Watcher {
    /// Also watches the directories `paths` live in (and their links'
    /// targets'): certificate files can live beside the control file or
    /// anywhere else.
    pub fn ensure<'p>(&mut self, paths: impl IntoIterator<Item = &'p Path>) {
        for path in paths {
            for dir in watched_dirs(path) {
                let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
                if !self.watched.insert(key) {
                    continue;
                }
                if let Err(e) = self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
    }
}

/// Watches the directories the control file lives in and reloads on change.
/// Returns `None` (logged) when the OS refuses a watch; SIGHUP and the admin
/// API still reload then.
pub fn spawn(path: &Path, control: Control) -> Option<Watcher> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let wake = tx.clone();
    let inner = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel already holds a pending wake-up: nothing lost.
            let _ = tx.try_send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the control file; reload with SIGHUP or the admin API");
            return None;
        }
    };
    let mut watcher = Watcher {
        inner,
        watched: Default::default(),
    };
    watcher.ensure([path]);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let give_up = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < give_up => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            if let Err(super::ChangeError::Stopped) = control
                .submit(Change::Reload { forced: false }, Origin::file())
                .await
            {
                return;
            }
        }
    });
    // An edit made between the first read and the watch being in place
    // would otherwise wait for the next one: look once now.
    let _ = wake.try_send(());
    Some(watcher)
}

/// The file's own directory, and its final target's if a link leads elsewhere.
fn watched_dirs(path: &Path) -> Vec<PathBuf> {
    let dir_of = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![dir_of(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let target_dir = dir_of(&target);
        let same = std::fs::canonicalize(&dirs[0]).is_ok_and(|d| d == target_dir);
        if !same {
            dirs.push(target_dir);
        }
    }
    dirs
}

/// Re-reads the control file on every SIGHUP until `stop` turns true.
pub async fn reload_on_sighup(control: Control, mut hup: Signal, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the control file");
                let _ = control.submit(Change::Reload { forced: true }, Origin::file()).await;
            }
            _ = crate::server::stopped(&mut stop) => return,
        }
    }
}
