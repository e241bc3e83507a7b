//! `streamerctl`: the operator's command line for a Streamer control plane.
//!
//! Exit codes: 0 done; 1 the server refused for another reason; 2 bad usage
//! or input; 3 control plane unreachable or unavailable; 4 missing, bad or
//! insufficient token; 5 not found.

use std::{io::Read, process::ExitCode};

mod cli;
mod exit;
mod render;

use clap::Parser;
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use streamer_client::{Client, Connection, Member, RequestInfo, RequestStatus};

use crate::{
    cli::*,
    exit::{Failure, usage},
    render::*,
};

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
    let tls = streamer_client::ClientTls {
        ca: cli.ca.clone(),
        identity: cli.cert.clone().zip(cli.key.clone()),
    };
    let client = Client::connect_with(&cli.addr, &tls).await?;
    match &cli.token {
        Some(token) => Ok(client.with_token(token)?),
        None => Ok(client),
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
        Command::Connections(Connections::Tenants) => {
            let rows: Vec<Value> = client
                .tenants()
                .await?
                .into_iter()
                .map(|(tenant_id, connections)| json!({ "tenant_id": tenant_id, "connections": connections }))
                .collect();
            print_rows(output, &rows, &["tenant_id", "connections"]);
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
            // A key made here is printed first, so a try that fails can be
            // retried with it and still deliver once.
            let key = send
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("streamerctl-{:032x}", rand::random::<u128>()));
            if send.idempotency_key.is_none() {
                eprintln!("idempotency key: {key} (retry with --idempotency-key {key})");
            }
            let sent = builder
                .exclude(send.exclude.clone())
                .idempotency_key(&key)
                .json_sent(&data)
                .await?;
            let (report, position) = (sent.report, sent.position);
            let mut shown = report_json(&report);
            shown["idempotency_key"] = key.into();
            shown["replayed"] = sent.replayed.into();
            if let Some(position) = position {
                shown["stream"] = position.stream.into();
                shown["offset"] = position.offset.into();
                shown["epoch"] = position.epoch.into();
            }
            print_one(output, &shown);
        }
        Command::Requests(Requests::List { tenant, status }) => {
            let status = status.map(|s| match s {
                StatusArg::Queued => RequestStatus::Queued,
                StatusArg::Running => RequestStatus::Running,
                StatusArg::Completed => RequestStatus::Completed,
                StatusArg::Failed => RequestStatus::Failed,
                StatusArg::Cancelled => RequestStatus::Cancelled,
                StatusArg::Expired => RequestStatus::Expired,
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
        Command::History(History::Read {
            tenant,
            stream,
            since,
            limit,
        }) => {
            let rows: Vec<Value> = match limit {
                Some(limit) => {
                    client
                        .read_history(&tenant, &stream, since, limit)
                        .await?
                        .messages
                }
                None => {
                    client
                        .history(&tenant, &stream, since)
                        .try_collect()
                        .await?
                }
            }
            .iter()
            .map(history_json)
            .collect();
            print_rows(output, &rows, &["offset", "sent_at", "topic", "data"]);
        }
        Command::History(History::Position { tenant, stream }) => {
            let position = client.stream_position(&tenant, &stream).await?;
            print_one(
                output,
                &json!({ "stream": position.stream, "offset": position.offset, "epoch": position.epoch }),
            );
        }
        Command::Groups(Groups::List { tenant }) => {
            let (groups, truncated) = client.groups(&tenant).await?;
            if truncated {
                eprintln!(
                    "the tenant has more connections than the server walks: some groups may be missing"
                );
            }
            let rows: Vec<Value> = groups
                .into_iter()
                .map(|(group, members)| json!({ "group": group, "members": members }))
                .collect();
            print_rows(output, &rows, &["group", "members"]);
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
