//! Every `grpcurl`, `streamerctl`, `curl` and `wscat` line in README.md and
//! docs/*.md runs as written against a fresh `dev`, after the banner's
//! `export` line: each shell block (```sh) that holds one is run whole by
//! `sh -e`, from a folder whose `.build/dev` is that `dev`'s state (so the
//! docs' `.build/dev/jwt-private.pem` is its key), with `grpcurl` from the
//! test tools and `streamerctl` as built on `PATH`.
//!
//! What the test supplies, because no document can know it:
//! - a live connection: the docs write `q3TQ6V0nZb1V9tQ=` where a
//!   connection id goes; the test connects two clients as `dev-user` of
//!   tenant `dev` (in group `room-1`) and puts the first one's id there;
//! - running requests: the docs' `rep-1` and `rep-2` are `generate_report`s
//!   the test starts first, with the demo's duration set long enough for
//!   the docs' cancels to find them running;
//! - the settings a page says to start `dev` with (`STREAMER_HISTORY` for
//!   docs/streams.md).
//!
//! Lines the test does not run, and why: `cargo build` (the test command
//! built everything), `npx wscat` (interactive; the README test connects
//! with the printed token instead). A block a line of which fails fails the
//! test, naming the file and the block.

use std::path::Path;

use serde_json::json;
use streamer_test_kit::{dev::binary, prelude::*};

use super::readme::{fresh_dev_with, line, root, tool_path};

/// The id the docs write for a live connection.
const CONNECTION_PLACEHOLDER: &str = "q3TQ6V0nZb1V9tQ=";

/// A shell block of a document: where it starts and its logical lines
/// (continuations joined).
#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    lines: Vec<String>,
}

fn is_tool(segment: &str) -> bool {
    let words: Vec<&str> = segment.split_whitespace().collect();
    match words.as_slice() {
        ["grpcurl" | "streamerctl" | "curl" | "wscat", ..] => true,
        ["npx", "wscat", ..] => true,
        ["cargo", "run", rest @ ..] => rest.contains(&"streamerctl"),
        _ => false,
    }
}

/// Whether a line runs one of the tools (alone or in a pipeline).
fn runs_a_tool(line: &str) -> bool {
    line.split('|').any(is_tool)
}

/// The shell blocks of `text` that run a tool.
fn blocks_of(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => {
                    if block.lines.iter().any(|l| runs_a_tool(l)) {
                        blocks.push(block);
                    }
                }
                None if matches!(fence.trim(), "sh" | "bash" | "shell") => {
                    open = Some(Block {
                        file: file.to_owned(),
                        line: i + 1,
                        lines: Vec::new(),
                    });
                }
                None => {
                    // Another language: skip to its closing fence.
                    open = Some(Block {
                        file: String::new(),
                        line: 0,
                        lines: Vec::new(),
                    });
                }
            }
            continue;
        }
        let Some(block) = open.as_mut() else { continue };
        if block.file.is_empty() {
            continue;
        }
        match raw.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(raw);
                block.lines.push(std::mem::take(&mut pending));
            }
        }
    }
    blocks
}

/// Every runnable block of README.md and docs/*.md.
fn documented_blocks() -> Vec<Block> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .iter()
        .flat_map(|path| {
            let name = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            blocks_of(&name, &std::fs::read_to_string(path).expect("read doc"))
        })
        .collect()
}

/// The lines of a block as the test runs them.
fn script(block: &Block, connection_id: &str) -> String {
    let mut out = String::new();
    for l in &block.lines {
        let t = l.trim();
        if t.starts_with("cargo build") || t.starts_with("npx wscat") {
            out.push_str(&format!("# not run by the test: {t}\n"));
            continue;
        }
        assert!(
            !t.contains(":50051"),
            "{}:{}: a command names a fixed port ({t}); write $STREAMER_GRPC (the banner exports it)",
            block.file,
            block.line
        );
        out.push_str(&t.replace(CONNECTION_PLACEHOLDER, connection_id));
        out.push('\n');
    }
    out
}

async fn run_block(block: &Block, export: &str, dir: &Path, connection_id: &str) {
    let streamerctl_dir = binary("streamerctl")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let body = script(block, connection_id);
    let output = tokio::time::timeout(
        DEADLINE * 3,
        tokio::process::Command::new("sh")
            .arg("-exc")
            .arg(format!("{export}\n{body}"))
            .current_dir(dir)
            .env_clear()
            .env(
                "PATH",
                format!("{}:{}", streamerctl_dir.display(), tool_path()),
            )
            .output(),
    )
    .await
    .expect("the block ran in time")
    .expect("sh");
    assert!(
        output.status.success(),
        "{}:{}: a documented command failed\n--- block ---\n{body}--- stdout ---\n{}\n--- stderr (the last line run is the last `+` line) ---\n{}",
        block.file,
        block.line,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_block_reader_finds_commands_and_joins_continuations() {
    let doc = "text\n```sh\nH=1\ngrpcurl -d '{}' \\\n  $STREAMER_GRPC list\n```\n```json\n{\"a\": 1}\n```\n```sh\ncargo run --bin x\n```\n";
    let blocks = blocks_of("x.md", doc);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(
        blocks[0].lines,
        ["H=1", "grpcurl -d '{}'    $STREAMER_GRPC list"]
    );
    assert!(runs_a_tool("echo '\"hi\"' | streamerctl send --tenant dev"));
    assert!(!runs_a_tool(
        "cargo build -p streamer-client --bin streamerctl"
    ));
}

#[tokio::test]
async fn every_command_line_in_the_docs_runs_as_written_against_a_fresh_dev() {
    let blocks = documented_blocks();
    assert!(
        blocks.len() >= 6,
        "the docs show grpcurl and streamerctl blocks: {blocks:?}"
    );
    let dir = TempDir::new("docs-commands");
    let state = dir.0.join(".build/dev");
    let (_dev, banner) = fresh_dev_with(
        &state,
        &[
            ("STREAMER_DEMO_DURATION_MS", "600000"),
            ("STREAMER_HISTORY", "group:room-*,user:*,tenant"),
        ],
    )
    .await;
    let export = line(&banner, "export STREAMER_ADDR=").to_owned();
    let url = line(&banner, "npx wscat -c '")
        .trim_start_matches("npx wscat -c '")
        .trim_end_matches('\'')
        .to_owned();

    // The live connections and the running request the docs refer to.
    let mut first = connect_ws(&url).await;
    let mut second = connect_ws(&url).await;
    let connection_id = whoami(&mut first).await;
    for ws in [&mut first, &mut second] {
        send_json(
            ws,
            &json!({"id": "j", "action": "join", "payload": {"group": "room-1"}}),
        )
        .await;
        assert_eq!(recv_type(ws, "response").await["success"], true);
    }
    for id in ["rep-1", "rep-2"] {
        send_json(
            &mut second,
            &json!({"request_id": id, "action": "generate_report", "payload": {
                "start_date": "2024-01-01", "end_date": "2024-01-31",
                "format": "pdf", "report_type": "monthly"
            }}),
        )
        .await;
        recv_type(&mut second, "acknowledgment").await;
    }

    for block in &blocks {
        println!("running {}:{}", block.file, block.line);
        run_block(block, &export, &dir.0, &connection_id).await;
    }
    drop((first, second));
}
