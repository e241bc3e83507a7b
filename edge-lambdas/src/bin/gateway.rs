//! `streamer-gateway`: the local API Gateway emulator on its own, in front
//! of a control plane running elsewhere (`streamer-control-plane serve`).
//! `streamer-control-plane dev` runs both in one process; this binary keeps
//! them apart, e.g. to measure the control plane's memory alone.
//!
//! Environment: `STREAMER_CONTROL_PLANE_URL`, `STREAMER_EDGE_TOKEN`,
//! `STREAMER_GATEWAY_ADDR` (default `127.0.0.1:8080`), `STREAMER_STAGE`
//! (default `local`).

use std::process::ExitCode;

use streamer_edge::{
    client::edge_client,
    gateway::{Gateway, GatewayOptions},
    handler::EdgeHandler,
};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamer-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = var("STREAMER_CONTROL_PLANE_URL")
        .ok_or_else(|| anyhow::anyhow!("set STREAMER_CONTROL_PLANE_URL"))?;
    let token =
        var("STREAMER_EDGE_TOKEN").ok_or_else(|| anyhow::anyhow!("set STREAMER_EDGE_TOKEN"))?;
    let addr = var("STREAMER_GATEWAY_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
    let stage = var("STREAMER_STAGE").unwrap_or_else(|| "local".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let handler = EdgeHandler::new(
        edge_client(&url, &token)?,
        Some(format!("http://{local}/{stage}")),
    );
    let gateway = Gateway::new(
        handler,
        GatewayOptions {
            stage: stage.clone(),
            ..GatewayOptions::default()
        },
    );
    println!("STREAMER_GATEWAY_READY {{\"gateway\":\"{local}\",\"stage\":\"{stage}\"}}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    gateway.serve(listener, shutdown).await?;
    Ok(())
}
