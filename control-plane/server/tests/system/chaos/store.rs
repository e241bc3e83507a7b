//! DynamoDB throttling and outage, between the control plane and the store:
//! operations succeed through retries or fail promptly with 503 /
//! `SERVICE_UNAVAILABLE`; service resumes soon after the store returns; one
//! reconcile pass leaves rows, counters and memberships consistent.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::{
    faults::{HttpFaults, HttpMode, Injected},
    moto::{Tables, as_vars, client},
    prelude::*,
};

/// A connect, an echo and a join through the faults: what succeeded, what
/// failed promptly. Panics on a slow failure or a wrong error.
async fn try_client(dev: &Dev, user: &str, tally: &mut HashMap<&'static str, u32>) -> Option<Ws> {
    let url = format!(
        "{}?token={}",
        dev.ws_url(),
        token(user, "flaky", &["group:join:*"])
    );
    let started = Instant::now();
    let mut ws = match tokio_tungstenite::connect_async(&url).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert!(started.elapsed() < Duration::from_secs(8), "prompt 503");
            *tally.entry("connect refused 503").or_default() += 1;
            return None;
        }
        Err(other) => panic!("{other:?}"),
    };
    *tally.entry("connected").or_default() += 1;
    for frame in [
        json!({"id": "e", "action": "echo", "payload": 1}),
        json!({"id": "j", "action": "join", "payload": {"group": "g"}}),
    ] {
        let started = Instant::now();
        send_json(&mut ws, &frame).await;
        let answer = recv(&mut ws).await;
        assert!(started.elapsed() < Duration::from_secs(8), "prompt answer");
        match answer["type"].as_str() {
            Some("response") => *tally.entry("message answered").or_default() += 1,
            _ => {
                assert_eq!(answer["error"]["code"], "SERVICE_UNAVAILABLE", "{answer}");
                *tally.entry("message SERVICE_UNAVAILABLE").or_default() += 1;
            }
        }
    }
    Some(ws)
}

/// Closes `ws` and waits until the gateway has seen the close.
async fn leave(mut ws: Ws) {
    use futures_util::StreamExt;
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// The table's rows, counters and membership items, read straight from the
/// store: (live rows, counter, orphaned memberships).
async fn store_state(table: &str, tenant: &str) -> (usize, i64, usize) {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client()
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        items.extend(page.items().iter().cloned());
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => break,
        }
    }
    let text = |item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>, name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    let rows: HashSet<String> = items
        .iter()
        .filter(|i| text(i, "tenant_id") == tenant && !text(i, "connection_id").contains('#'))
        .map(|i| text(i, "connection_id"))
        .collect();
    let counter = items
        .iter()
        .find(|i| text(i, "connection_id") == format!("tenant#{tenant}"))
        .and_then(|i| i.get("active"))
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let orphans = items
        .iter()
        .filter(|i| text(i, "connection_id").starts_with("member#"))
        .filter(|i| text(i, "m_tenant") == tenant && !rows.contains(&text(i, "member_id")))
        .count();
    (rows.len(), counter, orphans)
}

#[tokio::test]
async fn chaos_store_throttling_and_a_10_s_outage_fail_promptly_recover_fast_and_reconcile_exactly()
{
    let proxy = HttpFaults::before_moto().await;
    let tables = Tables::new("chaos-store");
    tables.create().await;
    let table = tables.connections.clone();
    // The control plane reaches the store through the proxy.
    let mut env = tables.env_at(&proxy.url());
    env.push(("STREAMER_RECONCILE_IDLE_SECS", "0".into()));
    env.push(("STREAMER_RECONCILE_INTERVAL_SECS", "0".into()));
    // Rows a late write left behind are seconds old when reconcile runs.
    env.push((TRUST_410_AT_ONCE.0, TRUST_410_AT_ONCE.1.into()));
    env.push(("STREAMER_METRICS_ADDR", "127.0.0.1:0".into()));
    let vars = as_vars(&env);
    let dev = Dev::start(&vars).await;

    let mut live = Vec::new();
    let mut tally = HashMap::new();
    for i in 0..5 {
        live.extend(try_client(&dev, &format!("calm-{i}"), &mut tally).await);
    }
    assert_eq!(live.len(), 5, "no faults yet: {tally:?}");

    // 30% of store calls throttled.
    for (percent, answer) in [
        (30, Injected::dynamodb_throughput_exceeded()),
        (30, Injected::dynamodb_throttling()),
    ] {
        proxy.set(HttpMode::Fail { percent, answer });
        let mut tally = HashMap::new();
        for i in 0..10 {
            live.extend(
                try_client(
                    &dev,
                    &format!("throttled-{percent}-{i}-{}", live.len()),
                    &mut tally,
                )
                .await,
            );
        }
        let sent = broadcast(dev.grpc_channel(), ADMIN_TOKEN)
            .send(tenant_target("flaky", json!("under throttling")))
            .await;
        println!(
            "injected: {percent}% of DynamoDB calls throttled ({} injected, {} forwarded); outcomes {tally:?}; broadcast {}",
            proxy.injected(),
            proxy.forwarded(),
            match &sent {
                Ok(r) => format!(
                    "delivered {}",
                    r.get_ref().report.as_ref().map_or(0, |r| r.delivered)
                ),
                Err(s) => format!("failed {:?}", s.code()),
            }
        );
        let ok = tally.get("connected").copied().unwrap_or(0)
            + tally.get("message answered").copied().unwrap_or(0);
        let failed = tally.get("connect refused 503").copied().unwrap_or(0)
            + tally
                .get("message SERVICE_UNAVAILABLE")
                .copied()
                .unwrap_or(0);
        assert!(
            ok >= 3 * failed,
            "retries carry most operations through: {tally:?}"
        );
        if let Err(status) = sent {
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
    }

    // The store is gone for 10 s.
    proxy.set(HttpMode::Blackhole);
    let outage = Instant::now();
    let mut tally = HashMap::new();
    assert!(
        try_client(&dev, "in-the-outage", &mut tally)
            .await
            .is_none()
    );
    println!(
        "injected: DynamoDB blackholed; a connect during it: {tally:?} after {:?}",
        outage.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    proxy.set(HttpMode::Pass);
    let back = Instant::now();
    let back_online = std::sync::Mutex::new(Vec::new());
    eventually("service resumes", || async {
        let mut tally = HashMap::new();
        match try_client(&dev, "after-the-outage", &mut tally).await {
            Some(ws) => {
                back_online.lock().expect("lock").push(ws);
                true
            }
            None => false,
        }
    })
    .await;
    live.append(&mut back_online.lock().expect("lock"));
    let resumed = back.elapsed();
    println!("checked: a connect succeeded {resumed:?} after the store returned");
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");

    // Half the clients leave; once the control plane has handled each of
    // their disconnects (a pass cannot be exact about a removal still in
    // flight), one reconcile pass.
    let keep = live.len() / 2;
    let disconnects = || async {
        dev.metrics_now()
            .await
            .get("streamer_disconnects_total")
            .copied()
            .unwrap_or(0.0)
    };
    let before = disconnects().await;
    let leaving = live.split_off(keep);
    let left = leaving.len() as f64;
    for ws in leaving {
        leave(ws).await;
    }
    eventually("the control plane handled every disconnect", || async {
        disconnects().await >= before + left
    })
    .await;
    let report = admin(dev.grpc_channel(), ADMIN_TOKEN)
        .run_reconcile(v1::RunReconcileRequest {})
        .await
        .reported();
    let (rows, counter, orphans) = store_state(&table, "flaky").await;
    println!(
        "checked after one reconcile pass ({report:?}): {rows} rows for {keep} live clients, counter {counter}, {orphans} orphaned memberships"
    );
    assert_eq!(rows, keep, "only the live clients' rows");
    assert_eq!(
        counter,
        i64::try_from(rows).expect("rows"),
        "the counter equals the rows"
    );
    assert_eq!(orphans, 0);
}

/// The README's store-outage row, as a user of `dev` on DynamoDB saw it:
/// 40 clients in a room, and 10 of them leave while the store applies
/// writes but their answers are lost (the row's delete lands; the tenant
/// counter's decrement and the membership cleanup never run). Afterwards
/// the counter says 40 for 30 rows and 10 memberships are orphaned, until
/// one `RunReconcile` repairs them: counter = rows = live clients, no
/// orphans, and the repair's figures in the report. (Once, the
/// instrumentation decorator did not forward `repair` and this pass did
/// nothing.)
#[tokio::test]
async fn chaos_writes_whose_answers_are_lost_while_clients_leave_are_repaired_by_one_reconcile() {
    let proxy = HttpFaults::before_moto().await;
    let tables = Tables::new("chaos-lost");
    tables.create().await;
    let table = tables.connections.clone();
    let mut env = tables.env_at(&proxy.url());
    env.push(("STREAMER_RECONCILE_IDLE_SECS", "0".into()));
    env.push(("STREAMER_RECONCILE_INTERVAL_SECS", "0".into()));
    env.push(("STREAMER_METRICS_ADDR", "127.0.0.1:0".into()));
    let vars = as_vars(&env);
    let dev = Dev::start(&vars).await;

    let mut live = Vec::new();
    let mut tally = HashMap::new();
    for i in 0..40 {
        live.extend(try_client(&dev, &format!("member-{i}"), &mut tally).await);
    }
    assert_eq!(live.len(), 40, "no faults yet: {tally:?}");
    assert_eq!(store_state(&table, "flaky").await, (40, 40, 0));

    let remove_errors = || async {
        dev.metrics_now()
            .await
            .get("streamer_store_errors_total{operation=\"remove\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = remove_errors().await;
    proxy.set(HttpMode::LoseAnswers);
    let leaving = live.split_off(30);
    for ws in leaving {
        leave(ws).await;
    }
    eventually("each of the 10 disconnects failed at the store", || async {
        remove_errors().await >= before + 10.0
    })
    .await;
    proxy.set(HttpMode::Pass);
    let (rows, counter, orphans) = store_state(&table, "flaky").await;
    println!(
        "injected: answers lost while 10 of 40 clients left ({} calls answered 500 after being applied); left behind: {rows} rows, counter {counter}, {orphans} orphaned memberships",
        proxy.injected()
    );
    assert_eq!(
        (rows, counter, orphans),
        (30, 40, 10),
        "the drift the repair must undo"
    );

    let report = admin(dev.grpc_channel(), ADMIN_TOKEN)
        .run_reconcile(v1::RunReconcileRequest {})
        .await
        .reported();
    let (rows, counter, orphans) = store_state(&table, "flaky").await;
    let counted = connections(dev.grpc_channel(), ADMIN_TOKEN)
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "flaky".into(),
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    println!(
        "checked after one reconcile pass: repaired {} counter(s), removed {} orphaned membership(s), restored {}; {rows} rows, counter {counter}, {orphans} orphans, CountConnections {counted}, 30 live clients",
        report.counters_fixed, report.orphans_removed, report.memberships_restored
    );
    assert_eq!((report.counters_fixed, report.orphans_removed), (1, 10));
    assert_eq!((rows, counter, orphans, counted), (30, 30, 0, 30));
    drop(live);
}
