//! The control file, from text to a validated model.
//!
//! The pipeline: text → `raw` (serde, mirrors the TOML, no logic) →
//! `validate` (every problem, each with its key) → `model` (domain types the
//! proxy compiles into a routing table). `locate` turns keys and byte offsets
//! into `LINE:COL`, so every error reads `PATH:LINE:COL: key: message`.

pub mod endpoint;
pub mod limit;
pub mod locate;
pub mod model;
pub mod outlier;
pub mod pool;
pub mod raw;
pub mod secrets;
pub mod tls;
pub mod upstream_tls;
pub mod validate;
pub mod write;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use model::*;

use locate::Locator;

/// One located problem in a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value (1 when the problem has no place).
    pub line: usize,
    /// 1-based column of the offending value.
    pub col: usize,
    /// The dotted key, when the problem belongs to one.
    pub key: Option<String>,
    /// What is wrong, for a person: printed as `PATH:LINE:COL: key: message`.
    pub message: String,
}

/// Why a control file was not applied: every problem found, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The control file the problems are in.
    pub file: PathBuf,
    /// Every problem found, in file order; never empty.
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
        write_problems(f, &self.file, &self.problems, "")
    }
}

/// One `PATH:LINE:COL: [label]key: message` line per problem.
fn write_problems(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    problems: &[Problem],
    label: &str,
) -> fmt::Result {
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{}:{}:{}: {label}", file.display(), p.line, p.col)?;
        if let Some(key) = &p.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&p.message)?;
    }
    Ok(())
}

impl std::error::Error for ConfigError {}

/// `--listen-*` flags: replace the file's `[listen]` addresses so replicas
/// can share one control file (SPEC section 2). Applied by [`load`] to every
/// version read, at start-up and on each reload alike.
#[derive(Debug, Clone, Default)]
pub struct ListenOverrides {
    /// Replaces `[listen] http`.
    pub http: Option<SocketAddr>,
    /// Replaces (or sets) `[listen] https`.
    pub https: Option<SocketAddr>,
    /// Replaces `[listen] admin`.
    pub admin: Option<SocketAddr>,
}

impl ListenOverrides {
    /// Replaces the file's addresses with the overriding ones, and checks
    /// the result still keeps an unprotected admin API on loopback. `Err`
    /// is the problem, prefixed with its key (`listen.admin: ...`).
    /// With no override set nothing changes and nothing is re-checked:
    /// validation already judged the file's own addresses (knowing, as the
    /// model `check` builds does not, the tokens whose secret is unset).
    pub fn apply(&self, config: &mut Config) -> Result<(), String> {
        if self.http.is_none() && self.https.is_none() && self.admin.is_none() {
            return Ok(());
        }
        if let Some(a) = self.http {
            config.listen.http = a;
        }
        if let Some(a) = self.https {
            config.listen.https = Some(a);
        }
        if let Some(a) = self.admin {
            config.listen.admin = a;
        }
        match config.admin_exposure_problem() {
            Some(problem) => Err(format!("listen.admin: {problem}")),
            None => Ok(()),
        }
    }
}

/// The one way a control file is loaded — by start-up, by every reload and
/// by `turnout check`: read `path`, validate it taking secrets from `env`,
/// and apply `overrides`. [`Checked::for_serving`] turns the answer into
/// what `run` and a reload accept; `check` reports it as it is.
pub fn load(path: &Path, env: validate::EnvLookup<'_>, overrides: &ListenOverrides) -> Checked {
    match read(path) {
        Ok(text) => load_text(&text, path, env, overrides),
        Err(e) => Checked {
            file: path.to_owned(),
            config: Err(e),
            unset_secrets: Vec::new(),
        },
    }
}

/// The control file's text; a file that cannot be read is a located error
/// (`PATH:1:1: cannot read: ...`).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))
}

/// [`load`] for text already read: a reload reads first, to leave a file
/// whose text has not changed alone.
pub fn load_text(
    text: &str,
    path: &Path,
    env: validate::EnvLookup<'_>,
    overrides: &ListenOverrides,
) -> Checked {
    let mut checked = parse_for_check(text, path, env);
    if let Ok(config) = &mut checked.config
        && let Err(problem) = overrides.apply(config)
    {
        checked.config = Err(ConfigError::general(path, problem));
    }
    checked
}

/// Validates control-file `text` for serving (`run`, reload): a `*_env` key
/// whose variable is unset or empty is an error. `path` names the file in
/// errors and anchors relative TLS paths.
pub fn parse(text: &str, path: &Path, env: validate::EnvLookup<'_>) -> Result<Config, ConfigError> {
    parse_for_check(text, path, env).for_serving()
}

/// What `turnout check` reports: the file's errors or its model, and apart
/// from them the `*_env` keys whose secret is not in this environment.
#[derive(Debug)]
pub struct Checked {
    /// The file, as named in every line.
    pub file: PathBuf,
    /// The model (built without the missing secrets, so only fit to be
    /// summarised), or every error in the file.
    pub config: Result<Config, ConfigError>,
    /// Located `*_env` keys whose variable is unset or empty: warnings for
    /// `check`, errors for `run` (SPEC §2).
    pub unset_secrets: Vec<Problem>,
}

impl Checked {
    /// The model as `run` and a reload take it: a `*_env` key whose
    /// variable is unset or empty is one more error, in file order.
    pub fn for_serving(self) -> Result<Config, ConfigError> {
        if self.unset_secrets.is_empty() {
            return self.config;
        }
        let mut problems = match self.config {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        };
        problems.extend(self.unset_secrets);
        // In file order, as an operator reads them.
        problems.sort_by_key(|p| (p.line, p.col));
        Err(ConfigError {
            file: self.file,
            problems,
        })
    }

    /// The unset secrets as `PATH:LINE:COL: warning: key: message` lines;
    /// `None` when there are none.
    pub fn warnings(&self) -> Option<String> {
        struct Warnings<'a>(&'a Path, &'a [Problem]);
        impl fmt::Display for Warnings<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_problems(f, self.0, self.1, "warning: ")
            }
        }
        (!self.unset_secrets.is_empty())
            .then(|| Warnings(&self.file, &self.unset_secrets).to_string())
    }
}

/// Validates control-file `text`, keeping `*_env` keys whose variable is
/// unset apart from the errors (see [`Checked`]).
pub fn parse_for_check(text: &str, path: &Path, env: validate::EnvLookup<'_>) -> Checked {
    // Spans are only needed to report problems: a good file is parsed once.
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let locator = Locator::new(text);
            let offset = e.span().map_or(0, |s| s.start);
            let (line, col) = locator.line_col(offset);
            return Checked {
                file: path.to_owned(),
                config: Err(ConfigError {
                    file: path.to_owned(),
                    problems: vec![Problem {
                        line,
                        col,
                        key: locator.path_at(offset).map(|p| p.to_string()),
                        message: e.message().trim().to_owned(),
                    }],
                }),
                unset_secrets: Vec::new(),
            };
        }
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let (config, unset) = match validate::validate(raw, base_dir, env) {
        // The common case: nothing to locate.
        Ok(v) if v.unset_secrets.is_empty() => {
            return Checked {
                file: path.to_owned(),
                config: Ok(v.config),
                unset_secrets: Vec::new(),
            };
        }
        Ok(v) => (Ok(v.config), v.unset_secrets),
        Err(p) => (Err(p.errors), p.unset_secrets),
    };
    let locator = Locator::new(text);
    let locate = |list: Vec<(locate::KeyPath, String)>| -> Vec<Problem> {
        list.into_iter()
            .map(|(key, message)| {
                let (line, col) = locator.position(&key);
                Problem {
                    line,
                    col,
                    key: Some(key.to_string()).filter(|k| !k.is_empty()),
                    message,
                }
            })
            .collect()
    };
    Checked {
        file: path.to_owned(),
        config: config.map_err(|errors| ConfigError {
            file: path.to_owned(),
            problems: locate(errors),
        }),
        unset_secrets: locate(unset),
    }
}
