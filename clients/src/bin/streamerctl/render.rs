//! Output: human tables by default, one JSON document with `--output json`.

use serde_json::{Value, json};
use streamer_client::{Connection, DeliveryReport, HistoryMessage, RequestInfo, RequestStatus};

use crate::cli::Output;

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(crate) fn connection_json(c: &Connection) -> Value {
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

pub(crate) fn status_name(status: i32) -> &'static str {
    match RequestStatus::try_from(status).unwrap_or(RequestStatus::Unspecified) {
        RequestStatus::Queued => "queued",
        RequestStatus::Running => "running",
        RequestStatus::Completed => "completed",
        RequestStatus::Failed => "failed",
        RequestStatus::Cancelled => "cancelled",
        RequestStatus::Expired => "expired",
        RequestStatus::Unspecified => "unknown",
    }
}

pub(crate) fn request_json(r: &RequestInfo) -> Value {
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

pub(crate) fn history_json(m: &HistoryMessage) -> Value {
    json!({
        "offset": m.offset,
        "sent_at": ts(&m.sent_at),
        "topic": if m.topic.is_empty() { Value::Null } else { m.topic.clone().into() },
        "data": serde_json::from_str::<Value>(&m.data_json).unwrap_or(Value::Null),
    })
}

pub(crate) fn report_json(r: &DeliveryReport) -> Value {
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
pub(crate) fn print_rows(output: Output, rows: &[Value], columns: &[&str]) {
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

pub(crate) fn print_one(output: Output, value: &Value) {
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
