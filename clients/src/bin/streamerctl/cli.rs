//! The command line: every subcommand, argument and environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "streamerctl",
    version,
    about = "Operate a Streamer control plane"
)]
pub(crate) struct Cli {
    /// Control plane gRPC address.
    #[arg(
        long,
        env = "STREAMER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) addr: String,
    /// Bearer token (admin or service).
    #[arg(long, env = "STREAMER_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The CA (PEM file) that signed the control plane's certificate, for
    /// an `https://` address (default: the platform's roots).
    #[arg(long, env = "STREAMER_CA", global = true)]
    pub(crate) ca: Option<String>,
    /// A client certificate (PEM file), where the control plane requires
    /// one (mutual TLS); with `--key`.
    #[arg(long, env = "STREAMER_CLIENT_CERT", global = true, requires = "key")]
    pub(crate) cert: Option<String>,
    /// The client certificate's private key (PEM file).
    #[arg(long, env = "STREAMER_CLIENT_KEY", global = true, requires = "cert")]
    pub(crate) key: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Stream history (streams matching STREAMER_HISTORY).
    #[command(subcommand)]
    History(History),
    /// Mint a development client token (RS256) from a private key.
    Token(TokenArgs),
}

#[derive(Subcommand)]
pub(crate) enum Connections {
    /// List a tenant's (or a user's) connections.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Show one connection.
    Get {
        /// API Gateway ids may start with `-`: taken as the id, not a flag.
        #[arg(allow_hyphen_values = true)]
        connection_id: String,
    },
    /// Count a tenant's (or a user's) connections.
    Count {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Close a connection and forget it.
    Disconnect {
        /// API Gateway ids may start with `-`: taken as the id, not a flag.
        #[arg(allow_hyphen_values = true)]
        connection_id: String,
    },
    /// The tenants with connections, and how many each has.
    Tenants,
}

#[derive(Args)]
pub(crate) struct Send {
    /// One connection.
    #[arg(long, conflicts_with_all = ["user", "group"], allow_hyphen_values = true)]
    pub(crate) connection: Option<String>,
    /// Every connection of this user (with --tenant).
    #[arg(long, requires = "tenant", conflicts_with = "group")]
    pub(crate) user: Option<String>,
    /// Every member of this group (with --tenant).
    #[arg(long, requires = "tenant")]
    pub(crate) group: Option<String>,
    /// The tenant (alone: every connection of it).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// A topic for the frame.
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Connection ids to leave out.
    #[arg(long)]
    pub(crate) exclude: Vec<String>,
    /// The message as JSON text.
    #[arg(long, conflicts_with = "data_file")]
    pub(crate) data: Option<String>,
    /// Read the JSON message from this file (otherwise from stdin).
    #[arg(long)]
    pub(crate) data_file: Option<PathBuf>,
    /// Deliver once however often this command is retried within the
    /// server's window: reuse the key a failed try printed. Without it a
    /// new key is made and printed (`idempotency_key`).
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StatusArg {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

#[derive(Subcommand)]
pub(crate) enum Requests {
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
pub(crate) enum Groups {
    /// A tenant's groups and their member counts.
    List {
        #[arg(long)]
        tenant: String,
    },
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

#[derive(Subcommand)]
pub(crate) enum History {
    /// The retained messages of a stream (`tenant`, `user:<id>`,
    /// `group:<name>`) after an offset.
    Read {
        #[arg(long)]
        tenant: String,
        stream: String,
        /// Messages after this offset (0: from the oldest retained).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many messages (all retained ones when absent).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A stream's latest offset and epoch.
    Position {
        #[arg(long)]
        tenant: String,
        stream: String,
    },
}

#[derive(Args)]
pub(crate) struct GroupChange {
    #[arg(long)]
    pub(crate) tenant: String,
    pub(crate) group: String,
    #[arg(
        long,
        conflicts_with = "user",
        required_unless_present = "user",
        allow_hyphen_values = true
    )]
    pub(crate) connection: Option<String>,
    #[arg(long)]
    pub(crate) user: Option<String>,
}

#[derive(Args)]
pub(crate) struct TokenArgs {
    /// PEM private key (RSA, PKCS#8 or PKCS#1).
    #[arg(long)]
    pub(crate) private_key: PathBuf,
    /// The user (sub).
    #[arg(long)]
    pub(crate) sub: String,
    /// The tenant (tenant_id).
    #[arg(long)]
    pub(crate) tenant: String,
    /// A permission to grant (repeatable).
    #[arg(long = "permission")]
    pub(crate) permissions: Vec<String>,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600)]
    pub(crate) expires_in: u64,
    /// iss claim.
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// aud claim.
    #[arg(long)]
    pub(crate) audience: Option<String>,
}
