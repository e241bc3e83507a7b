//! The console's port on the production `serve`: off unless
//! `STREAMER_CONSOLE_ADDR` is set; when set, the page and gRPC-Web on the
//! wire (the same services and token rules as the gRPC port), and no `dev`
//! helper. The page itself is tested in browsers by
//! `control-plane/console/test/`.

use std::time::Duration;

use streamer_test_kit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// One HTTP/1.1 exchange on a fresh connection: the raw response bytes.
async fn exchange(addr: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.write_all(request).await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    Ok(response)
}

fn get(addr: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A gRPC-Web call with an empty request message (one 5-byte frame header).
fn grpc_web(addr: &str, method: &str, token: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /{method} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 5\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(&[0, 0, 0, 0, 0]);
    request
}

fn text(response: &[u8]) -> String {
    String::from_utf8_lossy(response).into_owned()
}

/// `serve` with the console on `console` when given (off by default).
async fn serve(console: Option<&str>) -> Serve {
    let env: Vec<(&str, &str)> = console
        .map(|addr| ("STREAMER_CONSOLE_ADDR", addr))
        .into_iter()
        .collect();
    Serve::start(&env).await
}

#[tokio::test]
async fn serve_has_no_console_unless_asked() {
    let console = free_addr();
    let _serve = serve(None).await;
    assert!(
        exchange(&console, &get(&console, "/")).await.is_err(),
        "nothing listens on a console address that was not configured"
    );
}

#[tokio::test]
async fn serves_console_page_and_grpc_web_with_grpc_rules() {
    let console = free_addr();
    let _serve = serve(Some(&console)).await;

    let page = text(&exchange(&console, &get(&console, "/")).await.expect("page"));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>Streamer console</title>"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    let info = text(
        &exchange(&console, &get(&console, "/console/info"))
            .await
            .expect("info"),
    );
    assert!(info.ends_with(r#"{"dev":false}"#), "{info}");
    let helper = format!(
        "POST /console/dev/token HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 35\r\n\r\n{{\"tenant_id\":\"a\",\"user_id\":\"b1234\"}}"
    );
    let helper = text(&exchange(&console, helper.as_bytes()).await.expect("helper"));
    assert!(
        helper.starts_with("HTTP/1.1 404"),
        "no token minting outside dev: {helper}"
    );

    // gRPC-Web: the admin token reads the tenants; a wrong token and the
    // edge token get the gRPC port's own refusals.
    let method = "streamer.v1.ConnectionService/ListTenants";
    let ok = text(
        &exchange(&console, &grpc_web(&console, method, ADMIN_TOKEN))
            .await
            .expect("grpc-web"),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("content-type: application/grpc-web+proto"),
        "{ok}"
    );
    assert!(ok.contains("grpc-status:0"), "trailers say OK: {ok}");
    let refused = text(
        &exchange(
            &console,
            &grpc_web(&console, method, "wrong-token-0123456789"),
        )
        .await
        .expect("grpc-web"),
    );
    assert!(
        refused.to_ascii_lowercase().contains("grpc-status: 16"),
        "UNAUTHENTICATED: {refused}"
    );
    let edge = text(
        &exchange(&console, &grpc_web(&console, method, EDGE_TOKEN))
            .await
            .expect("grpc-web"),
    );
    assert!(
        edge.to_ascii_lowercase().contains("grpc-status: 7"),
        "PERMISSION_DENIED for the edge role: {edge}"
    );
    let admin_only = text(
        &exchange(
            &console,
            &grpc_web(&console, "streamer.v1.AdminService/GetStats", ADMIN_TOKEN),
        )
        .await
        .expect("grpc-web"),
    );
    assert!(admin_only.contains("grpc-status:0"), "{admin_only}");

    // A client that never finishes its request head is not kept.
    let mut idle = tokio::net::TcpStream::connect(&console)
        .await
        .expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(15), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "closed within the header timeout"
    );
}
