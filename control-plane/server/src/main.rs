//! `streamer-control-plane`: `serve` runs the control plane for production;
//! `dev` runs it with the embedded store, the local API Gateway emulator and
//! a demo processor; `tables create` makes the DynamoDB tables.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use streamer_control_plane::{
    app::{App, Console, raise_open_file_limit, shutdown_signal},
    config::{Config, ConfigError, settings},
    delivery::management_api::ManagementApi,
};

/// mimalloc instead of glibc malloc: the broadcast profile (perf) showed
/// glibc's arena lock and malloc/free among the top costs under fan-out.
/// Wrapped in a byte counter, so `streamer_heap_bytes` (and the benchmark's
/// memory per connection) is the heap in use, not an RSS delta.
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

fn heap_bytes() -> u64 {
    u64::try_from(GLOBAL.allocated()).unwrap_or(u64::MAX)
}

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
    Dev {
        /// Run this many control-plane replicas behind the one gateway
        /// (needs STREAMER_STORE=dynamodb; also STREAMER_DEV_REPLICAS).
        #[arg(long)]
        replicas: Option<usize>,
        /// Make a local CA and certificates in the state folder and serve
        /// gRPC with TLS and mutual TLS (the emulator's edge calls too),
        /// the console and /metrics with TLS (also STREAMER_DEV_TLS=true).
        #[arg(long)]
        tls: bool,
    },
    /// Manage the DynamoDB tables (for local use and tests; production
    /// tables come from deploy/).
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Migration from the Go system (deploy/README.md, "Migrating from the
    /// Go system").
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Register the Go system's open connections in Streamer's registry
    /// (STREAMER_STORE=dynamodb), so they receive Streamer's broadcasts.
    /// Reads both of its item shapes; idempotent, so it can run on a
    /// schedule while traffic shifts.
    LegacyConnections {
        /// The Go system's connections table.
        #[arg(long)]
        from_table: String,
        /// Count what would be imported without writing.
        #[arg(long)]
        dry_run: bool,
        /// Run again every this many seconds until stopped (SIGTERM / Ctrl-C).
        #[arg(long)]
        every_secs: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create the configured tables with their indexes and TTL (idempotent).
    Create,
}

fn config_error(err: &ConfigError) -> ExitCode {
    eprintln!("streamer-control-plane: configuration error:");
    for problem in &err.problems {
        eprintln!("  {problem}");
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    streamer_control_plane::metrics::set_heap_meter(heap_bytes);
    let cli = Cli::parse();
    let production = matches!(cli.command, Command::Serve);
    let mut config = match Config::from_process_env(cli.config, production) {
        Ok(config) => config,
        Err(err) => return config_error(&err),
    };
    if let Command::Dev { replicas, tls } = cli.command {
        if let Some(replicas) = replicas {
            config.dev.replicas = replicas.max(1);
        }
        config.dev.tls |= tls;
    }
    if config.dev.tls && config.server.tls.is_some() {
        return config_error(&ConfigError::one(format!(
            "dev --tls (STREAMER_DEV_TLS) makes its own certificates; unset {} and {} or drop --tls",
            settings::TLS_CERT.name(),
            settings::TLS_KEY.name()
        )));
    }
    // Everything that can be wrong with the configuration is reported (exit
    // 2) before any AWS lookup or port.
    if let Err(err) = check(&config) {
        return config_error(&err);
    }
    streamer_control_plane::metrics::set_tenant_labels(config.server.metrics_tenant_labels);
    if matches!(
        cli.command,
        Command::Tables { .. } | Command::Migrate { .. }
    ) && let Err(err) = aws_ready()
    {
        return config_error(&err);
    }
    if matches!(cli.command, Command::Migrate { .. })
        && config.store.kind != streamer_control_plane::config::StoreKind::DynamoDb
    {
        return config_error(&ConfigError::one(format!(
            "missing setting {}=dynamodb: `migrate` imports into the DynamoDB registry",
            settings::STORE.name()
        )));
    }
    if matches!(cli.command, Command::Migrate { .. })
        && config.delivery.endpoints == streamer_control_plane::config::ManagementEndpoints::Unset
    {
        return config_error(&ConfigError::one(Config::missing_endpoints()));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("streamer-control-plane: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry =
            streamer_telemetry::init(config.server.log_format, "streamer-control-plane");
        let result = match cli.command {
            Command::Dev { .. } => streamer_server::dev::run(config).await,
            Command::Serve => serve(config).await,
            Command::Tables {
                command: TablesCommand::Create,
            } => streamer_control_plane::app::stores::create_tables(&config)
                .await
                .map(|tables| {
                    for table in tables {
                        println!("table {table} is ready");
                    }
                })
                .map_err(anyhow::Error::msg),
            Command::Migrate {
                command:
                    MigrateCommand::LegacyConnections {
                        from_table,
                        dry_run,
                        every_secs,
                    },
            } => migrate_legacy(&config, &from_table, dry_run, every_secs).await,
        };
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamer-control-plane: {err:#}");
            let settings = err.chain().any(|e| {
                e.downcast_ref::<streamer_control_plane::app::BuildError>()
                    .is_some_and(streamer_control_plane::app::BuildError::is_settings)
            });
            if settings {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The key parses and the actions compile; every problem at once.
fn check(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if let Some(jwt) = &config.jwt
        && let Err(err) = streamer_control_plane::connections::auth::JwtVerifier::new(jwt)
    {
        problems.push(err.to_string());
    }
    if let Err(err) = streamer_control_plane::actions::Actions::new(&config.actions) {
        problems.push(format!("invalid value for actions: {err}"));
    }
    if config.dev.replicas > 1
        && config.store.kind != streamer_control_plane::config::StoreKind::DynamoDb
    {
        problems.push(format!(
            "invalid value for STREAMER_DEV_REPLICAS / --replicas: {} replicas share state through the store; set STREAMER_STORE=dynamodb",
            config.dev.replicas
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// `tables create` talks to DynamoDB: without a region (or an endpoint) the
/// SDK would fail with an unhelpful dispatch error, so say what is missing.
fn aws_ready() -> Result<(), ConfigError> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    if set("AWS_REGION") || set("AWS_DEFAULT_REGION") || set("AWS_PROFILE") {
        return Ok(());
    }
    Err(ConfigError::one(format!(
        "missing setting AWS_REGION: `tables create` needs the region of the tables ({} names them; \
         for a local DynamoDB-compatible server also set AWS_ENDPOINT_URL_DYNAMODB)",
        settings::CONNECTIONS_TABLE.name()
    )))
}

/// `migrate legacy-connections`: one import, or one every `every_secs`.
async fn migrate_legacy(
    config: &Config,
    from_table: &str,
    dry_run: bool,
    every_secs: Option<u64>,
) -> anyhow::Result<()> {
    use streamer_control_plane::registry::{Ttl, dynamo::DynamoRegistry, legacy};
    let client = streamer_control_plane::store::dynamo::client().await;
    let ttl = Ttl {
        idle: config.store.connection_ttl,
        max_age: config.store.connection_ttl,
    };
    let clock = streamer_control_plane::clock::Clock::new();
    let registry = DynamoRegistry::new(client.clone(), &config.store.connections_table, ttl, clock);
    loop {
        let report = legacy::import(
            &client,
            from_table,
            &registry,
            &config.delivery.endpoints,
            ttl,
            clock.now_ms(),
            dry_run,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        println!(
            "{}{from_table} → {}: {report}",
            if dry_run { "dry run: " } else { "" },
            config.store.connections_table
        );
        let Some(every) = every_secs else {
            return Ok(());
        };
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(every.max(1))) => {}
            () = shutdown_signal() => return Ok(()),
        }
    }
}

/// `STREAMER_TLS_CERT=self-signed`: a certificate for this task's names,
/// made now in a private temporary folder (the load balancer in front
/// re-encrypts to it and does not check it; clients check the load
/// balancer's ACM certificate).
fn self_signed(config: &mut Config) -> anyhow::Result<()> {
    let Some(tls) = config.server.tls.as_mut().filter(|t| t.self_signed()) else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("streamer-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = streamer_listener::pki::Ca::new("Streamer task", 365)?;
    let leaf = ca.issue(&streamer_listener::pki::LOOPBACK_NAMES, 365)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    streamer_listener::pki::write(&cert, &format!("{}{}", leaf.cert_pem, ca.pem()))?;
    streamer_listener::pki::write(&key, &leaf.key_pem)?;
    tls.cert = cert;
    tls.key = key;
    Ok(())
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    self_signed(&mut config)?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let delivery = Arc::new(ManagementApi::new(sdk, config.delivery.clone()));
    let app = App::build(&config, None, delivery).await?;
    let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on {} ({err}); set {} to another address",
                config.server.grpc_addr,
                settings::GRPC_ADDR.name()
            )
        })?;
    if let Some(addr) = config.server.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await.map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on {addr} ({err}); set {} to another address",
                settings::METRICS_ADDR.name()
            )
        })?;
        app.serve_metrics(metrics, std::future::pending());
    }
    let console = match config.server.console.resolve(false) {
        Some(addr) => Some(Console {
            listener: tokio::net::TcpListener::bind(addr).await.map_err(|err| {
                anyhow::anyhow!(
                    "cannot listen on {addr} ({err}); set {} to another address",
                    settings::CONSOLE_ADDR.name()
                )
            })?,
            dev: None,
        }),
        None => None,
    };
    raise_open_file_limit();
    app.serve_with(listener, console, shutdown_signal()).await
}
