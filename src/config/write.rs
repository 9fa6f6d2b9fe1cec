//! Write-through: edit only the keys a change touched, keep everything else
//! of the operator's file — comments, order, layout — and replace the file
//! atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{Color, RolloutProgress, Weights};

/// The keys of one tenant a change sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantEdit {
    pub tenant: String,
    pub weights: Option<Weights>,
    pub stable: Option<Color>,
    /// `Some(None)` removes `rollout.progress`.
    pub progress: Option<Option<RolloutProgress>>,
}

/// Applies `edits` to control-file `text`, returning the new text.
pub fn edit(text: &str, edits: &[TenantEdit]) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the file does not parse: {e}"))?;
    for e in edits {
        let tenant = doc
            .get_mut("tenants")
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.get_mut(&e.tenant))
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| format!("the file has no tenant `{}`", e.tenant))?;
        if let Some(w) = e.weights {
            let weights = tenant
                .get_mut("weights")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| format!("tenant `{}` has no weights table", e.tenant))?;
            set(weights, "blue", Value::from(i64::from(w.blue())));
            set(weights, "green", Value::from(i64::from(w.green())));
        }
        if let Some(stable) = e.stable {
            set(tenant, "stable", Value::from(stable.as_str()));
        }
        if let Some(progress) = &e.progress {
            let rollout = tenant
                .get_mut("rollout")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| format!("tenant `{}` has no rollout table", e.tenant))?;
            match progress {
                Some(p) => {
                    let mut inline = toml_edit::InlineTable::new();
                    inline.insert("step", Value::from(p.step as i64));
                    let since = humantime::format_rfc3339_seconds(p.since).to_string();
                    inline.insert("since", Value::from(since));
                    set(rollout, "progress", Value::InlineTable(inline));
                }
                None => {
                    rollout.remove("progress");
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// Sets `key` to `value`, keeping the whitespace and comments around the old
/// value.
fn set(table: &mut dyn TableLike, key: &str, mut value: Value) {
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        Some(item) => *item = Item::Value(value),
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

/// The file an edit of `path` must replace: the end of any symlink chain,
/// so a link (a ConfigMap's `..data`, a deploy tool's) stays a link.
pub fn target(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn beside(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}{suffix}"))
}

const LOCK_ATTEMPTS: u32 = 50;
const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Holds the write lock of a control file while it lives.
pub struct WriteLock {
    _file: fs::File,
}

/// Takes the exclusive lock (`.NAME.lock` beside the file) that makes a
/// read-edit-replace of the file atomic among replicas sharing it.
pub fn lock(path: &Path) -> std::io::Result<WriteLock> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(&target(path), ".lock"))?;
    // Bounded: a writer that holds the lock for long (a stuck replica) must
    // not stall the control task; the change then stays in memory.
    for _ in 0..LOCK_ATTEMPTS {
        match file.try_lock() {
            Ok(()) => return Ok(WriteLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => std::thread::sleep(LOCK_PAUSE),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::WouldBlock,
        "the control file is locked by another writer",
    ))
}

/// Writes `text` beside the file, syncs it, and renames it over the file, so
/// a reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let target = target(path);
    // Unique per writer: replicas never share a temporary file.
    let unique = format!(".{}.{:08x}.tmp", std::process::id(), fastrand::u32(..));
    let tmp = beside(&target, &unique);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if let Ok(meta) = fs::metadata(&target) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        if let Some(dir) = target.parent() {
            // Make the rename itself durable; not all filesystems allow it.
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# the shop\n[tenants.shop]\nhosts = [\"a\"]\nstable = \"blue\"   # known good\nweights = { blue = 90, green = 10 }  # ramp here\n\n[tenants.other]\nstable = \"green\"\n[tenants.other.weights]\nblue = 0 # idle\ngreen = 100\n";

    #[test]
    fn edits_only_the_keys_and_keeps_comments() {
        let out = edit(
            TEXT,
            &[
                TenantEdit {
                    tenant: "shop".into(),
                    weights: Some(Weights::new(70, 30).unwrap()),
                    stable: Some(Color::Green),
                    progress: None,
                },
                TenantEdit {
                    tenant: "other".into(),
                    weights: Some(Weights::new(5, 95).unwrap()),
                    ..Default::default()
                },
            ],
        )
        .unwrap();
        let expected = TEXT
            .replace("blue = 90, green = 10", "blue = 70, green = 30")
            .replace(
                "stable = \"blue\"   # known good",
                "stable = \"green\"   # known good",
            )
            .replace("blue = 0 # idle", "blue = 5 # idle")
            .replace("green = 100", "green = 95");
        assert_eq!(out, expected);
    }

    #[test]
    fn writes_and_removes_rollout_progress() {
        let text = "[tenants.shop]\nweights = { blue = 1, green = 0 }\n\n[tenants.shop.rollout]\nsteps = [50, 100] # ramp\n";
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let progress = TenantEdit {
            tenant: "shop".into(),
            progress: Some(Some(RolloutProgress { step: 1, since })),
            ..Default::default()
        };
        let out = edit(text, &[progress]).unwrap();
        assert!(out.ends_with("steps = [50, 100] # ramp\nprogress = { step = 1, since = \"2027-01-15T08:00:00Z\" }\n"), "{out}");
        let removed = edit(
            &out,
            &[TenantEdit {
                tenant: "shop".into(),
                progress: Some(None),
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(removed, text);
    }

    #[test]
    fn unknown_tenant_is_an_error() {
        let e = edit(
            TEXT,
            &[TenantEdit {
                tenant: "nope".into(),
                ..Default::default()
            }],
        );
        assert!(e.unwrap_err().contains("nope"));
    }

    #[test]
    fn writes_through_a_symlink_to_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("turnout.toml");
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, "new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
    }
}
