//! `streamerctl`: the operator's command line for a Streamer control plane.
//!
//! Exit codes: 0 done; 1 the server refused for another reason; 2 bad usage
//! or input; 3 control plane unreachable or unavailable; 4 missing, bad or
//! insufficient token; 5 not found.

use std::{io::Read, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use streamer_client::{
    Client, Connection, DeliveryReport, Error, Member, RequestInfo, RequestStatus,
};

#[derive(Parser)]
#[command(
    name = "streamerctl",
    version,
    about = "Operate a Streamer control plane"
)]
struct Cli {
    /// Control plane gRPC address.
    #[arg(
        long,
        env = "STREAMER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Bearer token (admin or service).
    #[arg(long, env = "STREAMER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Whether the control plane is serving.
    Health,
    /// Connection queries.
    #[command(subcommand)]
    Connections(Connections),
    /// Send a message to a connection, a user, a group or a tenant.
    Send(Send),
    /// Long-running requests.
    #[command(subcommand)]
    Requests(Requests),
    /// Groups (rooms).
    #[command(subcommand)]
    Groups(Groups),
    /// Mint a development client token (RS256) from a private key.
    Token(TokenArgs),
}

#[derive(Subcommand)]
enum Connections {
    /// List a tenant's (or a user's) connections.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Show one connection.
    Get { connection_id: String },
    /// Count a tenant's (or a user's) connections.
    Count {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Close a connection and forget it.
    Disconnect { connection_id: String },
}

#[derive(Args)]
struct Send {
    /// One connection.
    #[arg(long, conflicts_with_all = ["user", "group"])]
    connection: Option<String>,
    /// Every connection of this user (with --tenant).
    #[arg(long, requires = "tenant", conflicts_with = "group")]
    user: Option<String>,
    /// Every member of this group (with --tenant).
    #[arg(long, requires = "tenant")]
    group: Option<String>,
    /// The tenant (alone: every connection of it).
    #[arg(long)]
    tenant: Option<String>,
    /// A topic for the frame.
    #[arg(long)]
    topic: Option<String>,
    /// Connection ids to leave out.
    #[arg(long)]
    exclude: Vec<String>,
    /// The message as JSON text.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the JSON message from this file (otherwise from stdin).
    #[arg(long)]
    data_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusArg {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Subcommand)]
enum Requests {
    /// List a tenant's requests.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
    },
    /// Show one request.
    Get {
        #[arg(long)]
        tenant: String,
        request_id: String,
    },
    /// Cancel a queued or running request.
    Cancel {
        #[arg(long)]
        tenant: String,
        request_id: String,
    },
}

#[derive(Subcommand)]
enum Groups {
    /// List a group's members.
    ListMembers {
        #[arg(long)]
        tenant: String,
        group: String,
    },
    /// Count a group's members.
    Count {
        #[arg(long)]
        tenant: String,
        group: String,
    },
    /// Add a connection or a user's connections.
    Add(GroupChange),
    /// Remove a connection or a user's connections.
    Remove(GroupChange),
}

#[derive(Args)]
struct GroupChange {
    #[arg(long)]
    tenant: String,
    group: String,
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    connection: Option<String>,
    #[arg(long)]
    user: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// PEM private key (RSA, PKCS#8 or PKCS#1).
    #[arg(long)]
    private_key: PathBuf,
    /// The user (sub).
    #[arg(long)]
    sub: String,
    /// The tenant (tenant_id).
    #[arg(long)]
    tenant: String,
    /// A permission to grant (repeatable).
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600)]
    expires_in: u64,
    /// iss claim.
    #[arg(long)]
    issuer: Option<String>,
    /// aud claim.
    #[arg(long)]
    audience: Option<String>,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::Address(_) | Error::Json(_) => 2,
            Error::Connect(_) => 3,
            Error::Token => 4,
            Error::Status { code, .. } => match code {
                Code::Unavailable | Code::DeadlineExceeded => 3,
                Code::Unauthenticated | Code::PermissionDenied => 4,
                Code::NotFound => 5,
                Code::InvalidArgument => 2,
                _ => 1,
            },
        };
        let message = match &err {
            Error::Connect(_) => {
                "cannot reach the control plane (is it running? check --addr / STREAMER_ADDR)"
                    .to_owned()
            }
            Error::Status {
                code: tonic::Code::Unauthenticated,
                message,
            } => {
                format!("not authenticated: {message} (check --token / STREAMER_TOKEN)")
            }
            Error::Status {
                code: tonic::Code::NotFound,
                message,
            } => format!("not found: {message}"),
            other => other.to_string(),
        };
        Failure { code, message }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("streamerctl: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("streamerctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn client(cli: &Cli) -> Result<Client, Failure> {
    let client = Client::connect(&cli.addr).await?;
    match &cli.token {
        Some(token) => Ok(client.with_token(token)?),
        None => Ok(client),
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn connection_json(c: &Connection) -> Value {
    json!({
        "connection_id": c.connection_id,
        "tenant_id": c.tenant_id,
        "user_id": c.user_id,
        "endpoint": c.endpoint,
        "connected_at": ts(&c.connected_at),
        "last_seen": ts(&c.last_seen),
        "permissions": c.permissions,
        "source_ip": c.source_ip,
        "user_agent": c.user_agent,
    })
}

fn status_name(status: i32) -> &'static str {
    match RequestStatus::try_from(status).unwrap_or(RequestStatus::Unspecified) {
        RequestStatus::Queued => "queued",
        RequestStatus::Running => "running",
        RequestStatus::Completed => "completed",
        RequestStatus::Failed => "failed",
        RequestStatus::Cancelled => "cancelled",
        RequestStatus::Unspecified => "unknown",
    }
}

fn request_json(r: &RequestInfo) -> Value {
    let parse = |text: &str| {
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text).unwrap_or(Value::Null)
        }
    };
    json!({
        "tenant_id": r.tenant_id,
        "request_id": r.request_id,
        "action": r.action,
        "user_id": r.user_id,
        "status": status_name(r.status),
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "progress": r.progress.as_ref().map(|p| json!({"percentage": p.percentage, "message": p.message})),
        "result": parse(&r.result_json),
        "error": r.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "created_at": ts(&r.created_at),
        "updated_at": ts(&r.updated_at),
    })
}

fn report_json(r: &DeliveryReport) -> Value {
    json!({
        "targeted": r.targeted,
        "delivered": r.delivered,
        "gone": r.gone,
        "throttled": r.throttled,
        "too_large": r.too_large,
        "failed": r.failed,
    })
}

/// Prints rows as JSON, or as an aligned table of `columns`.
fn print_rows(output: Output, rows: &[Value], columns: &[&str]) {
    if output == Output::Json {
        println!("{}", Value::Array(rows.to_vec()));
        return;
    }
    let cell = |row: &Value, col: &str| match &row[col] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(columns.iter().map(|c| cell(row, c)).collect()));
    }
}

fn print_one(output: Output, value: &Value) {
    if output == Output::Json {
        println!("{value}");
        return;
    }
    if let Value::Object(map) = value {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            println!("{k:<width$}  {v}");
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let output = cli.output;
    match &cli.command {
        Command::Token(args) => return mint(args, output),
        Command::Health => {
            let serving = client(&cli).await?.health().await?;
            print_one(
                output,
                &json!({ "status": if serving { "serving" } else { "not serving" } }),
            );
            return if serving {
                Ok(())
            } else {
                Err(Failure {
                    code: 3,
                    message: "not serving".into(),
                })
            };
        }
        _ => {}
    }
    let client = client(&cli).await?;
    match cli.command {
        Command::Health | Command::Token(_) => {}
        Command::Connections(Connections::List { tenant, user }) => {
            let rows: Vec<Connection> = client
                .list_connections(&tenant, user.as_deref())
                .try_collect()
                .await?;
            let rows: Vec<Value> = rows.iter().map(connection_json).collect();
            print_rows(
                output,
                &rows,
                &[
                    "connection_id",
                    "user_id",
                    "source_ip",
                    "connected_at",
                    "last_seen",
                ],
            );
        }
        Command::Connections(Connections::Get { connection_id }) => {
            print_one(
                output,
                &connection_json(&client.connection(&connection_id).await?),
            );
        }
        Command::Connections(Connections::Count { tenant, user }) => {
            print_one(
                output,
                &json!({ "count": client.count_connections(&tenant, user.as_deref()).await? }),
            );
        }
        Command::Connections(Connections::Disconnect { connection_id }) => {
            print_one(
                output,
                &json!({ "closed": client.disconnect(&connection_id).await? }),
            );
        }
        Command::Send(send) => {
            let text = match (&send.data, &send.data_file) {
                (Some(data), _) => data.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?,
                (None, None) => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
                    text
                }
            };
            let data: Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("the message is not JSON: {e}")))?;
            let mut builder = client.send();
            builder = match (&send.connection, &send.user, &send.group, &send.tenant) {
                (Some(id), _, _, _) => builder.to_connection(id),
                (None, Some(user), _, Some(tenant)) => builder.to_user(tenant, user),
                (None, None, Some(group), Some(tenant)) => builder.to_group(tenant, group),
                (None, None, None, Some(tenant)) => builder.to_tenant(tenant),
                _ => {
                    return Err(usage(
                        "say who receives it: --connection, --user/--group with --tenant, or --tenant",
                    ));
                }
            };
            if let Some(topic) = &send.topic {
                builder = builder.topic(topic);
            }
            let report = builder.exclude(send.exclude.clone()).json(&data).await?;
            print_one(output, &report_json(&report));
        }
        Command::Requests(Requests::List { tenant, status }) => {
            let status = status.map(|s| match s {
                StatusArg::Queued => RequestStatus::Queued,
                StatusArg::Running => RequestStatus::Running,
                StatusArg::Completed => RequestStatus::Completed,
                StatusArg::Failed => RequestStatus::Failed,
                StatusArg::Cancelled => RequestStatus::Cancelled,
            });
            let rows: Vec<RequestInfo> =
                client.list_requests(&tenant, status).try_collect().await?;
            let rows: Vec<Value> = rows.iter().map(request_json).collect();
            print_rows(
                output,
                &rows,
                &[
                    "request_id",
                    "action",
                    "status",
                    "attempts",
                    "user_id",
                    "created_at",
                ],
            );
        }
        Command::Requests(Requests::Get { tenant, request_id }) => {
            print_one(
                output,
                &request_json(&client.request(&tenant, &request_id).await?),
            );
        }
        Command::Requests(Requests::Cancel { tenant, request_id }) => {
            print_one(
                output,
                &request_json(&client.cancel_request(&tenant, &request_id).await?),
            );
        }
        Command::Groups(Groups::ListMembers { tenant, group }) => {
            let rows: Vec<Connection> = client.group_members(&tenant, &group).try_collect().await?;
            let rows: Vec<Value> = rows.iter().map(connection_json).collect();
            print_rows(output, &rows, &["connection_id", "user_id", "connected_at"]);
        }
        Command::Groups(Groups::Count { tenant, group }) => {
            print_one(
                output,
                &json!({ "count": client.group_count(&tenant, &group).await? }),
            );
        }
        Command::Groups(Groups::Add(change)) => {
            let member = member(&change)?;
            print_one(
                output,
                &json!({ "added": client.group_add(&change.tenant, &change.group, member).await? }),
            );
        }
        Command::Groups(Groups::Remove(change)) => {
            let member = member(&change)?;
            print_one(
                output,
                &json!({ "removed": client.group_remove(&change.tenant, &change.group, member).await? }),
            );
        }
    }
    Ok(())
}

fn member(change: &GroupChange) -> Result<Member<'_>, Failure> {
    match (&change.connection, &change.user) {
        (Some(id), None) => Ok(Member::Connection(id)),
        (None, Some(user)) => Ok(Member::User(user)),
        _ => Err(usage("give --connection or --user")),
    }
}

fn mint(args: &TokenArgs, output: Output) -> Result<(), Failure> {
    use streamer_client::token::{Claims, mint_rs256};
    let pem = std::fs::read_to_string(&args.private_key)
        .map_err(|e| usage(format!("cannot read {}: {e}", args.private_key.display())))?;
    let permissions: Vec<&str> = args.permissions.iter().map(String::as_str).collect();
    let claims = Claims {
        iss: args.issuer.clone(),
        aud: args.audience.clone(),
        ..Claims::new(&args.sub, &args.tenant, &permissions, args.expires_in)
    };
    let token = mint_rs256(&pem, &claims).map_err(|e| usage(e.to_string()))?;
    match output {
        Output::Json => println!("{}", json!({ "token": token })),
        Output::Table => println!("{token}"),
    }
    Ok(())
}
