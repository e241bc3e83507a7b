//! The server API end to end against the real `dev` binary: broadcast to
//! every kind of target, connections the gateway forgot, paged queries that
//! stay in their tenant, and gRPC callers kept to their role and tenant.

use serde_json::json;
use streamer_proto::v1;
use streamer_test_kit::prelude::*;

#[tokio::test]
async fn broadcast_to_tenant_user_and_connection_with_exclusions() {
    let dev = Dev::start(&[]).await;
    let mut alice1 = dev.connect(&token("alice", "acme", &[])).await;
    let mut alice2 = dev.connect(&token("alice", "acme", &[])).await;
    let mut bob = dev.connect(&token("bob", "acme", &[])).await;
    let mut eve = dev.connect(&token("alice", "globex", &[])).await;
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);

    let report = broadcast
        .send(tenant_target("acme", json!({"n": 1})))
        .await
        .reported();
    assert_eq!(
        (
            report.targeted,
            report.delivered,
            report.gone,
            report.failed
        ),
        (3, 3, 0, 0)
    );
    for ws in [&mut alice1, &mut alice2, &mut bob] {
        let frame = recv(ws).await;
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["data"], json!({"n": 1}));
        assert!(frame["timestamp"].is_string());
    }
    nothing_pending(&mut eve).await;

    // To a user: alice of acme, not alice of globex; structured data and a topic.
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "n".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(2.0)),
        },
    );
    let request = v1::SendRequest {
        target: Some(v1::send_request::Target::User(v1::UserTarget {
            tenant_id: "acme".into(),
            user_id: "alice".into(),
        })),
        payload: Some(v1::send_request::Payload::Data(prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields,
            })),
        })),
        topic: "news".into(),
        ..Default::default()
    };
    let report = broadcast.send(request).await.reported();
    assert_eq!((report.targeted, report.delivered), (2, 2));
    for ws in [&mut alice1, &mut alice2] {
        let frame = recv(ws).await;
        assert_eq!(
            (frame["data"].clone(), frame["topic"].clone()),
            (json!({"n": 2}), json!("news"))
        );
    }
    nothing_pending(&mut bob).await;
    nothing_pending(&mut eve).await;

    // To the tenant, excluding one connection.
    let alice1_id = whoami(&mut alice1).await;
    let mut request = tenant_target("acme", json!("three"));
    request.exclude_connection_ids = vec![alice1_id.clone()];
    let report = broadcast.send(request).await.reported();
    assert_eq!((report.targeted, report.delivered), (2, 2));
    assert_eq!(recv(&mut alice2).await["data"], "three");
    assert_eq!(recv(&mut bob).await["data"], "three");
    nothing_pending(&mut alice1).await;

    // To one connection.
    let request = v1::SendRequest {
        target: Some(v1::send_request::Target::ConnectionId(alice1_id)),
        payload: Some(v1::send_request::Payload::DataJson("4".into())),
        ..Default::default()
    };
    let report = broadcast.send(request).await.reported();
    assert_eq!((report.targeted, report.delivered), (1, 1));
    assert_eq!(recv(&mut alice1).await["data"], 4);

    // Bad payloads are the caller's error.
    let mut bad = tenant_target("acme", json!(null));
    bad.payload = Some(v1::send_request::Payload::DataJson("{nope".into()));
    let err = broadcast.send(bad).await.expect_err("bad json");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_connection_the_gateway_forgot_is_reported_gone_and_removed() {
    let dev = Dev::start(&[TRUST_410_AT_ONCE]).await;
    let mut live = dev.connect(&token("alice", "acme", &[])).await;
    // A row whose $disconnect never arrived: registered through the edge
    // protocol (as a Lambda would), unknown to the gateway.
    let ghost = "GhostConn000000=";
    dev.register_ghost(ghost, "ghost", "acme").await;

    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(tenant_target("acme", json!("hi")))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered, report.gone), (2, 1, 1));
    assert_eq!(recv(&mut live).await["data"], "hi");

    let mut admin = connections(dev.grpc_channel(), ADMIN_TOKEN);
    let err = admin
        .get_connection(v1::GetConnectionRequest {
            connection_id: ghost.into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let report = broadcast
        .send(tenant_target("acme", json!("again")))
        .await
        .reported();
    assert_eq!(report.targeted, 1);
}

#[tokio::test]
async fn connection_queries_page_and_stay_in_their_tenant() {
    let dev = Dev::start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..7 {
        clients.push(
            dev.connect(&token(
                if i < 3 { "alice" } else { "bob" },
                "acme",
                &["echo"],
            ))
            .await,
        );
    }
    let _other = dev.connect(&token("alice", "globex", &[])).await;
    let mut admin = connections(dev.grpc_channel(), ADMIN_TOKEN);

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_connections(v1::ListConnectionsRequest {
                tenant_id: "acme".into(),
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.connections.len() <= 3);
        for c in &page.connections {
            assert_eq!(c.tenant_id, "acme");
            assert_eq!(c.source_ip, "127.0.0.1");
            assert_eq!(c.permissions, vec!["echo".to_owned()]);
            assert!(c.connected_at.is_some());
        }
        seen.extend(page.connections.into_iter().map(|c| c.connection_id));
        if page.next_page_token.is_empty() {
            break;
        }
        // A token for acme is refused for globex.
        if pages == 1 {
            let err = admin
                .list_connections(v1::ListConnectionsRequest {
                    tenant_id: "globex".into(),
                    page_size: 3,
                    page_token: page.next_page_token.clone(),
                    ..Default::default()
                })
                .await
                .expect_err("foreign page token");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7);
    assert!(pages >= 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "ordered by id, no repeats");

    let count = |user: &str| v1::CountConnectionsRequest {
        tenant_id: "acme".into(),
        user_id: user.into(),
    };
    assert_eq!(
        admin
            .count_connections(count(""))
            .await
            .expect("count")
            .into_inner()
            .count,
        7
    );
    assert_eq!(
        admin
            .count_connections(count("alice"))
            .await
            .expect("count")
            .into_inner()
            .count,
        3
    );
    let users = admin
        .list_connections(v1::ListConnectionsRequest {
            tenant_id: "acme".into(),
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(users.connections.len(), 3);
    assert!(users.next_page_token.is_empty());

    let got = admin
        .get_connection(v1::GetConnectionRequest {
            connection_id: seen[0].clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .connection
        .expect("connection");
    assert_eq!(got.connection_id, seen[0]);
    assert!(got.endpoint.starts_with("http://127.0.0.1:"));

    // DisconnectConnection closes the socket at the gateway and forgets the row.
    let mut victim = clients.pop().expect("client");
    let victim_id = whoami(&mut victim).await;
    let closed_reply = admin
        .disconnect_connection(v1::DisconnectConnectionRequest {
            connection_id: victim_id.clone(),
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert!(closed_reply.closed);
    assert!(
        closed(&mut victim)
            .await
            .is_some_and(|f| u16::from(f.code) == 1000)
    );
    let err = admin
        .get_connection(v1::GetConnectionRequest {
            connection_id: victim_id,
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn grpc_callers_must_authenticate_and_stay_in_their_role_and_tenant() {
    let dev = Dev::start(&[]).await;
    let mut globex = dev.connect(&token("gina", "globex", &[])).await;
    let globex_id = whoami(&mut globex).await;
    let count = |tenant: &str| v1::CountConnectionsRequest {
        tenant_id: tenant.into(),
        user_id: String::new(),
    };

    let mut anonymous = streamer_proto::v1::connection_service_client::ConnectionServiceClient::new(
        dev.grpc_channel(),
    );
    let err = anonymous
        .count_connections(count("acme"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let err = connections(dev.grpc_channel(), "wrong-token-0123456789")
        .count_connections(count("acme"))
        .await;
    assert_eq!(
        err.expect_err("wrong token").code(),
        tonic::Code::Unauthenticated
    );

    let err = connections(dev.grpc_channel(), EDGE_TOKEN)
        .count_connections(count("acme"))
        .await;
    assert_eq!(
        err.expect_err("edge token on the server api").code(),
        tonic::Code::PermissionDenied
    );

    let err = edge(dev.grpc_channel(), ADMIN_TOKEN)
        .route(v1::RouteRequest {
            connection_id: globex_id.clone(),
            body: "{}".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        err.expect_err("admin token on the edge api").code(),
        tonic::Code::PermissionDenied
    );

    // The service token bound to acme.
    let mut service = connections(dev.grpc_channel(), SERVICE_A_TOKEN);
    assert_eq!(
        service
            .count_connections(count("acme"))
            .await
            .expect("own tenant")
            .into_inner()
            .count,
        0
    );
    let err = service
        .count_connections(count("globex"))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = service
        .list_connections(v1::ListConnectionsRequest {
            tenant_id: "globex".into(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = service
        .get_connection(v1::GetConnectionRequest {
            connection_id: globex_id.clone(),
        })
        .await;
    assert_eq!(
        err.expect_err("other tenant's connection").code(),
        tonic::Code::NotFound
    );
    let err = service
        .disconnect_connection(v1::DisconnectConnectionRequest {
            connection_id: globex_id.clone(),
        })
        .await;
    assert_eq!(
        err.expect_err("other tenant's connection").code(),
        tonic::Code::NotFound
    );

    let mut service_broadcast = broadcast(dev.grpc_channel(), SERVICE_A_TOKEN);
    let err = service_broadcast
        .send(tenant_target("globex", json!("x")))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let to_conn = v1::SendRequest {
        target: Some(v1::send_request::Target::ConnectionId(globex_id)),
        payload: Some(v1::send_request::Payload::DataJson("1".into())),
        ..Default::default()
    };
    let report = service_broadcast.send(to_conn).await.reported();
    assert_eq!(
        report.targeted, 0,
        "another tenant's connection is not reachable"
    );
    nothing_pending(&mut globex).await;

    // Health needs no token (load balancer probes); it reports SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(dev.grpc_channel());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "streamer.v1.BroadcastService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn the_consoles_overview_calls_keep_their_role_and_tenant() {
    let dev = Dev::start(&[]).await;
    let mut alice = dev.connect(&token("alice", "acme", &["*"])).await;
    let _alice2 = dev.connect(&token("alice", "acme", &[])).await;
    let _gina = dev.connect(&token("gina", "globex", &[])).await;
    send_json(
        &mut alice,
        &json!({"id": "j", "action": "join", "payload": {"group": "room"}}),
    )
    .await;
    let joined = recv(&mut alice).await;
    assert_eq!(joined["success"], true, "{joined}");

    let tenants = |list: v1::ListTenantsResponse| -> Vec<(String, u64)> {
        list.tenants
            .into_iter()
            .map(|t| (t.tenant_id, t.connections))
            .collect()
    };
    let all = connections(dev.grpc_channel(), ADMIN_TOKEN)
        .list_tenants(v1::ListTenantsRequest {})
        .await
        .expect("admin lists tenants")
        .into_inner();
    assert_eq!(
        tenants(all),
        vec![("acme".to_owned(), 2), ("globex".to_owned(), 1)]
    );
    let bound = connections(dev.grpc_channel(), SERVICE_A_TOKEN)
        .list_tenants(v1::ListTenantsRequest {})
        .await
        .expect("a bound token lists its tenant")
        .into_inner();
    assert_eq!(tenants(bound), vec![("acme".to_owned(), 2)]);

    let groups_of = |tenant: &str| v1::ListGroupsRequest {
        tenant_id: tenant.into(),
    };
    let listed = groups(dev.grpc_channel(), SERVICE_A_TOKEN)
        .list_groups(groups_of("acme"))
        .await
        .expect("own tenant's groups")
        .into_inner();
    assert_eq!(
        listed
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.members))
            .collect::<Vec<_>>(),
        vec![("room", 1)]
    );
    assert!(!listed.truncated);
    let err = groups(dev.grpc_channel(), SERVICE_A_TOKEN)
        .list_groups(groups_of("globex"))
        .await
        .expect_err("another tenant's groups");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = groups(dev.grpc_channel(), ADMIN_TOKEN)
        .list_groups(groups_of("not a tenant!"))
        .await
        .expect_err("a malformed tenant");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Delivery figures are fleet-wide: admin only.
    broadcast(dev.grpc_channel(), ADMIN_TOKEN)
        .send(tenant_target("acme", json!("hi")))
        .await
        .reported();
    let stats = admin(dev.grpc_channel(), ADMIN_TOKEN)
        .get_stats(v1::GetStatsRequest {})
        .await
        .expect("admin reads the stats")
        .into_inner();
    assert!(stats.broadcasts >= 1, "{stats:?}");
    assert!(
        stats.recipients.as_ref().is_some_and(|r| r.delivered >= 2),
        "{stats:?}"
    );
    assert!(stats.management_api_calls >= 2, "{stats:?}");
    assert_eq!(
        stats.management_api_bucket_ms.len(),
        stats.management_api_bucket_counts.len()
    );
    assert_eq!(
        stats.management_api_bucket_counts.last().copied(),
        Some(stats.management_api_calls),
        "the last bucket is cumulative: every call"
    );
    let err = admin(dev.grpc_channel(), SERVICE_A_TOKEN)
        .get_stats(v1::GetStatsRequest {})
        .await
        .expect_err("a service token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}
