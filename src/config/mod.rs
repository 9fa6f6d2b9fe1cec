//! The control file, from text to a validated model.
//!
//! The pipeline: text → `raw` (serde, mirrors the TOML, no logic) →
//! `validate` (every problem, each with its key) → `model` (domain types the
//! proxy compiles into a routing table). `locate` turns keys and byte offsets
//! into `LINE:COL`, so every error reads `PATH:LINE:COL: key: message`.

pub mod locate;
pub mod model;
pub mod raw;
pub mod tls;
pub mod validate;
pub mod write;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

use locate::Locator;

/// One located problem in a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    /// The dotted key, when the problem belongs to one.
    pub key: Option<String>,
    pub message: String,
}

/// Why a control file was not applied: every problem found, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The file could not be read at all.
    pub fn unreadable(file: &Path, error: &std::io::Error) -> Self {
        Self::general(file, format!("cannot read: {error}"))
    }

    /// A problem of the file as a whole, with no place in it.
    pub fn general(file: &Path, message: String) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                line: 1,
                col: 1,
                key: None,
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file.display(), p.line, p.col)?;
            if let Some(key) = &p.key {
                write!(f, "{key}: ")?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the control file at `path`, taking secrets from the
/// process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    parse(&text, path, &|var| std::env::var(var).ok())
}

/// Validates control-file `text`; `path` names it in errors and anchors
/// relative TLS paths.
pub fn parse(text: &str, path: &Path, env: validate::EnvLookup<'_>) -> Result<Config, ConfigError> {
    // Spans are only needed to report problems: a good file is parsed once.
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let locator = Locator::new(text);
        let offset = e.span().map_or(0, |s| s.start);
        let (line, col) = locator.line_col(offset);
        ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                line,
                col,
                key: locator.path_at(offset).map(|p| p.to_string()),
                message: e.message().trim().to_owned(),
            }],
        }
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    validate::validate(raw, base_dir, env).map_err(|problems| {
        let locator = Locator::new(text);
        ConfigError {
            file: path.to_owned(),
            problems: problems
                .0
                .into_iter()
                .map(|(key, message)| {
                    let (line, col) = locator.position(&key);
                    Problem {
                        line,
                        col,
                        key: Some(key.to_string()).filter(|k| !k.is_empty()),
                        message,
                    }
                })
                .collect(),
        }
    })
}
