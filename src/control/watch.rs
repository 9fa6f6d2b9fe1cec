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

/// The handle of the watch: dropping it stops watching.
///
/// The OS watch itself (`notify`'s watcher) lives in a task of its own, and
/// every call on it runs on the blocking pool: adding a watch resolves links
/// on the filesystem and waits for `notify`'s own thread to answer, which a
/// runtime worker must not do.
pub struct Watcher {
    dirs: mpsc::UnboundedSender<Vec<PathBuf>>,
}

impl Watcher {
    /// Also watches the directories `paths` live in (and their links'
    /// targets'): certificate files can live beside the control file or
    /// anywhere else. Returns at once; the watch is added in the background.
    pub fn ensure<'p>(&mut self, paths: impl IntoIterator<Item = &'p Path>) {
        let paths: Vec<PathBuf> = paths.into_iter().map(Path::to_owned).collect();
        if !paths.is_empty() {
            // Fails only when the owner task is gone (a runtime shutting down).
            let _ = self.dirs.send(paths);
        }
    }
}

/// The OS watch and the directories it already covers.
struct Inner {
    watcher: notify::RecommendedWatcher,
    watched: std::collections::HashSet<PathBuf>,
}

impl Inner {
    /// Blocking: resolves links and adds watches.
    fn ensure(&mut self, paths: &[PathBuf]) {
        for path in paths {
            for dir in watched_dirs(path) {
                let key = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
                if !self.watched.insert(key) {
                    continue;
                }
                if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
    }
}

/// Watches the directories the control file lives in and reloads on change.
/// When the OS refuses a watch it says so in the log; SIGHUP and the admin
/// API still reload then.
pub fn spawn(path: &Path, control: Control) -> Watcher {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let (dirs, mut wanted) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let wake = tx.clone();
    let path = path.to_owned();
    tokio::spawn(async move {
        let created = tokio::task::spawn_blocking(move || {
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| may_change(&e.kind)) {
                    // A full channel already holds a pending wake-up: nothing lost.
                    let _ = tx.try_send(());
                }
            });
            watcher.map(|watcher| {
                let mut inner = Inner {
                    watcher,
                    watched: Default::default(),
                };
                inner.ensure(&[path]);
                inner
            })
        })
        .await;
        let created = created
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut inner = match created {
            Ok(inner) => inner,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the control file; reload with SIGHUP or the admin API");
                return;
            }
        };
        // An edit made between the first read and the watch being in place
        // would otherwise wait for the next one: look once now.
        let _ = wake.try_send(());
        while let Some(paths) = wanted.recv().await {
            match tokio::task::spawn_blocking(move || {
                inner.ensure(&paths);
                inner
            })
            .await
            {
                Ok(back) => inner = back,
                Err(e) => {
                    tracing::warn!(error = %e, "the file watch failed; reload with SIGHUP or the admin API");
                    return;
                }
            }
        }
        // The handle was dropped: `inner` goes, and the OS watch with it.
    });
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
    Watcher { dirs }
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

/// Whether a file event may have changed the file. Opening or reading it
/// changes nothing, and every reload opens the control file: waking on
/// that would reload ten times a second forever.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    !matches!(
        kind,
        notify::EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::may_change;
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};

    #[test]
    fn reading_the_file_is_no_change_writing_or_replacing_it_is() {
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!may_change(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Any,
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }
}
