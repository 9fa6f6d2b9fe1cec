//! Write-through: edit only the keys a change touched, keep everything else
//! of the operator's file — comments, order, layout — and replace the file
//! atomically.
//!
//! Why write through at all (SPEC section 7): the file stays the whole
//! control state, so a restart keeps an admin change, a ramp resumes from
//! its `progress`, and replicas sharing the file converge. Why `toml_edit`
//! and not re-serializing: the file belongs to the operator (and often to
//! Git), so a change must show as a one-line diff. Why a lock file and a
//! rename: replicas sharing the file must neither interleave edits nor let
//! a reader see half a file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{Pool, RolloutProgress, Weights};

/// The keys of one tenant a change sets. `None` leaves a key as the file
/// has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantEdit {
    /// The tenant's name: the `NAME` of `[tenants.NAME]`.
    pub tenant: String,
    /// New `weights`: `blue` and `green` are set in the existing table,
    /// keeping its layout (inline or not).
    pub weights: Option<Weights>,
    /// New `stable` (after a promotion).
    pub stable: Option<Pool>,
    /// `Some(None)` removes `rollout.progress`.
    pub progress: Option<Option<RolloutProgress>>,
    /// The start of a promote bake on a tenant without a rollout table
    /// (`Some(None)`: no bake). Not a key of the file (it is kept in
    /// memory there); a fleet store keeps it (SPEC section 12).
    pub bake: Option<Option<SystemTime>>,
}

/// Applies `edits` to control-file `text`, returning the new text: only the
/// edited values change, each keeping the comments and spacing around it.
///
/// # Errors
///
/// A message when `text` does not parse as TOML, names no such tenant, or
/// lacks the `weights` or `rollout` table an edit needs (write-through
/// edits keys, it does not create tenants or tables).
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
const LOCK_PAUSE: Duration = Duration::from_millis(10);

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
///
/// The temporary file is `.NAME.PID.RAND.tmp` (PID in decimal, RAND eight
/// hex digits); a writer killed before the rename leaves it behind, for
/// [`remove_stale_temps`] to find.
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

/// A temporary file at least this old is left over whoever wrote it: a
/// write-through takes milliseconds, or a few seconds on a slow disk.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(10 * 60);

/// Removes the temporary files of [`write_atomically`] that a killed writer
/// (kill -9, OOM, power loss) left beside the file at `path`; returns the
/// removed paths. Call it with the [`WriteLock`] held, so no replica is
/// between its write and its rename.
///
/// A file is removed when its writer's process is gone (no `/proc/PID`),
/// when the writer is this process (which is not writing: it holds the
/// lock), or when it is older than [`STALE_TEMP_AGE`] (the PID may have been
/// reused, or belongs to another PID namespace). The temporary file of a
/// live process, fresh, is kept: a writer that did not take the lock may
/// still rename it. Files of other names are never touched.
pub fn remove_stale_temps(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let target = target(path);
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let proc_mounted = Path::new("/proc/self").exists();
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let Some(pid) = temp_writer(&name, &entry.file_name().to_string_lossy()) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| now.duration_since(at).unwrap_or_default() >= STALE_TEMP_AGE);
        let writer_gone = proc_mounted && !Path::new(&format!("/proc/{pid}")).exists();
        if pid == std::process::id() || writer_gone || old {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                // Another replica cleaned it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The writer's PID when `file` is a temporary file of `write_atomically`
/// for the control file `name` (`.NAME.PID.RAND.tmp`).
fn temp_writer(name: &str, file: &str) -> Option<u32> {
    let middle = file
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".tmp")?;
    let (pid, rand) = middle.split_once('.')?;
    let hex = rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    if hex && digits {
        pid.parse().ok()
    } else {
        None
    }
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
                    stable: Some(Pool::Green),
                    progress: None,
                    bake: None,
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
    fn knows_its_own_temporary_files_only() {
        let name = "turnout.toml";
        assert_eq!(
            temp_writer(name, ".turnout.toml.4242.0a1b2c3d.tmp"),
            Some(4242)
        );
        for other in [
            ".turnout.toml.lock",
            ".turnout.toml.bak.4242.0a1b2c3d.tmp",
            ".turnout.toml.4242.0a1b2c3.tmp",
            ".turnout.toml.42x2.0a1b2c3d.tmp",
            ".turnout.toml..0a1b2c3d.tmp",
            "turnout.toml.4242.0a1b2c3d.tmp",
            ".other.toml.4242.0a1b2c3d.tmp",
        ] {
            assert_eq!(temp_writer(name, other), None, "{other}");
        }
    }

    #[test]
    fn removes_temporary_files_of_dead_writers_and_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turnout.toml");
        fs::write(&path, "x").unwrap();
        let at = |name: &str| dir.path().join(name);
        // No PID above 2^22 ever runs on Linux.
        let dead = at(".turnout.toml.9999999.00000001.tmp");
        let own = at(&format!(
            ".turnout.toml.{}.00000002.tmp",
            std::process::id()
        ));
        // PID 1 is always alive.
        let live = at(".turnout.toml.1.00000003.tmp");
        let live_but_old = at(".turnout.toml.1.00000004.tmp");
        let unrelated = at(".turnout.toml.swp");
        for f in [&dead, &own, &live, &live_but_old, &unrelated] {
            fs::write(f, "partial").unwrap();
        }
        fs::File::options()
            .write(true)
            .open(&live_but_old)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1))
            .unwrap();
        let mut removed = remove_stale_temps(&path).unwrap();
        removed.sort();
        let mut expected = vec![dead, own, live_but_old];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(live.exists() && unrelated.exists() && path.exists());
        assert!(remove_stale_temps(&path).unwrap().is_empty());
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
