//! Where setting values come from: the environment (seen through a lookup
//! function, so tests never touch the process environment), then the TOML
//! file, then the declared default. Every problem is collected rather than
//! returned at the first one, so a bad configuration is reported whole.

use std::{collections::BTreeMap, path::Path, str::FromStr};

use super::settings::{self, Setting};

/// Values from the environment and the file, and the problems found so far.
pub struct Source<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, toml::Value>,
    problems: Vec<String>,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("file_keys", &self.file.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Flattens nested tables into dotted keys; arrays of tables stay whole.
fn flatten(prefix: &str, table: toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !is_declared(&dotted) => flatten(&dotted, inner, out),
            other => {
                out.insert(dotted, other);
            }
        }
    }
}

fn is_declared(key: &str) -> bool {
    settings::ALL.iter().any(|s| s.key == Some(key))
}

/// A file value as setting text: strings as they are, lists comma-joined.
fn text_of(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(text_of)
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

impl<'a> Source<'a> {
    /// Reads `path` (when given) and looks the environment up with `env`.
    pub fn new(path: Option<&Path>, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let mut source = Self {
            env,
            file: BTreeMap::new(),
            problems: Vec::new(),
        };
        if let Some(path) = path {
            match std::fs::read_to_string(path) {
                Err(err) => source
                    .problems
                    .push(format!("cannot read config file {}: {err}", path.display())),
                Ok(text) => match text.parse::<toml::Table>() {
                    Err(err) => source.problems.push(format!(
                        "invalid config file {}: {}",
                        path.display(),
                        err.message()
                    )),
                    Ok(table) => {
                        flatten("", table, &mut source.file);
                        for key in source.file.keys() {
                            if !is_declared(key) {
                                source.problems.push(format!(
                                    "unknown key `{key}` in config file {}",
                                    path.display()
                                ));
                            }
                        }
                    }
                },
            }
        }
        source
    }

    /// Records a problem with `setting`.
    pub fn problem(&mut self, setting: &Setting, message: impl std::fmt::Display) {
        self.problems
            .push(format!("invalid value for {}: {message}", setting.name()));
    }

    /// Records a problem worded in full by the caller.
    pub fn problems_push(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// The problems found.
    pub fn into_problems(self) -> Vec<String> {
        self.problems
    }

    /// The configured text of `setting` and where it came from (an empty
    /// environment variable counts as unset).
    pub fn raw(&mut self, setting: &Setting) -> Option<(String, &'static str)> {
        if let Some(env) = setting.env
            && let Some(value) = (self.env)(env).filter(|v| !v.is_empty())
        {
            return Some((value, env));
        }
        let key = setting.key?;
        let value = self.file.get(key)?;
        match text_of(value) {
            Some(text) => Some((text, key)),
            None => {
                self.problems
                    .push(format!("invalid value for {key}: expected a plain value"));
                None
            }
        }
    }

    /// The raw TOML of a file-only structured setting (`[[actions]]`).
    pub fn table(&self, setting: &Setting) -> Option<&toml::Value> {
        self.file.get(setting.key?)
    }

    /// The setting parsed with `parse`; `None` when unset and without a
    /// default, or when it does not parse (recorded as a problem).
    pub fn parse_with<T>(
        &mut self,
        setting: &Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.raw(setting) {
            Some((text, from)) => match parse(text.trim()) {
                Ok(value) => Some(value),
                Err(message) => {
                    self.problems.push(format!(
                        "invalid value for {from}: {:?}: {message}",
                        truncated(&text)
                    ));
                    None
                }
            },
            None if setting.default.is_empty() => None,
            None => match parse(setting.default) {
                Ok(value) => Some(value),
                Err(message) => {
                    self.problems.push(format!(
                        "the default of {} does not parse: {message}",
                        setting.name()
                    ));
                    None
                }
            },
        }
    }

    /// The setting parsed with `FromStr`, or `None` (unset or invalid).
    pub fn opt<T: FromStr>(&mut self, setting: &Setting) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        self.parse_with(setting, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    /// The setting parsed with `FromStr`; `T::default()` stands in for an
    /// invalid value (a problem is recorded, so the load fails anyway).
    pub fn get<T: FromStr + Default>(&mut self, setting: &Setting) -> T
    where
        T::Err: std::fmt::Display,
    {
        self.opt(setting).unwrap_or_default()
    }

    /// A comma-separated list (a TOML array in the file).
    pub fn list(&mut self, setting: &Setting) -> Vec<String> {
        self.parse_with(setting, |s| {
            Ok(s.split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect())
        })
        .unwrap_or_default()
    }

    /// A number that must be at least `min`.
    pub fn at_least<T>(&mut self, setting: &Setting, min: T) -> T
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        match self.opt::<T>(setting) {
            Some(value) if value < min => {
                self.problem(setting, format!("must be at least {min}"));
                min
            }
            Some(value) => value,
            None => min,
        }
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(80).collect()
}
