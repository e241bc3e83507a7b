//! `streamer-control-plane`: `serve` runs the control plane for production;
//! `dev` runs it with the embedded store and the local API Gateway emulator.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the broadcast profile (perf) showed
/// glibc's arena lock and malloc/free among the top costs under fan-out.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use streamer_control_plane::{config::Config, server::App, telemetry};

#[derive(Parser)]
#[command(
    name = "streamer-control-plane",
    version,
    about = "The Streamer control plane"
)]
struct Cli {
    /// TOML config file (default: $STREAMER_CONFIG, if set).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (production: AWS credentials from the environment).
    Serve,
    /// Run the control plane with the embedded store plus the local API
    /// Gateway emulator, on loopback.
    Dev,
    /// Manage the DynamoDB tables (for local use and tests; production
    /// tables come from deploy/).
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create the configured tables with their indexes and TTL (idempotent).
    Create,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_process_env(cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("streamer-control-plane: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("streamer-control-plane: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = telemetry::init(config.log_format);
        let result = match cli.command {
            Command::Dev => streamer_control_plane::dev::run(config).await,
            Command::Serve => serve(config).await,
            Command::Tables {
                command: TablesCommand::Create,
            } => streamer_control_plane::store::create_tables(&config)
                .await
                .map(|tables| {
                    for table in tables {
                        println!("table {table} is ready");
                    }
                })
                .map_err(anyhow::Error::from),
        };
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamer-control-plane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let app = App::build(&config, None, sdk).await?;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    if let Some(addr) = config.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(streamer_control_plane::metrics::serve(
            metrics,
            std::future::pending(),
        ));
    }
    streamer_control_plane::server::raise_open_file_limit();
    app.serve(listener, streamer_control_plane::server::shutdown_signal())
        .await
}
