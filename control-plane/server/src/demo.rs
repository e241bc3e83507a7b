//! The demo actions `dev` serves with an in-process processor, built with
//! the same processor SDK (and the same gRPC Work stream) as any service:
//! `echo_async` and the original system's `generate_report`.

use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Value, json};
use streamer_client::processor::{ActionSpec, Job, JobError, Processor, Progress};

/// The payload schema of `generate_report` (dates as `YYYY-MM-DD`, as the
/// original demo client sends, or RFC 3339).
pub fn report_schema() -> Value {
    let date = json!({
        "type": "string",
        "pattern": r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?$"
    });
    json!({
        "type": "object",
        "required": ["start_date", "end_date", "format", "report_type"],
        "properties": {
            "start_date": date,
            "end_date": date,
            "format": { "enum": ["pdf", "csv", "excel"] },
            "report_type": { "enum": ["monthly", "quarterly", "annual"] },
            "include_data": { "type": "boolean" }
        }
    })
}

fn date_of(value: &Value) -> Option<NaiveDate> {
    let text = value.as_str()?;
    NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()
}

async fn steps(
    progress: &Progress,
    job: &Job,
    total: Duration,
    labels: &[&str],
) -> Result<(), JobError> {
    let pause = total / u32::try_from(labels.len()).unwrap_or(1).max(1);
    for (i, label) in labels.iter().enumerate() {
        if job.is_cancelled() {
            return Err(JobError::fatal("PROCESSING_FAILED", "cancelled"));
        }
        let percentage = u32::try_from((i * 100) / labels.len()).unwrap_or(0);
        progress
            .report(
                percentage,
                label,
                Some(json!({ "step": i + 1, "of": labels.len() })),
            )
            .await;
        tokio::time::sleep(pause).await;
    }
    progress.report(100, "done", None).await;
    Ok(())
}

/// Longest report whose rows the demo renders (about 5 MB of CSV).
const MAX_REPORT_DAYS: i64 = 4_000;

/// The report's rows as CSV, one per hour: `hour,region,amount,orders`.
/// Deterministic, so a test can check every byte arrived (row `i` has
/// region `i % 7`, amount `(i * 7919) % 100000` cents, orders `i % 1000`).
pub fn report_rows(start: NaiveDate, days: i64) -> String {
    let mut out = String::from("hour,region,amount,orders\n");
    let Some(first) = start.and_hms_opt(0, 0, 0) else {
        return out;
    };
    for i in 0..days.clamp(0, MAX_REPORT_DAYS) * 24 {
        let hour = first + chrono::Duration::hours(i);
        let cents = (i * 7919) % 100_000;
        out.push_str(&format!(
            "{}Z,region-{},{}.{:02},{}\n",
            hour.format("%Y-%m-%dT%H:%M:%S"),
            i % 7,
            cents / 100,
            cents % 100,
            i % 1000
        ));
    }
    out
}

/// The demo processor for the control plane at `addr`.
pub fn processor(
    addr: &str,
    token: &str,
    tls: streamer_client::ClientTls,
    duration: Duration,
) -> Processor {
    Processor::new(addr, token)
        .tls(tls)
        .name("dev-demo")
        .concurrency(8)
        .handle(
            ActionSpec::new("echo_async"),
            move |job, progress| async move {
                steps(
                    &progress,
                    &job,
                    duration,
                    &["received", "thinking", "answering"],
                )
                .await?;
                Ok(job.payload.clone())
            },
        )
        .handle(
            ActionSpec::new("generate_report").schema(report_schema()),
            move |job, progress| async move {
                let (Some(start), Some(end)) = (
                    date_of(&job.payload["start_date"]),
                    date_of(&job.payload["end_date"]),
                ) else {
                    return Err(JobError::fatal(
                        "VALIDATION_ERROR",
                        "start_date and end_date must be dates",
                    ));
                };
                if start > end {
                    return Err(JobError::fatal(
                        "VALIDATION_ERROR",
                        "start_date must not be after end_date",
                    ));
                }
                steps(
                    &progress,
                    &job,
                    duration,
                    &["collecting data", "aggregating", "rendering", "storing"],
                )
                .await?;
                let days = (end - start).num_days() + 1;
                let mut report = json!({
                    "report_type": job.payload["report_type"],
                    "format": job.payload["format"],
                    "start_date": job.payload["start_date"],
                    "end_date": job.payload["end_date"],
                    "days": days,
                    "rows": days * 24,
                    "generated_at": streamer_proto::client::timestamp_now(),
                });
                if job.payload["include_data"] == json!(true) {
                    report["data"] = json!(report_rows(start, days));
                }
                Ok(report)
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_schema_takes_what_the_original_client_sends() {
        let schema = jsonschema::validator_for(&report_schema()).expect("schema");
        let ok = json!({"start_date":"2024-01-01","end_date":"2024-01-31","format":"pdf","report_type":"monthly"});
        assert!(schema.is_valid(&ok));
        let rfc = json!({"start_date":"2024-01-01T00:00:00Z","end_date":"2024-03-31T23:59:59+02:00","format":"csv","report_type":"quarterly"});
        assert!(schema.is_valid(&rfc));
        for bad in [
            json!({"start_date":"01/01/2024","end_date":"2024-01-31","format":"pdf","report_type":"monthly"}),
            json!({"start_date":"2024-01-01","end_date":"2024-01-31","format":"docx","report_type":"monthly"}),
            json!({"start_date":"2024-01-01","end_date":"2024-01-31","format":"pdf","report_type":"weekly"}),
            json!({"start_date":"2024-01-01","format":"pdf","report_type":"monthly"}),
        ] {
            assert!(!schema.is_valid(&bad), "{bad}");
        }
        assert_eq!(
            date_of(&json!("2024-02-29T10:00:00Z")),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
    }
}
