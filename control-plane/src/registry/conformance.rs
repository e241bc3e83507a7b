//! The registry contract as executable checks. Every backend runs these
//! (the embedded one in unit tests, DynamoDB against a real server), so all
//! backends behave the same.

use std::sync::Arc;

use super::{Connection, Registry, RegistryError, Scope, collect_all};

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
        connected_at_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_000_000,
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
}

/// A row reads back as written and removal is idempotent.
pub async fn insert_get_remove(registry: &dyn Registry, prefix: &str) {
    let tenant = format!("{prefix}t-basic");
    let conn = sample(&format!("{prefix}c1"), &tenant, "alice");
    registry.insert(conn.clone(), 0).await.expect("insert");
    let got = registry
        .get(&conn.connection_id)
        .await
        .expect("get")
        .expect("present");
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
