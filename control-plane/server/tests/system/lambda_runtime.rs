//! The three edge Lambda binaries under a Lambda runtime none of us wrote:
//! `cargo lambda watch --only-lambda-apis` (PyPI `cargo-lambda`, installed
//! by `scripts/test.sh`) serves its emulation of the Lambda Runtime API, the
//! binaries the test command built run against it as Lambda runs them
//! (`AWS_LAMBDA_RUNTIME_API` and the rest of Lambda's environment), `cargo
//! lambda invoke` sends them the real API Gateway event fixtures
//! (`edge-lambdas/tests/fixtures/`), and they talk to a real control plane
//! (`dev`) over gRPC. What the binaries' `main` does — configuration from
//! the environment, the runtime loop, the event and response JSON — is what
//! runs here.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};
use streamer_proto::v1;
use streamer_test_kit::prelude::*;
use tokio::process::{Child, Command};

/// The edge functions, by binary name.
const FUNCTIONS: [&str; 3] = [
    "streamer-edge-connect",
    "streamer-edge-default",
    "streamer-edge-disconnect",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `PATH` with the test command's virtualenv (where `cargo-lambda` is) first.
fn path() -> String {
    let venv = workspace().join(".build/venv/bin");
    let cargo_lambda = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([venv.clone()])
        .any(|dir| dir.join("cargo-lambda").is_file());
    assert!(
        cargo_lambda,
        "cargo-lambda is not installed: run `bash scripts/test.sh`, which installs it (PyPI cargo-lambda) into .build/venv"
    );
    format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A port nobody listens on now (`cargo lambda watch` takes a port, not 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `cargo lambda watch` (in its own process group, so whatever it starts
/// stops with it) and the functions running against it.
struct Watch {
    child: Child,
    port: u16,
    /// Its log and its functions' (shown when an invocation fails; the
    /// functions' complaints as the runtime goes away stay out of a green
    /// run's output).
    log: PathBuf,
    _functions: Vec<Child>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The group is the child's pid (`process_group(0)`); `--` keeps
        // `kill` from reading the negative group id as an option.
        if let Some(pid) = self.child.id().filter(|pid| *pid > 1) {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

async fn watch(dev: &Dev, dir: &TempDir) -> Watch {
    let plaintext = [
        (
            "STREAMER_CONTROL_PLANE_URL".to_owned(),
            format!("http://{}", dev.grpc),
        ),
        ("STREAMER_EDGE_TOKEN".to_owned(), EDGE_TOKEN.to_owned()),
    ];
    watch_with(dir, &plaintext).await
}

/// [`watch`] with the functions' own settings (`edge`: the control
/// plane's URL and the edge's credentials).
async fn watch_with(dir: &TempDir, edge: &[(String, String)]) -> Watch {
    let port = free_port();
    let log = dir.0.join("cargo-lambda-watch.log");
    let child = Command::new("cargo")
        .args(["lambda", "watch", "--only-lambda-apis"])
        .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
        .arg(port.to_string())
        .current_dir(workspace().join("edge-lambdas"))
        .env("PATH", path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cargo lambda watch");
    eventually("cargo lambda watch listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    // Each function as Lambda starts a custom runtime: its Runtime API
    // address and name in the environment, its own settings beside them.
    let functions = FUNCTIONS
        .iter()
        .map(|name| {
            Command::new(streamer_test_kit::dev::binary(name))
                .env_clear()
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{port}/.rt/{name}"),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .envs(edge.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&log)
                        .expect("log file"),
                )
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"))
        })
        .collect();
    Watch {
        child,
        port,
        log,
        _functions: functions,
    }
}

/// The fixture `name` with `token` in place of `__TOKEN__`, in a file.
fn fixture(dir: &TempDir, name: &str, token: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        workspace().join(format!("edge-lambdas/tests/fixtures/{name}.json")),
    )
    .expect("fixture");
    let path = dir.0.join(format!("{name}-{}.json", token.len()));
    std::fs::write(&path, text.replace("__TOKEN__", token)).expect("write fixture");
    path
}

/// `cargo lambda invoke function --data-file event`: the function's
/// response.
async fn invoke(watch: &Watch, function: &str, event: &PathBuf, within: Duration) -> Value {
    let output = tokio::time::timeout(
        within,
        Command::new("cargo")
            .args(["lambda", "invoke", function, "--output-format", "json"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(watch.port.to_string())
            .arg("--data-file")
            .arg(event)
            .current_dir(workspace().join("edge-lambdas"))
            .env("PATH", path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{function} did not answer within {within:?}; cargo lambda watch said:\n{}",
            std::fs::read_to_string(&watch.log).unwrap_or_default()
        )
    })
    .expect("run cargo lambda invoke");
    assert!(
        output.status.success(),
        "cargo lambda invoke {function}: {}\ncargo lambda watch said:\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&watch.log).unwrap_or_default()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{function} answered no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test]
async fn the_lambda_binaries_answer_real_events_under_cargo_lambda() {
    // The endpoint of the API Gateway fixtures is the stack's API.
    let dev = Dev::start(&[(
        "STREAMER_MANAGEMENT_ENDPOINTS",
        "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
    )])
    .await;
    let dir = TempDir::new("lambda-events");
    let watch = watch(&dev, &dir).await;
    let valid = token("alice", "acme", &[]);
    let mut admin = connections(dev.grpc_channel(), ADMIN_TOKEN);
    let row =
        |admin: &mut streamer_proto::v1::connection_service_client::ConnectionServiceClient<
            Authed,
        >| {
            let mut admin = admin.clone();
            async move {
                admin
                    .get_connection(v1::GetConnectionRequest {
                        connection_id: "PwQ8XdTQjoECJhw=".into(),
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().connection)
            }
        };

    // $connect with a bad token: 401 and the JSON body API Gateway relays.
    let refused = invoke(
        &watch,
        "streamer-edge-connect",
        &fixture(&dir, "connect", "bad-token"),
        DEADLINE,
    )
    .await;
    assert_eq!(refused["statusCode"], 401, "{refused}");
    let body: Value =
        serde_json::from_str(refused["body"].as_str().expect("body")).expect("json body");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");

    // $connect: registered with the event's identity and endpoint.
    let accepted = invoke(
        &watch,
        "streamer-edge-connect",
        &fixture(&dir, "connect", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(accepted["statusCode"], 200, "{accepted}");
    let registered = row(&mut admin).await.expect("registered");
    assert_eq!(
        (
            registered.tenant_id.as_str(),
            registered.user_id.as_str(),
            registered.endpoint.as_str(),
            registered.source_ip.as_str()
        ),
        (
            "acme",
            "alice",
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
            "203.0.113.10"
        )
    );

    // $default: the reply is the route response body.
    let reply = invoke(
        &watch,
        "streamer-edge-default",
        &fixture(&dir, "message", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(reply["statusCode"], 200, "{reply}");
    let frame: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("frame");
    assert_eq!(
        (
            frame["type"].clone(),
            frame["request_id"].clone(),
            frame["data"].clone()
        ),
        (
            json!("response"),
            json!("fixture-1"),
            json!({"hello": "lambda"})
        )
    );

    // $disconnect: the row is gone.
    let gone = invoke(
        &watch,
        "streamer-edge-disconnect",
        &fixture(&dir, "disconnect", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(gone["statusCode"], 200, "{gone}");
    assert!(row(&mut admin).await.is_none(), "removed on $disconnect");
}

#[tokio::test]
async fn the_lambda_binaries_reach_the_control_plane_over_mutual_tls_with_no_token() {
    let dev = Dev::start(&[
        (
            "STREAMER_MANAGEMENT_ENDPOINTS",
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
        ),
        ("STREAMER_DEV_TLS", "true"),
    ])
    .await;
    let tls = dev.ready["tls"].clone();
    let dir = TempDir::new("lambda-tls");
    let state = std::path::Path::new(tls["ca"].as_str().expect("ca"))
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let file = |name: &str| state.join(name).to_string_lossy().into_owned();
    // The edge's certificate (`dev --tls` makes it), an https:// URL, the
    // CA: no edge token anywhere in the functions' settings.
    let edge = [
        (
            "STREAMER_CONTROL_PLANE_URL".to_owned(),
            format!("https://{}", dev.grpc),
        ),
        ("STREAMER_CONTROL_PLANE_CA".to_owned(), file("ca.pem")),
        ("STREAMER_EDGE_TLS_CERT".to_owned(), file("edge.pem")),
        ("STREAMER_EDGE_TLS_KEY".to_owned(), file("edge-key.pem")),
    ];
    let watch = watch_with(&dir, &edge).await;
    let valid = token("alice", "acme", &[]);
    let accepted = invoke(
        &watch,
        "streamer-edge-connect",
        &fixture(&dir, "connect", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(accepted["statusCode"], 200, "{accepted}");
    let reply = invoke(
        &watch,
        "streamer-edge-default",
        &fixture(&dir, "message", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(reply["statusCode"], 200, "{reply}");
    let gone = invoke(
        &watch,
        "streamer-edge-disconnect",
        &fixture(&dir, "disconnect", &valid),
        DEADLINE,
    )
    .await;
    assert_eq!(gone["statusCode"], 200, "{gone}");
}
