//! Groups (rooms) end to end with the real `dev` binary and real WebSocket
//! clients: join / leave with permissions, sends to a group, presence, the
//! per-connection cap, the server API, and tenant separation.

use serde_json::{Value, json};
use streamer_proto::{
    auth::BearerToken,
    v1::{self, group_service_client::GroupServiceClient},
};
use streamer_test_kit::prelude::*;

fn groups(dev: &Dev, token: &str) -> GroupServiceClient<Authed> {
    GroupServiceClient::with_interceptor(
        dev.grpc_channel(),
        BearerToken::new(token).expect("token"),
    )
}

async fn request(ws: &mut Ws, frame: Value) -> Value {
    send_json(ws, &frame).await;
    recv(ws).await
}

/// Proves a client has no frame pending: an echo round trip returns first.
async fn nothing_pending(ws: &mut Ws) {
    let reply = request(ws, json!({"id": "probe", "action": "echo"})).await;
    assert_eq!(
        (reply["type"].clone(), reply["request_id"].clone()),
        (json!("response"), json!("probe")),
        "{reply}"
    );
}

#[tokio::test]
async fn rooms_join_leave_send_and_presence() {
    let dev = Dev::start(&[("STREAMER_PRESENCE_GROUPS", "room-*")]).await;
    let mut alice = dev
        .connect(&token("alice", "acme", &["group:join:room-*"]))
        .await;
    let mut bob = dev.connect(&token("bob", "acme", &["group:join:*"])).await;
    let mut carol = dev
        .connect(&token("carol", "acme", &["group:join:room-1"]))
        .await;
    let mut dave = dev.connect(&token("dave", "acme", &[])).await;
    let mut erin = dev
        .connect(&token("erin", "globex", &["group:join:*"]))
        .await;
    let bob_id = whoami(&mut bob).await;

    let reply = request(
        &mut alice,
        json!({"id": "j1", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(
        reply["data"],
        json!({"group": "room-1", "joined": true}),
        "{reply}"
    );
    let reply = request(
        &mut bob,
        json!({"id": "j2", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(reply["data"]["joined"], true);
    // Alice hears Bob arrive.
    let presence = recv(&mut alice).await;
    assert_eq!(presence["type"], "presence");
    assert_eq!(presence["group"], "room-1");
    assert_eq!(presence["event"], "join");
    assert_eq!(presence["user_id"], "bob");
    assert_eq!(presence["connection_id"], bob_id.as_str());
    assert!(presence["timestamp"].is_string());
    // Joining twice is not a second join.
    let reply = request(
        &mut bob,
        json!({"id": "j3", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(reply["data"]["joined"], false);
    // The same name in another tenant is another room.
    let reply = request(
        &mut erin,
        json!({"id": "j4", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(reply["data"]["joined"], true);
    nothing_pending(&mut alice).await;

    // A send to the room reaches exactly its two members.
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(group_target("acme", "room-1", &json!("hello room")))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered), (2, 2));
    assert_eq!(recv(&mut alice).await["data"], "hello room");
    assert_eq!(recv(&mut bob).await["data"], "hello room");
    nothing_pending(&mut carol).await;
    nothing_pending(&mut erin).await;
    let report = broadcast
        .send(group_target("globex", "room-1", &json!("other")))
        .await
        .reported();
    assert_eq!(report.targeted, 1);
    assert_eq!(recv(&mut erin).await["data"], "other");

    // Exclusions apply to groups too.
    let mut excluding = group_target("acme", "room-1", &json!("not bob"));
    excluding.exclude_connection_ids = vec![bob_id.clone()];
    let report = broadcast.send(excluding).await.reported();
    assert_eq!(report.targeted, 1);
    assert_eq!(recv(&mut alice).await["data"], "not bob");

    // Permission and payload checks.
    let reply = request(
        &mut dave,
        json!({"id": "d1", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(
        (reply["error"]["code"].clone(), reply["request_id"].clone()),
        (json!("FORBIDDEN"), json!("d1"))
    );
    let reply = request(
        &mut carol,
        json!({"id": "c1", "action": "join", "payload": {"group": "room-2"}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "FORBIDDEN", "room-1 only");
    let reply = request(
        &mut bob,
        json!({"id": "b1", "action": "join", "payload": {"group": "bad name!"}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR");
    let reply = request(
        &mut bob,
        json!({"id": "b2", "action": "join", "payload": {}}),
    )
    .await;
    assert_eq!(
        (reply["error"]["code"].clone(), reply["request_id"].clone()),
        (json!("VALIDATION_ERROR"), json!("b2"))
    );

    // Leaving is announced and takes effect.
    let reply = request(
        &mut bob,
        json!({"id": "l1", "action": "leave", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(reply["data"], json!({"group": "room-1", "left": true}));
    let presence = recv(&mut alice).await;
    assert_eq!(
        (presence["event"].clone(), presence["user_id"].clone()),
        (json!("leave"), json!("bob"))
    );
    let report = broadcast
        .send(group_target("acme", "room-1", &json!(1)))
        .await
        .reported();
    assert_eq!(report.targeted, 1);
    assert_eq!(recv(&mut alice).await["data"], 1);
    nothing_pending(&mut bob).await;

    // A member's disconnect notifies the others.
    let reply = request(
        &mut bob,
        json!({"id": "j5", "action": "join", "payload": {"group": "room-1"}}),
    )
    .await;
    assert_eq!(reply["data"]["joined"], true);
    assert_eq!(recv(&mut alice).await["event"], "join");
    bob.close(None).await.expect("close");
    let presence = recv(&mut alice).await;
    assert_eq!(presence["event"], "leave");
    assert_eq!(presence["connection_id"], bob_id.as_str());
}

#[tokio::test]
async fn the_per_connection_group_cap_is_enforced() {
    let dev = Dev::start(&[("STREAMER_MAX_GROUPS_PER_CONNECTION", "2")]).await;
    let mut ws = dev
        .connect(&token("alice", "acme", &["group:join:*"]))
        .await;
    for group in ["g1", "g2"] {
        let reply = request(
            &mut ws,
            json!({"id": group, "action": "join", "payload": {"group": group}}),
        )
        .await;
        assert_eq!(reply["data"]["joined"], true);
    }
    let reply = request(
        &mut ws,
        json!({"id": "g3", "action": "join", "payload": {"group": "g3"}}),
    )
    .await;
    assert_eq!(
        (reply["error"]["code"].clone(), reply["request_id"].clone()),
        (json!("VALIDATION_ERROR"), json!("g3"))
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 2"))
    );
    // Leaving one makes room.
    request(
        &mut ws,
        json!({"id": "l", "action": "leave", "payload": {"group": "g1"}}),
    )
    .await;
    let reply = request(
        &mut ws,
        json!({"id": "g3b", "action": "join", "payload": {"group": "g3"}}),
    )
    .await;
    assert_eq!(reply["data"]["joined"], true);
}

#[tokio::test]
async fn the_group_api_and_late_departures() {
    let dev = Dev::start(&[("STREAMER_PRESENCE_GROUPS", "lobby"), TRUST_410_AT_ONCE]).await;
    let mut alice = dev.connect(&token("alice", "acme", &[])).await;
    let mut alice2 = dev.connect(&token("alice", "acme", &[])).await;
    let alice_id = whoami(&mut alice).await;
    let alice2_id = whoami(&mut alice2).await;
    let mut admin = groups(&dev, ADMIN_TOKEN);

    let added = admin
        .add_to_group(v1::AddToGroupRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
            member: Some(v1::add_to_group_request::Member::UserId("alice".into())),
        })
        .await
        .expect("add user")
        .into_inner();
    assert_eq!(added.added, 2);
    // The user's connections join in id order; the first hears the second.
    let (first, second_id) = if alice_id < alice2_id {
        (&mut alice, &alice2_id)
    } else {
        (&mut alice2, &alice_id)
    };
    let presence = recv(first).await;
    assert_eq!(
        (presence["event"].clone(), presence["connection_id"].clone()),
        (json!("join"), json!(second_id))
    );
    nothing_pending(&mut alice).await;
    nothing_pending(&mut alice2).await;
    let count = admin
        .count_group_members(v1::CountGroupMembersRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 2);
    let page = admin
        .list_group_members(v1::ListGroupMembersRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.connections.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let rest = admin
        .list_group_members(v1::ListGroupMembersRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.connections.len(), 1);
    let groups_of = admin
        .list_connection_groups(v1::ListConnectionGroupsRequest {
            connection_id: alice_id.clone(),
        })
        .await
        .expect("groups")
        .into_inner()
        .groups;
    assert_eq!(groups_of, vec!["lobby".to_owned()]);

    // A tenant-bound service token reaches only its tenant's groups.
    let mut service = groups(&dev, SERVICE_A_TOKEN);
    let err = service
        .count_group_members(v1::CountGroupMembersRequest {
            tenant_id: "globex".into(),
            group: "lobby".into(),
        })
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut service_broadcast = broadcast(dev.grpc_channel(), SERVICE_A_TOKEN);
    let err = service_broadcast
        .send(group_target("globex", "lobby", &json!(1)))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        service
            .count_group_members(v1::CountGroupMembersRequest {
                tenant_id: "acme".into(),
                group: "lobby".into()
            })
            .await
            .expect("own tenant")
            .into_inner()
            .count,
        2
    );

    // A member the gateway forgot: registered through the edge protocol,
    // added to the lobby, then found gone (410) by a send to the lobby; its
    // departure is still announced.
    let ghost = "GhostLobby00000=";
    dev.register_ghost(ghost, "ghost", "acme").await;
    admin
        .add_to_group(v1::AddToGroupRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
            member: Some(v1::add_to_group_request::Member::ConnectionId(ghost.into())),
        })
        .await
        .expect("add ghost");
    for ws in [&mut alice, &mut alice2] {
        let presence = recv(ws).await;
        assert_eq!(
            (presence["event"].clone(), presence["user_id"].clone()),
            (json!("join"), json!("ghost"))
        );
    }
    let mut broadcast = broadcast(dev.grpc_channel(), ADMIN_TOKEN);
    let report = broadcast
        .send(group_target("acme", "lobby", &json!("hi")))
        .await
        .reported();
    assert_eq!((report.targeted, report.delivered, report.gone), (3, 2, 1));
    for ws in [&mut alice, &mut alice2] {
        // The message and the ghost's departure, in either order.
        let mut frames = [recv(ws).await, recv(ws).await];
        frames.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
        assert_eq!(frames[0]["data"], "hi");
        assert_eq!(
            (
                frames[1]["event"].clone(),
                frames[1]["connection_id"].clone()
            ),
            (json!("leave"), json!(ghost))
        );
    }
    let removed = admin
        .remove_from_group(v1::RemoveFromGroupRequest {
            tenant_id: "acme".into(),
            group: "lobby".into(),
            member: Some(v1::remove_from_group_request::Member::ConnectionId(
                alice_id,
            )),
        })
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(recv(&mut alice2).await["event"], "leave");
}
