//! The README's "Try it", followed as a newcomer would on a fresh `dev`
//! (nothing configured but free ports and an empty state folder): the
//! banner's `export`, `grpcurl` and `streamerctl` lines run as printed, the
//! printed token connects (with a WebSocket client in place of `npx wscat`),
//! the README's session gets the answers the README shows, and after a
//! restart the lines copied before still work.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use serde_json::Value;
use streamer_test_kit::{dev::binary, prelude::*};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README from `## Try it` to the next section after it that is not
/// about trying it.
fn try_it() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("## Try it").expect("a Try it section");
    let end = readme[start..]
        .find("\n## Clients")
        .map_or(readme.len(), |e| start + e);
    readme[start..end].to_owned()
}

/// `PATH` with the test tools the test command installs (`grpcurl`) first;
/// a clear failure when `grpcurl` is nowhere.
pub(crate) fn tool_path() -> String {
    let venv = root().join(".build/venv/bin");
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    assert!(
        std::env::split_paths(&path).any(|dir| dir.join("grpcurl").exists()),
        "grpcurl is not installed: run `bash scripts/test.sh` (it installs the pinned test tools into .build/venv) or put grpcurl on PATH"
    );
    path
}

/// A fresh `dev` and its banner (up to and including the ready line).
async fn fresh_dev(state: &Path) -> (Child, Vec<String>) {
    fresh_dev_with(state, &[]).await
}

/// [`fresh_dev`] with settings added.
pub(crate) async fn fresh_dev_with(state: &Path, env: &[(&str, &str)]) -> (Child, Vec<String>) {
    let mut child = Command::new(binary("streamer-control-plane"))
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STREAMER_STATE_DIR", state)
        .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
        .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
        .env("STREAMER_CONSOLE_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let banner = tokio::time::timeout(DEADLINE, async {
        let mut banner = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let ready = line.starts_with("STREAMER_DEV_READY ");
            banner.push(line);
            if ready {
                return banner;
            }
        }
        panic!("dev exited before it was ready: {banner:#?}");
    })
    .await
    .expect("dev ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, banner)
}

/// The banner line that starts (after its indent) with `prefix`.
pub(crate) fn line<'a>(banner: &'a [String], prefix: &str) -> &'a str {
    banner
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no banner line starting {prefix:?} in {banner:#?}"))
}

/// Runs a banner command line with `sh` after the banner's `export` line,
/// `streamerctl` as built (the line says `cargo run … --bin streamerctl --`).
async fn run(export: &str, command: &str) -> std::process::Output {
    let streamerctl = binary("streamerctl");
    let command = command.replace(
        "cargo run -q -p streamer-client --bin streamerctl --",
        &streamerctl.display().to_string(),
    );
    let output = tokio::time::timeout(
        DEADLINE,
        Command::new("sh")
            .arg("-c")
            .arg(format!("{export} && {command}"))
            .env_clear()
            .env("PATH", tool_path())
            .output(),
    )
    .await
    .expect("in time")
    .expect("sh");
    assert!(
        output.status.success(),
        "{command}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether `actual` holds everything `expected` shows; the README's
/// illustrative values of ids and times only need to be there.
fn shows(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| {
            a.get(k).is_some_and(|got| {
                matches!(k.as_str(), "connection_id" | "connected_at" | "timestamp")
                    || shows(v, got)
            })
        }),
        _ => expected == actual,
    }
}

/// The session the README shows: (frame sent, answer shown).
fn session(section: &str) -> Vec<(String, Value)> {
    let mut pairs = Vec::new();
    let mut sent = None;
    for l in section.lines() {
        if let Some(frame) = l.strip_prefix("> ") {
            sent = Some(frame.to_owned());
        } else if let Some(answer) = l.strip_prefix("< ") {
            let frame = sent.take().expect("an answer follows a frame");
            pairs.push((frame, serde_json::from_str(answer).expect("answer json")));
        }
    }
    assert!(pairs.len() >= 3, "the README shows a session: {pairs:?}");
    pairs
}

#[tokio::test]
async fn the_readme_try_it_lines_run_as_written_and_survive_a_restart() {
    let section = try_it();
    let state = TempDir::new("readme-dev");
    let (mut dev, banner) = fresh_dev(&state.0.join("state")).await;

    // The README shows the lines the banner prints, in the same order.
    let commands = [
        "export STREAMER_ADDR=",
        "npx wscat -c '",
        "mint more tokens: cargo run -q -p streamer-client --bin streamerctl -- token",
        "grpcurl -plaintext -H \"authorization: Bearer $STREAMER_TOKEN\"",
        "cargo run -q -p streamer-client --bin streamerctl -- connections list --tenant dev",
    ];
    let mut at = 0;
    for command in commands {
        line(&banner, command);
        let found = section[at..]
            .find(command)
            .unwrap_or_else(|| panic!("the README's Try it does not show {command:?} (in order)"));
        at += found;
    }

    // The printed token connects; the session gets the README's answers.
    let export = line(&banner, "export STREAMER_ADDR=").to_owned();
    let wscat = line(&banner, "npx wscat -c '");
    let url = wscat
        .trim_start_matches("npx wscat -c '")
        .trim_end_matches('\'')
        .to_owned();
    let mut ws = connect_ws(&url).await;
    for (frame, expected) in session(&section) {
        send(&mut ws, &frame).await;
        let answer = recv(&mut ws).await;
        assert!(
            shows(&expected, &answer),
            "sent {frame}\nthe README shows {expected}\nthe server answered {answer}"
        );
    }
    let me = whoami(&mut ws).await;

    // grpcurl: list the services; broadcast to the tenant.
    let list = run(
        &export,
        line(
            &banner,
            "grpcurl -plaintext -H \"authorization: Bearer $STREAMER_TOKEN\" 127.0.0.1:",
        ),
    )
    .await;
    assert!(String::from_utf8_lossy(&list.stdout).contains("streamer.v1.BroadcastService"));
    run(
        &export,
        line(
            &banner,
            "grpcurl -plaintext -H \"authorization: Bearer $STREAMER_TOKEN\" -d",
        ),
    )
    .await;
    let message = recv_type(&mut ws, "message").await;
    assert_eq!(message["data"], serde_json::json!({"hello": "everyone"}));

    // streamerctl: list the tenant's connections; mint a token for alice.
    let listed = run(
        &export,
        line(
            &banner,
            "cargo run -q -p streamer-client --bin streamerctl -- connections list",
        ),
    )
    .await;
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&me));
    let mint = line(&banner, "mint more tokens: ").trim_start_matches("mint more tokens: ");
    let minted = run(&export, mint).await;
    let alice = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let base = url.split('?').next().expect("base url").to_owned();
    let mut as_alice = connect_ws(&format!("{base}?token={alice}")).await;
    send(&mut as_alice, r#"{"id":"w","action":"whoami"}"#).await;
    assert_eq!(recv(&mut as_alice).await["data"]["user_id"], "alice");

    // A restart keeps the key and the tokens: the copied lines still work.
    streamer_test_kit::dev::sigterm(&dev);
    let _ = tokio::time::timeout(DEADLINE, dev.wait()).await;
    let (_dev, again) = fresh_dev(&state.0.join("state")).await;
    let new_export = line(&again, "export STREAMER_ADDR=");
    let token_of = |export: &str| export.split("STREAMER_TOKEN=").nth(1).map(str::to_owned);
    assert_eq!(
        token_of(new_export),
        token_of(&export),
        "the admin token survives a restart"
    );
    let new_base = line(&again, "npx wscat -c '")
        .trim_start_matches("npx wscat -c '")
        .split('?')
        .next()
        .expect("base url")
        .to_owned();
    let old_token = url.split("token=").nth(1).expect("token");
    let mut ws = connect_ws(&format!("{new_base}?token={old_token}")).await;
    send(&mut ws, r#"{"id":"w","action":"whoami"}"#).await;
    assert_eq!(recv(&mut ws).await["data"]["user_id"], "dev-user");
    run(
        new_export,
        line(
            &again,
            "grpcurl -plaintext -H \"authorization: Bearer $STREAMER_TOKEN\" 127.0.0.1:",
        ),
    )
    .await;
}
