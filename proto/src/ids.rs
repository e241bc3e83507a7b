//! Validation of the identifiers that cross the system's boundaries.

/// Longest tenant id, user id, action name or request id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Tenant ids: `[A-Za-z0-9._:-]`, 1..=128 chars. The DynamoDB user key joins
/// tenant and user with `#`, so `#` can never appear in a tenant id.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
}

/// Group (room) names: `[A-Za-z0-9._:-]`, 1..=128 chars, scoped to a tenant.
pub fn valid_group(name: &str) -> bool {
    valid_tenant_id(name)
}

/// Free-form ids (users, requests): 1..=128 bytes, no control characters,
/// not blank and no surrounding white space (`" alice"` and `"alice"` must
/// never be two names for one user, and `""` never "everyone").
fn valid_free_form(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.trim() == id && !id.chars().any(char::is_control)
}

/// User ids (the token's `sub`): see [`valid_free_form`].
pub fn valid_user_id(id: &str) -> bool {
    valid_free_form(id)
}

/// Action names: `[A-Za-z0-9._-]`, 1..=128 chars.
pub fn valid_action(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Client request ids: see [`valid_free_form`].
pub fn valid_request_id(id: &str) -> bool {
    valid_free_form(id)
}

/// Topics copied into `message` frames: up to 128 bytes, no control
/// characters (empty means no topic).
pub fn valid_topic(topic: &str) -> bool {
    topic.len() <= MAX_ID_LEN && !topic.chars().any(char::is_control)
}

/// Free-text names that only reach logs (a processor's name): up to 128
/// bytes, no control characters.
pub fn valid_label(name: &str) -> bool {
    name.len() <= MAX_ID_LEN && !name.chars().any(char::is_control)
}

/// Connection ids as API Gateway makes them (base64-like, e.g.
/// `L0SM9cOFvHcCIhw=`); we accept a little more but nothing that could break a
/// URL path or a log line.
pub fn valid_connection_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert!(valid_tenant_id("acme-1.eu:prod_2"));
        assert!(!valid_tenant_id("acme#1"));
        assert!(!valid_tenant_id(""));
        assert!(!valid_tenant_id(&"a".repeat(129)));
        assert!(valid_action("generate_report"));
        assert!(valid_action(&"a".repeat(128)));
        assert!(!valid_action(&"a".repeat(129)));
        assert!(!valid_action("drop table"));
        assert!(!valid_action("a/b"));
        assert!(valid_request_id("req-1"));
        assert!(!valid_request_id(&"x".repeat(129)));
        assert!(!valid_request_id("a\nb"));
        assert!(valid_user_id("user@example.com"));
        assert!(!valid_user_id("a\u{0}"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id(" "));
        assert!(!valid_user_id(" alice"));
        assert!(!valid_user_id(&"u".repeat(129)));
        assert!(valid_user_id("alice smith"));
        assert!(!valid_request_id("\t"));
        assert!(valid_topic(""));
        assert!(!valid_topic("a\nb"));
        assert!(valid_connection_id("L0SM9cOFvHcCIhw="));
        assert!(!valid_connection_id("../x"));
    }
}
