//! The registry contract as executable checks. Every backend runs these
//! (the embedded one in unit tests, DynamoDB against a real server), so all
//! backends behave the same.

use std::sync::Arc;

use super::{Connection, Registry, RegistryError, Scope, collect_all};

/// Wall-clock milliseconds: the backends under test read a [`crate::clock::Clock`]
/// started now, which agrees with the wall clock when time is not paused.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A connection with the given identity and otherwise typical fields.
pub fn sample(connection_id: &str, tenant_id: &str, user_id: &str) -> Connection {
    Connection {
        connection_id: connection_id.into(),
        tenant_id: tenant_id.into(),
        user_id: user_id.into(),
        endpoint: "https://abc123.execute-api.eu-west-1.amazonaws.com/prod".into(),
        permissions: vec![Arc::<str>::from("echo"), Arc::<str>::from("reports:*")].into(),
        source_ip: "203.0.113.7".into(),
        user_agent: "conformance/1.0".into(),
        connected_at_ms: now_ms(),
        last_seen_ms: now_ms(),
        expires_at_ms: 0,
        groups: Vec::new().into(),
        chunks: true,
        token_expires_ms: now_ms() + 3_600_000,
    }
}

/// Runs every check; `prefix` keeps ids of separate runs against a shared
/// store apart.
pub async fn run_all(registry: &dyn Registry, prefix: &str) {
    insert_get_remove(registry, prefix).await;
    duplicate_insert_is_refused(registry, prefix).await;
    quota_is_enforced(registry, prefix).await;
    pagination_visits_everything_once(registry, prefix).await;
    tenants_are_isolated(registry, prefix).await;
    expired_rows_are_invisible(registry, prefix).await;
    touch_refreshes_and_never_resurrects(registry, prefix).await;
    renew_replaces_permissions_and_token_end(registry, prefix).await;
    idle_rows_are_found_for_reconcile(registry, prefix).await;
    group_membership(registry, prefix).await;
    group_pages_and_cleanup(registry, prefix).await;
    tenants_are_listed_with_their_counts(registry, prefix).await;
}

/// `tenants` lists each tenant with rows once, with its live count, and
/// forgets a tenant whose last row is gone.
pub async fn tenants_are_listed_with_their_counts(registry: &dyn Registry, prefix: &str) {
    let a = format!("{prefix}t-list-a");
    let b = format!("{prefix}t-list-b");
    let id = |s: &str| format!("{prefix}{s}");
    for (conn, tenant) in [("l1", &a), ("l2", &a), ("l3", &b)] {
        registry
            .insert(sample(&id(conn), tenant, "u"), 0)
            .await
            .expect("insert");
    }
    let ours = |all: Vec<(String, u64)>| -> Vec<(String, u64)> {
        all.into_iter()
            .filter(|(tenant, _)| tenant.starts_with(&format!("{prefix}t-list-")))
            .collect()
    };
    assert_eq!(
        ours(registry.tenants(1000).await.expect("tenants")),
        vec![(a.clone(), 2), (b.clone(), 1)]
    );
    registry.remove(&id("l3")).await.expect("remove");
    assert_eq!(
        ours(registry.tenants(1000).await.expect("tenants")),
        vec![(a.clone(), 2)],
        "a tenant with no rows is not listed"
    );
    let limited = registry.tenants(1).await.expect("tenants");
    assert_eq!(limited.len(), 1, "at most `limit` tenants");
    for conn in ["l1", "l2"] {
        registry.remove(&id(conn)).await.expect("remove");
    }
}

/// Joining, leaving, the per-connection cap, and tenant scoping of names.
pub async fn group_membership(registry: &dyn Registry, prefix: &str) {
    let a = format!("{prefix}t-grp-a");
    let b = format!("{prefix}t-grp-b");
    let id = |s: &str| format!("{prefix}{s}");
    for (conn, tenant) in [("g1", &a), ("g2", &a), ("g3", &a), ("h1", &b)] {
        registry
            .insert(sample(&id(conn), tenant, "u"), 0)
            .await
            .expect("insert");
    }
    assert!(registry.join(&id("g1"), "room", 8).await.expect("join"));
    assert!(registry.join(&id("g2"), "room", 8).await.expect("join"));
    assert!(
        !registry
            .join(&id("g2"), "room", 8)
            .await
            .expect("join again"),
        "already a member"
    );
    assert!(
        registry
            .join(&id("h1"), "room", 8)
            .await
            .expect("join in b")
    );
    let room_a = Scope::Group {
        tenant_id: a.clone(),
        group: "room".into(),
    };
    let room_b = Scope::Group {
        tenant_id: b.clone(),
        group: "room".into(),
    };
    let members: Vec<String> = collect_all(registry, &room_a)
        .await
        .expect("list")
        .iter()
        .map(|c| c.connection_id.to_string())
        .collect();
    assert_eq!(
        members,
        vec![id("g1"), id("g2")],
        "the same name in another tenant is another group"
    );
    assert!(
        collect_all(registry, &room_a)
            .await
            .expect("list")
            .iter()
            .all(|c| *c.tenant_id == *a)
    );
    assert_eq!(registry.count(&room_b).await.expect("count"), 1);
    let g1 = registry.get(&id("g1")).await.expect("get").expect("row");
    assert_eq!(
        g1.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        vec!["room".to_owned()]
    );

    assert!(registry.leave(&id("g2"), "room").await.expect("leave"));
    assert!(
        !registry
            .leave(&id("g2"), "room")
            .await
            .expect("leave again")
    );
    assert_eq!(registry.count(&room_a).await.expect("count"), 1);

    assert_eq!(
        registry.join(&id("nobody"), "room", 8).await,
        Err(RegistryError::NotFound)
    );
    assert!(registry.join(&id("g3"), "x1", 2).await.expect("1st"));
    assert!(registry.join(&id("g3"), "x2", 2).await.expect("2nd"));
    assert_eq!(
        registry.join(&id("g3"), "x3", 2).await,
        Err(RegistryError::GroupLimit { limit: 2 })
    );
    assert!(
        !registry
            .join(&id("g3"), "x1", 2)
            .await
            .expect("rejoin at the cap"),
        "a member at the cap may re-join"
    );
    for conn in ["g1", "g2", "g3", "h1"] {
        registry.remove(&id(conn)).await.expect("cleanup");
    }
    assert_eq!(registry.count(&room_a).await.expect("count"), 0);
    assert_eq!(registry.count(&room_b).await.expect("count"), 0);
}

/// A group's members page like any listing, and membership dies with the
/// connection (no orphan is listed or counted).
pub async fn group_pages_and_cleanup(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-grp-big");
    let scope = Scope::Group {
        tenant_id: tenant.clone(),
        group: "lobby".into(),
    };
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = format!("{prefix}m{i:02}");
        registry
            .insert(sample(&id, &tenant, "u"), 0)
            .await
            .expect("insert");
        assert!(registry.join(&id, "lobby", 128).await.expect("join"));
        ids.push(id);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = registry
            .list(&scope, after.as_deref(), 5)
            .await
            .expect("list");
        pages += 1;
        seen.extend(page.items.iter().map(|c| c.connection_id.to_string()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen, ids);
    for id in &ids[..4] {
        let removed = registry
            .remove(id)
            .await
            .expect("remove")
            .expect("was registered");
        assert_eq!(
            removed.groups.len(),
            1,
            "the removed row says which groups to notify"
        );
    }
    assert_eq!(registry.count(&scope).await.expect("count"), 8);
    let left = collect_all(registry, &scope).await.expect("list");
    assert_eq!(left.len(), 8);
    assert!(
        left.iter()
            .all(|c| !ids[..4].contains(&c.connection_id.to_string()))
    );
    for id in &ids[4..] {
        registry.remove(id).await.expect("cleanup");
    }
    assert_eq!(registry.count(&scope).await.expect("count"), 0);
}

const MINUTE_MS: i64 = 60_000;

/// A row past its expiry (its `$disconnect` was lost and the TTL has not
/// deleted it yet) is not looked up, listed or counted, but is still a
/// reconcile candidate and can be removed.
pub async fn expired_rows_are_invisible(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-ttl");
    let mut old = sample(&format!("{prefix}old"), &tenant, "u");
    old.connected_at_ms = now_ms() - 3 * 60 * MINUTE_MS;
    old.last_seen_ms = old.connected_at_ms;
    registry.insert(old.clone(), 0).await.expect("insert");
    registry
        .insert(sample(&format!("{prefix}new"), &tenant, "u"), 0)
        .await
        .expect("insert");
    assert_eq!(registry.get(&old.connection_id).await.expect("get"), None);
    let scope = Scope::Tenant(tenant.clone());
    assert_eq!(registry.count(&scope).await.expect("count"), 1);
    let listed = collect_all(registry, &scope).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(&*listed[0].connection_id, format!("{prefix}new").as_str());
    let idle = registry
        .idle(now_ms() - MINUTE_MS, usize::MAX)
        .await
        .expect("idle");
    let stale = idle
        .iter()
        .find(|c| c.connection_id == old.connection_id)
        .expect("expired row is a candidate");
    assert!(stale.expired(now_ms()));
    assert!(
        registry
            .remove(&old.connection_id)
            .await
            .expect("remove")
            .is_some()
    );
    registry
        .remove(&format!("{prefix}new"))
        .await
        .expect("cleanup");
}

/// `touch` moves `last_seen` forward and cannot bring a removed row back.
/// `renew` (a `refresh` with a new token) replaces the permissions and the
/// token's end, reads back, and never recreates a removed row.
pub async fn renew_replaces_permissions_and_token_end(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-renew");
    let conn = sample(&format!("{prefix}renew"), &tenant, "u");
    registry.insert(conn.clone(), 0).await.expect("insert");
    let got = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.token_expires_ms, conn.token_expires_ms, "stored");
    let later = conn.token_expires_ms + 60_000;
    let fewer: Arc<[Arc<str>]> = vec![Arc::<str>::from("echo")].into();
    assert!(
        registry
            .renew(&conn.connection_id, fewer.clone(), later)
            .await
            .expect("renew")
    );
    let got = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((got.token_expires_ms, got.permissions), (later, fewer));
    registry.remove(&conn.connection_id).await.expect("remove");
    assert!(
        !registry
            .renew(&conn.connection_id, Vec::new().into(), later)
            .await
            .expect("renew gone")
    );
    assert!(
        registry
            .get(&conn.connection_id)
            .await
            .expect("get")
            .is_none(),
        "never recreated"
    );
}

pub async fn touch_refreshes_and_never_resurrects(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-touch");
    let mut conn = sample(&format!("{prefix}touch"), &tenant, "u");
    conn.last_seen_ms = now_ms() - 10 * MINUTE_MS;
    registry.insert(conn.clone(), 0).await.expect("insert");
    let before = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    let now = now_ms();
    assert!(
        registry
            .touch(&conn.connection_id, now)
            .await
            .expect("touch")
    );
    let after = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(after.last_seen_ms, now);
    assert!(after.expires_at_ms >= before.expires_at_ms);
    registry.remove(&conn.connection_id).await.expect("remove");
    assert!(
        !registry
            .touch(&conn.connection_id, now_ms())
            .await
            .expect("touch gone")
    );
    assert_eq!(registry.get(&conn.connection_id).await.expect("get"), None);
    assert_eq!(
        registry.count(&Scope::Tenant(tenant)).await.expect("count"),
        0
    );
}

/// Rows idle past a threshold are listed for the reconcile job; fresh ones
/// are not.
pub async fn idle_rows_are_found_for_reconcile(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-idle");
    let mut quiet = sample(&format!("{prefix}quiet"), &tenant, "u");
    quiet.last_seen_ms = now_ms() - 20 * MINUTE_MS;
    registry.insert(quiet.clone(), 0).await.expect("insert");
    registry
        .insert(sample(&format!("{prefix}busy"), &tenant, "u"), 0)
        .await
        .expect("insert");
    let idle = registry
        .idle(now_ms() - 15 * MINUTE_MS, usize::MAX)
        .await
        .expect("idle");
    let ours: Vec<_> = idle
        .iter()
        .filter(|c| *c.tenant_id == *tenant)
        .map(|c| c.connection_id.to_string())
        .collect();
    assert_eq!(ours, vec![format!("{prefix}quiet")]);
    registry
        .remove(&format!("{prefix}quiet"))
        .await
        .expect("cleanup");
    registry
        .remove(&format!("{prefix}busy"))
        .await
        .expect("cleanup");
}

/// A row reads back as written and removal is idempotent.
pub async fn insert_get_remove(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-basic");
    // A client that refused chunks reads back as one.
    let conn = Connection {
        chunks: false,
        ..sample(&format!("{prefix}c1"), &tenant, "alice")
    };
    registry.insert(conn.clone(), 0).await.expect("insert");
    let got = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    // The registry sets the expiry from its TTL policy (DynamoDB keeps it
    // in whole seconds).
    assert!(
        got.expires_at_ms > now_ms(),
        "a fresh row expires in the future"
    );
    let conn = Connection {
        expires_at_ms: got.expires_at_ms,
        ..conn
    };
    assert_eq!(got, conn);
    assert_eq!(
        registry
            .count(&Scope::Tenant(tenant.clone()))
            .await
            .expect("count"),
        1
    );
    let removed = registry.remove(&conn.connection_id).await.expect("remove");
    assert_eq!(removed.as_ref(), Some(&conn));
    assert_eq!(
        registry
            .remove(&conn.connection_id)
            .await
            .expect("remove again"),
        None
    );
    assert_eq!(registry.get(&conn.connection_id).await.expect("get"), None);
    assert_eq!(
        registry.count(&Scope::Tenant(tenant)).await.expect("count"),
        0
    );
}

/// A redelivered `$connect` cannot register the same id twice.
pub async fn duplicate_insert_is_refused(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-dup");
    let conn = sample(&format!("{prefix}dup"), &tenant, "bob");
    registry.insert(conn.clone(), 0).await.expect("insert");
    let again = sample(&format!("{prefix}dup"), &tenant, "mallory");
    assert_eq!(
        registry.insert(again, 0).await,
        Err(RegistryError::AlreadyExists)
    );
    let kept = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(&*kept.user_id, "bob");
    assert_eq!(
        registry.count(&Scope::Tenant(tenant)).await.expect("count"),
        1
    );
    registry.remove(&conn.connection_id).await.expect("cleanup");
}

/// The tenant quota holds, and frees up on removal.
pub async fn quota_is_enforced(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-quota");
    for i in 0..3 {
        registry
            .insert(sample(&format!("{prefix}q{i}"), &tenant, "u"), 3)
            .await
            .expect("under quota");
    }
    assert_eq!(
        registry
            .insert(sample(&format!("{prefix}q3"), &tenant, "u"), 3)
            .await,
        Err(RegistryError::QuotaExceeded { limit: 3 })
    );
    registry
        .insert(
            sample(
                &format!("{prefix}other"),
                &format!("{prefix}t-quota-2"),
                "u",
            ),
            3,
        )
        .await
        .expect("other tenant");
    registry
        .remove(&format!("{prefix}q0"))
        .await
        .expect("remove");
    registry
        .insert(sample(&format!("{prefix}q3"), &tenant, "u"), 3)
        .await
        .expect("room again");
    for id in ["q1", "q2", "q3", "other"] {
        registry
            .remove(&format!("{prefix}{id}"))
            .await
            .expect("cleanup");
    }
}

/// Paging a tenant and a user visits each connection exactly once, in id order.
pub async fn pagination_visits_everything_once(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-page");
    let mut expected = Vec::new();
    for i in 0..25 {
        let user = if i % 5 == 0 { "carol" } else { "dave" };
        let id = format!("{prefix}p{i:03}");
        registry
            .insert(sample(&id, &tenant, user), 0)
            .await
            .expect("insert");
        expected.push(id);
    }
    let scope = Scope::Tenant(tenant.clone());
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = registry
            .list(&scope, after.as_deref(), 7)
            .await
            .expect("list");
        assert!(page.items.len() <= 7);
        pages += 1;
        seen.extend(page.items.iter().map(|c| c.connection_id.to_string()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(
        pages >= 4,
        "25 rows at 7 a page take at least 4 pages, got {pages}"
    );
    assert_eq!(seen, expected);
    let carol = Scope::User {
        tenant_id: tenant.clone(),
        user_id: "carol".into(),
    };
    assert_eq!(registry.count(&carol).await.expect("count"), 5);
    let all = collect_all(registry, &carol).await.expect("collect");
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|c| &*c.user_id == "carol"));
    for id in expected {
        registry.remove(&id).await.expect("cleanup");
    }
    assert_eq!(registry.count(&scope).await.expect("count"), 0);
}

/// The same user id in two tenants is two different users.
pub async fn tenants_are_isolated(registry: &dyn Registry, prefix: &str) {
    let a = format!("{prefix}t-a");
    let b = format!("{prefix}t-b");
    registry
        .insert(sample(&format!("{prefix}ia"), &a, "erin"), 0)
        .await
        .expect("insert");
    registry
        .insert(sample(&format!("{prefix}ib"), &b, "erin"), 0)
        .await
        .expect("insert");
    let in_a = collect_all(
        registry,
        &Scope::User {
            tenant_id: a.clone(),
            user_id: "erin".into(),
        },
    )
    .await
    .expect("list");
    assert_eq!(in_a.len(), 1);
    assert_eq!(&*in_a[0].tenant_id, a.as_str());
    assert_eq!(
        registry
            .count(&Scope::Tenant(b.clone()))
            .await
            .expect("count"),
        1
    );
    registry
        .remove(&format!("{prefix}ia"))
        .await
        .expect("cleanup");
    registry
        .remove(&format!("{prefix}ib"))
        .await
        .expect("cleanup");
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryRegistry;

    #[tokio::test]
    async fn memory_registry_keeps_the_contract() {
        let registry = MemoryRegistry::new();
        super::run_all(&registry, "").await;
    }

    /// The same through the stack the app serves (instrumented).
    #[tokio::test]
    async fn memory_registry_keeps_the_contract_as_the_app_assembles_it() {
        let registry = crate::app::stores::registry_stack(
            std::sync::Arc::new(MemoryRegistry::new()),
            None,
            None,
        );
        super::run_all(registry.as_ref(), "").await;
    }

    #[tokio::test]
    async fn concurrent_inserts_respect_the_quota() {
        let registry = std::sync::Arc::new(MemoryRegistry::new());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let registry = registry.clone();
            tasks.push(tokio::spawn(async move {
                use super::Registry;
                registry
                    .insert(super::sample(&format!("c{i}"), "t", "u"), 10)
                    .await
                    .is_ok()
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += usize::from(task.await.expect("join"));
        }
        assert_eq!(ok, 10);
    }
}
