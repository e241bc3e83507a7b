//! `streamer-rollout`: the rollout controller, as a Lambda (an EventBridge
//! schedule sends ticks; operators invoke it with `{"command": "pause"}`
//! and the like) or, outside Lambda, as a command for operators:
//! `streamer-rollout start|pause|resume|abort|status|tick`. Both print the
//! state as JSON. Settings: `STREAMER_ROLLOUT_*` (see `aws::ENV`).

use serde_json::{Value, json};
use streamer_rollout::{
    Command,
    aws::{Aws, Settings},
};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn command_of(name: &str) -> Option<Command> {
    serde_json::from_value(json!(name)).ok()
}

async fn controller() -> anyhow::Result<Aws> {
    let settings = Settings::from_env(|name| std::env::var(name).ok())
        .map_err(|problems| anyhow::anyhow!("configuration error:\n  {}", problems.join("\n  ")))?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Ok(Aws::from_sdk(&sdk, settings))
}

/// One event: a command when it names one, else a tick.
async fn handle(aws: &Aws, event: &Value) -> anyhow::Result<Value> {
    let rollout = match event.get("command").and_then(Value::as_str) {
        Some(name) => {
            let command = command_of(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown command {name:?}: use start, pause, resume, abort or status"
                )
            })?;
            aws.run(command, now_ms()).await?
        }
        None => aws.tick(now_ms()).await?,
    };
    Ok(serde_json::to_value(rollout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let aws = controller().await?;
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        let aws = &aws;
        return lambda_runtime::run(lambda_runtime::service_fn(
            move |event: lambda_runtime::LambdaEvent<Value>| async move {
                handle(aws, &event.payload)
                    .await
                    .map_err(|e| lambda_runtime::Error::from(e.to_string()))
            },
        ))
        .await
        .map_err(|e| anyhow::anyhow!(e));
    }
    let arg = std::env::args().nth(1).unwrap_or_default();
    let event = match arg.as_str() {
        "tick" => json!({}),
        name if command_of(name).is_some() => json!({ "command": name }),
        _ => anyhow::bail!("usage: streamer-rollout start|pause|resume|abort|status|tick"),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&handle(&aws, &event).await?)?
    );
    Ok(())
}
