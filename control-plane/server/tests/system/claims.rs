//! The README's "What we survive" names, in each row, the test that shows
//! it on what ships: a test of this binary that drives the assembled
//! processes (`dev`, `serve`, the gateway), or a test file of the
//! TypeScript client or the console (they drive `dev` too), or the soak
//! the test command runs. This test reads the table and fails on a row
//! that names nothing, or names a test that does not exist, or names one
//! that runs the parts in-process (`inprocess.rs`) instead.

use std::{collections::BTreeMap, path::Path};

use super::readme::root;

/// Every test of this binary: module path (`chaos::store`) by test name.
fn system_tests() -> BTreeMap<String, String> {
    fn walk(dir: &Path, module: &str, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("tests dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let here = match (module.is_empty(), stem.as_str()) {
                (_, "main") => module.to_owned(),
                (true, _) => stem.clone(),
                (false, _) => format!("{module}::{stem}"),
            };
            if path.is_dir() {
                walk(&path, &here, out);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read test file");
            let mut attribute = false;
            for line in text.lines().map(str::trim) {
                if line.starts_with("#[tokio::test") || line == "#[test]" {
                    attribute = true;
                    continue;
                }
                if attribute && let Some(rest) = line.split("fn ").nth(1) {
                    let name = rest.split(['(', '<']).next().unwrap_or_default();
                    out.insert(name.to_owned(), here.clone());
                    attribute = false;
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &root().join("control-plane/server/tests/system"),
        "",
        &mut out,
    );
    out
}

/// The rows of the README's "What we survive" table: (fault, test cell).
fn rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("## What we survive")
        .expect("a What we survive section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            (
                cells.first().unwrap_or(&"").trim().to_owned(),
                cells.last().unwrap_or(&"").trim().to_owned(),
            )
        })
        .collect()
}

/// The backticked names of a cell.
fn named(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Whether `name` (a test, `module::test`, either may end in `…` as a
/// prefix) is exactly one test of this binary that drives processes.
fn resolve(name: &str, tests: &BTreeMap<String, String>) -> Result<String, String> {
    let (module, test) = match name.rsplit_once("::") {
        Some((module, test)) => (Some(module), test),
        None => (None, name),
    };
    let (test, prefix) = match test.strip_suffix('…') {
        Some(stem) => (stem, true),
        None => (test, false),
    };
    let found: Vec<(&String, &String)> = tests
        .iter()
        .filter(|(t, m)| {
            (if prefix {
                t.starts_with(test)
            } else {
                *t == test
            }) && module.is_none_or(|module| m.as_str() == module)
        })
        .collect();
    match found.as_slice() {
        [(t, m)] if m.as_str() == "inprocess" => Err(format!(
            "{name}: {m}::{t} runs the parts in-process, not the assembled binaries"
        )),
        [(t, m)] => Ok(format!("{m}::{t}")),
        [] => Err(format!("{name}: no such test")),
        many => Err(format!("{name}: names {} tests", many.len())),
    }
}

/// A file of tests outside this binary (the TypeScript client's, the
/// console's) or the soak script, optionally `path: title` with the title
/// in that file.
fn resolve_file(name: &str) -> Result<String, String> {
    let (path, title) = match name.split_once(": ") {
        Some((path, title)) => (path, Some(title)),
        None => (name, None),
    };
    let allowed = ["clients/typescript/test/", "control-plane/console/test/"];
    // The soak and `streamer-bench slo` drive the assembled processes too;
    // the test command runs both.
    if !(allowed.iter().any(|a| path.starts_with(a))
        || path == "scripts/soak.sh"
        || path == "bench/src/slo.rs")
    {
        return Err(format!("{name}: not a test file of the assembled system"));
    }
    let text =
        std::fs::read_to_string(root().join(path)).map_err(|_| format!("{name}: no such file"))?;
    if let Some(title) = title
        && !text.contains(title)
    {
        return Err(format!("{name}: {path} has no test {title:?}"));
    }
    Ok(name.to_owned())
}

#[test]
fn every_claim_in_the_readme_names_a_test_that_drives_the_assembled_system() {
    let tests = system_tests();
    assert!(tests.len() > 50, "found the system tests: {}", tests.len());
    let rows = rows();
    assert!(rows.len() >= 15, "the table has its rows: {rows:?}");
    let mut problems = Vec::new();
    for (fault, cell) in &rows {
        let names = named(cell);
        if names.is_empty() {
            problems.push(format!("{fault}: names no test"));
        }
        for name in names {
            let resolved = if name.contains('/') {
                resolve_file(&name)
            } else {
                resolve(&name, &tests)
            };
            if let Err(problem) = resolved {
                problems.push(format!("{fault}: {problem}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_claims_check_refuses_what_is_not_a_system_test() {
    let tests = system_tests();
    assert!(resolve("chaos_store_throttling_and_a_10_s_outage_…", &tests).is_ok());
    assert!(resolve("no_such_test", &tests).is_err());
    assert!(resolve("management_api_through_the_aws_sdk", &tests).is_err());
    assert!(resolve_file("control-plane/src/delivery/broadcast.rs").is_err());
}
