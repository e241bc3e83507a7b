//! Delivery only to this deployment's own Management API endpoints
//! (`STREAMER_MANAGEMENT_ENDPOINTS`). A connection's endpoint comes from its
//! `$connect` event (or an imported row): without this check, whoever holds
//! the edge credential could name any host, and every broadcast to that
//! tenant would send the tenant's data there, signed with the deployment's
//! credentials. Connects naming another endpoint are refused before they
//! are registered; this decorator is the second line, for rows written
//! before the list existed: no call to another endpoint is ever made (a
//! send counts them failed; the reconcile job, finding them unreachable,
//! removes them after `STREAMER_RECONCILE_UNREACHABLE_SECS`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Attempt, BatchAttempt, Delivery, DeliveryError, Endpoint, Outcome, PreparedFrame};
use crate::{
    config::ManagementEndpoints,
    metrics::{OperationLabel, metrics},
};

/// A [`Delivery`] that calls only the allowed endpoints.
pub struct OwnEndpoints {
    inner: Arc<dyn Delivery>,
    allowed: ManagementEndpoints,
}

impl std::fmt::Debug for OwnEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnEndpoints")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl OwnEndpoints {
    /// `inner`, calling only endpoints `allowed` names.
    pub fn new(inner: Arc<dyn Delivery>, allowed: ManagementEndpoints) -> Self {
        Self { inner, allowed }
    }

    fn allows(&self, endpoint: &str, operation: &'static str) -> bool {
        let allowed = self.allowed.allows(endpoint);
        if !allowed {
            metrics()
                .foreign_endpoints
                .get_or_create(&OperationLabel { operation })
                .inc();
            tracing::warn!(
                endpoint,
                operation,
                "not calling a Management API endpoint outside STREAMER_MANAGEMENT_ENDPOINTS"
            );
        }
        allowed
    }
}

fn refused(endpoint: &str) -> DeliveryError {
    DeliveryError(format!(
        "{endpoint} is not one of this deployment's Management API endpoints"
    ))
}

#[async_trait]
impl Delivery for OwnEndpoints {
    async fn post(
        &self,
        endpoint: &Endpoint,
        connection_id: &str,
        frame: &PreparedFrame,
    ) -> Attempt {
        if !self.allows(&endpoint.raw, "post") {
            return Attempt::Done(Outcome::Failed);
        }
        self.inner.post(endpoint, connection_id, frame).await
    }

    async fn batch_limit(&self, endpoint: &Endpoint) -> usize {
        // Not even asked: a foreign endpoint hears nothing from us.
        if !self.allowed.allows(&endpoint.raw) {
            return 0;
        }
        self.inner.batch_limit(endpoint).await
    }

    async fn post_batch(
        &self,
        endpoint: &Endpoint,
        connection_ids: &[Arc<str>],
        frame: &PreparedFrame,
    ) -> BatchAttempt {
        if !self.allows(&endpoint.raw, "post") {
            return BatchAttempt::Whole(Attempt::Done(Outcome::Failed));
        }
        self.inner.post_batch(endpoint, connection_ids, frame).await
    }

    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError> {
        if !self.allows(endpoint, "delete") {
            return Err(refused(endpoint));
        }
        self.inner.delete(endpoint, connection_id).await
    }

    async fn is_connected(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> Result<bool, DeliveryError> {
        if !self.allows(endpoint, "get") {
            return Err(refused(endpoint));
        }
        self.inner.is_connected(endpoint, connection_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::fake::FakeGateway;

    #[test]
    fn a_wildcard_admits_one_label_of_its_zone_and_nothing_else() {
        let allowed = ManagementEndpoints::Only(vec![
            ManagementEndpoints::normalise("https://*.gateways.internal:8443/prod").expect("ok"),
        ]);
        for (raw, expected) in [
            ("https://gw-1.gateways.internal:8443/prod", true),
            ("https://GW-2.gateways.internal:8443/prod/", true),
            ("https://a.b.gateways.internal:8443/prod", false),
            ("https://.gateways.internal:8443/prod", false),
            ("https://gw.gateways.internal:8443/other", false),
            ("http://gw.gateways.internal:8443/prod", false),
            ("https://gw.gateways.internal.evil:8443/prod", false),
            ("https://gw.gateways.internal:9443/prod", false),
            ("https://evil/x.gateways.internal:8443/prod", false),
        ] {
            assert_eq!(allowed.allows(raw), expected, "{raw}");
        }
    }

    #[tokio::test]
    async fn only_the_listed_endpoints_are_called() {
        let gateway = Arc::new(FakeGateway::default());
        gateway.offer_batches(10);
        let own = "https://abc.execute-api.eu-west-1.amazonaws.com/prod";
        let guarded = OwnEndpoints::new(
            gateway.clone(),
            ManagementEndpoints::Only(vec![own.to_owned()]),
        );
        let frame = PreparedFrame::new("x");
        for (raw, expected) in [
            (own, true),
            (
                "https://ABC.execute-api.eu-west-1.amazonaws.com/prod/",
                true,
            ),
            ("https://evil.example/prod", false),
            ("http://abc.execute-api.eu-west-1.amazonaws.com/prod", false),
            (
                "https://abc.execute-api.eu-west-1.amazonaws.com/other",
                false,
            ),
            (
                "https://abc.execute-api.eu-west-1.amazonaws.com@evil/prod",
                false,
            ),
        ] {
            let endpoint = Endpoint::parse(raw);
            let called_before = gateway.calls();
            if let Some(endpoint) = endpoint {
                let attempt = guarded.post(&endpoint, "c1", &frame).await;
                assert_eq!(
                    attempt != Attempt::Done(Outcome::Failed),
                    expected,
                    "{raw}: {attempt:?}"
                );
                // The batch call too: a foreign endpoint is neither asked
                // what it offers nor sent a batch.
                assert_eq!(
                    guarded.batch_limit(&endpoint).await,
                    if expected { 10 } else { 0 },
                    "{raw}"
                );
                let batch = guarded
                    .post_batch(&endpoint, &[Arc::from("c1"), Arc::from("c2")], &frame)
                    .await;
                assert_eq!(
                    batch != BatchAttempt::Whole(Attempt::Done(Outcome::Failed)),
                    expected,
                    "{raw}: {batch:?}"
                );
            }
            assert_eq!(
                guarded.is_connected(raw, "c1").await.is_ok(),
                expected,
                "{raw}"
            );
            assert_eq!(gateway.calls() > called_before, expected, "{raw}");
        }
    }
}
