//! `GroupService`: membership from the server side, through the same
//! domain calls as a client's own `join` / `leave`.

use std::{collections::BTreeMap, sync::Arc};

use streamer_proto::v1::{self, group_service_server::GroupService};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert, pagetoken::PageTokens};
use crate::{
    connections::{
        ControlPlane,
        groups::{Groups, Member},
    },
    error::Fault,
    registry::{Registry, Scope},
};

/// Group membership from the server side.
#[derive(Clone)]
pub struct GroupApi {
    groups: Arc<Groups>,
    control: Arc<ControlPlane>,
    registry: Arc<dyn Registry>,
    page_tokens: PageTokens,
}

impl std::fmt::Debug for GroupApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupApi").finish_non_exhaustive()
    }
}

impl GroupApi {
    /// Serves the group API.
    pub fn new(
        groups: Arc<Groups>,
        control: Arc<ControlPlane>,
        registry: Arc<dyn Registry>,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            groups,
            control,
            registry,
            page_tokens,
        }
    }
}

/// The two requests' identical `oneof member`, as the domain's [`Member`].
macro_rules! member_of {
    ($oneof:path, $member:expr) => {{
        use $oneof as M;
        match $member {
            Some(M::ConnectionId(id)) => Ok(Member::Connection(convert::connection(id)?)),
            Some(M::UserId(user)) => Ok(Member::User(convert::user(user)?)),
            None => Err(Fault::invalid("connection_id or user_id is required")),
        }
    }};
}

/// The tenant and group of a membership change, checked against the caller.
fn target<'a>(
    caller: &Caller,
    tenant_id: &'a str,
    group: &'a str,
) -> Result<(&'a str, &'a str), Fault> {
    let Scope::Group { .. } = convert::group_scope(tenant_id, group)? else {
        return Err(Fault::internal("group_scope gave another scope"));
    };
    caller.check_tenant(tenant_id)?;
    Ok((tenant_id, group))
}

impl GroupApi {
    fn listing(&self) -> convert::Listing {
        convert::Listing {
            registry: self.registry.clone(),
            tokens: self.page_tokens.clone(),
        }
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    async fn add_to_group(
        &self,
        request: Request<v1::AddToGroupRequest>,
    ) -> Result<Response<v1::AddToGroupResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (tenant_id, group) = target(caller, &r.tenant_id, &r.group)?;
        let member = member_of!(v1::add_to_group_request::Member, &r.member)?;
        let added = self.groups.add(tenant_id, group, member).await?;
        Ok(Response::new(v1::AddToGroupResponse { added }))
    }

    async fn remove_from_group(
        &self,
        request: Request<v1::RemoveFromGroupRequest>,
    ) -> Result<Response<v1::RemoveFromGroupResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (tenant_id, group) = target(caller, &r.tenant_id, &r.group)?;
        let member = member_of!(v1::remove_from_group_request::Member, &r.member)?;
        let removed = self.groups.remove(tenant_id, group, member).await?;
        Ok(Response::new(v1::RemoveFromGroupResponse { removed }))
    }

    async fn list_group_members(
        &self,
        request: Request<v1::ListGroupMembersRequest>,
    ) -> Result<Response<v1::ListGroupMembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = convert::group_scope(&r.tenant_id, &r.group)?;
        let (connections, next_page_token) = self
            .listing()
            .page(caller, &scope, &r.page_token, r.page_size)
            .await?;
        Ok(Response::new(v1::ListGroupMembersResponse {
            connections,
            next_page_token,
        }))
    }

    async fn count_group_members(
        &self,
        request: Request<v1::CountGroupMembersRequest>,
    ) -> Result<Response<v1::CountGroupMembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let scope = convert::group_scope(&r.tenant_id, &r.group)?;
        let count = self.listing().count(caller, &scope).await?;
        Ok(Response::new(v1::CountGroupMembersResponse { count }))
    }

    async fn list_connection_groups(
        &self,
        request: Request<v1::ListConnectionGroupsRequest>,
    ) -> Result<Response<v1::ListConnectionGroupsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = convert::connection(&request.get_ref().connection_id)?;
        let connection = self.control.visible(id, caller.tenant_filter()).await?;
        let mut groups: Vec<String> = connection.groups.iter().map(|g| g.to_string()).collect();
        groups.sort();
        Ok(Response::new(v1::ListConnectionGroupsResponse { groups }))
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let scope = convert::tenant_or_user(&request.get_ref().tenant_id, "")?;
        caller.check_tenant(scope.tenant_id())?;
        let mut members: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut walked = 0;
        let mut after: Option<String> = None;
        let truncated = loop {
            let page = self
                .registry
                .list(&scope, after.as_deref(), LIST_GROUPS_PAGE)
                .await
                .map_err(Fault::from)?;
            walked += page.items.len();
            for connection in &page.items {
                for group in connection.groups.iter() {
                    *members.entry(group.clone()).or_default() += 1;
                }
            }
            match page.next_after {
                Some(next) if walked < LIST_GROUPS_MAX_CONNECTIONS => after = Some(next),
                Some(_) => break true,
                None => break false,
            }
        };
        Ok(Response::new(v1::ListGroupsResponse {
            groups: members
                .into_iter()
                .map(|(group, members)| v1::GroupSummary {
                    group: group.to_string(),
                    members,
                })
                .collect(),
            truncated,
        }))
    }
}

/// `ListGroups` reads the tenant's connections in pages of this many...
const LIST_GROUPS_PAGE: usize = 1000;
/// ...and stops after this many.
const LIST_GROUPS_MAX_CONNECTIONS: usize = 10_000;
