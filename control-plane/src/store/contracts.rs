//! No store trait has a method with a default body. A decorator
//! (instrumentation, the legacy mirror) that does not state a method would
//! otherwise inherit the default silently instead of forwarding to the
//! backend: `Instrumented` once ran the registry's "nothing to repair"
//! default over DynamoDB's recount. Without defaults the compiler refuses
//! an implementation that leaves a method out; this test keeps the traits
//! that way.

/// The traits whose implementations are stacked (backends and decorators),
/// with the source that declares each.
const TRAITS: &[(&str, &str)] = &[
    ("Registry", include_str!("../registry/mod.rs")),
    ("RequestQueue", include_str!("../requests/queue/mod.rs")),
    ("History", include_str!("../streams/mod.rs")),
    ("Chunks", include_str!("../connections/chunks/mod.rs")),
    ("Lease", include_str!("lease.rs")),
    ("Delivery", include_str!("../delivery/mod.rs")),
    ("RateLimiter", include_str!("../connections/limits.rs")),
];

/// The body of `pub trait NAME` in `source`, comments left out.
fn trait_body(name: &str, source: &str) -> String {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let start = code
        .find(&format!("pub trait {name}"))
        .unwrap_or_else(|| panic!("trait {name} not found in its file"));
    let open = start + code[start..].find('{').expect("trait body");
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return code[open + 1..open + i].to_owned();
                }
            }
            _ => {}
        }
    }
    panic!("trait {name}: unbalanced braces");
}

/// The methods of a trait body that have a body of their own.
fn defaulted_methods(body: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    let mut signature = String::new();
    for c in body.chars() {
        match c {
            '{' if depth == 0 => {
                depth = 1;
                let name = signature
                    .split("fn ")
                    .nth(1)
                    .and_then(|rest| rest.split(['(', '<']).next())
                    .unwrap_or("?")
                    .trim()
                    .to_owned();
                found.push(name);
            }
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    signature.clear();
                }
            }
            ';' if depth == 0 => signature.clear(),
            c if depth == 0 => signature.push(c),
            _ => {}
        }
    }
    found
}

#[test]
fn store_traits_have_no_default_method_bodies() {
    let mut offenders = Vec::new();
    for (name, source) in TRAITS {
        for method in defaulted_methods(&trait_body(name, source)) {
            offenders.push(format!("{name}::{method}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "store trait methods with a default body (a decorator would inherit it instead of forwarding): {offenders:?}"
    );
}

#[test]
fn the_check_finds_a_default_body() {
    let source = "pub trait Demo {\n    /// Has {braces} in its doc.\n    fn a(&self) -> u8;\n    fn b(&self) -> u8 { 0 }\n    async fn c(&self) {\n        if true { }\n    }\n}\n";
    assert_eq!(defaulted_methods(&trait_body("Demo", source)), ["b", "c"]);
}
