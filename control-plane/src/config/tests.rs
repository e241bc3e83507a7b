use std::{collections::HashMap, time::Duration};

use super::*;

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(None, &move |name| map.get(name).cloned())
}

#[test]
fn defaults_match_api_gateway() {
    let config = load(&[]).expect("defaults load");
    assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(config.gateway.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(config.gateway.stage, "local");
    assert_eq!(config.gateway.max_message_bytes, 128 * 1024);
    assert_eq!(config.gateway.idle_timeout, Duration::from_secs(600));
    assert_eq!(config.gateway.max_duration, Duration::from_secs(7200));
    assert_eq!(config.limits.messages_per_minute, 100);
    assert_eq!(config.limits.message_burst, 20);
    assert_eq!(config.limits.connects_per_minute_per_ip, 10);
    assert_eq!(config.server.transport, TransportConfig::default());
    assert!(!config.store.shared_rate_limits);
    assert!(config.jwt.is_none());
}

#[test]
fn every_default_parses_and_every_setting_is_named_once() {
    let mut envs = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for setting in settings::ALL {
        assert!(
            setting.env.is_some() || setting.key.is_some(),
            "{setting:?}"
        );
        if let Some(env) = setting.env {
            assert!(envs.insert(env), "{env} declared twice");
            assert!(env.starts_with("STREAMER_"), "{env}");
        }
        if let Some(key) = setting.key {
            assert!(keys.insert(key), "{key} declared twice");
        }
        assert!(
            !setting.default.is_empty() || setting.default_doc.is_some(),
            "{} needs a documented default",
            setting.name()
        );
    }
    // Defaults are parsed by the loader: a default that does not parse would
    // fail this load.
    load(&[]).expect("every default parses");
}

#[test]
fn bad_values_are_all_named_at_once() {
    let err = load(&[
        ("STREAMER_GRPC_ADDR", "nowhere"),
        ("STREAMER_MESSAGES_PER_MINUTE", "many"),
        ("STREAMER_EDGE_TOKEN", "short"),
        ("STREAMER_STORE", "postgres"),
    ])
    .expect_err("bad config");
    let text = err.to_string();
    for name in [
        "STREAMER_GRPC_ADDR",
        "STREAMER_MESSAGES_PER_MINUTE",
        "STREAMER_EDGE_TOKEN",
        "STREAMER_STORE",
    ] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
    assert_eq!(err.problems.len(), 4, "{text}");

    let err = load(&[
        ("STREAMER_JWT_PUBLIC_KEY", "x"),
        ("STREAMER_JWT_ALGORITHMS", "HS256"),
    ])
    .expect_err("hs");
    assert!(err.to_string().contains("shared-secret"), "{err}");
    let same = "0123456789abcdef0123";
    let err = load(&[
        ("STREAMER_EDGE_TOKEN", same),
        ("STREAMER_ADMIN_TOKEN", same),
    ])
    .expect_err("reuse");
    assert!(err.to_string().contains("each needs its own"), "{err}");
    let err = load(&[("STREAMER_MESSAGE_BURST", "0")]).expect_err("zero");
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn production_names_every_missing_setting() {
    let config = load(&[]).expect("load");
    let err = config.require_production().expect_err("nothing configured");
    let text = err.to_string();
    for name in [
        "STREAMER_JWT_PUBLIC_KEY",
        "STREAMER_EDGE_TOKEN",
        "STREAMER_ADMIN_TOKEN",
    ] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
}

#[test]
fn file_is_read_and_env_wins() {
    let dir = std::env::temp_dir().join(format!(
        "streamer-config-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("streamer.toml");
    std::fs::write(
        &path,
        r#"
grpc_addr = "127.0.0.1:6000"
[limits]
messages_per_minute = 7
[groups]
presence = ["room-*", "lobby"]
[jwt]
algorithms = ["ES256"]
public_key = "pem"
[[actions]]
name = "admin.echo"
mode = "sync"
handler = "echo"
permission = "admin"
schema = { type = "object", required = ["text"] }
[[tokens.services]]
name = "billing"
token = "a-long-random-service-token"
tenant_id = "acme"
"#,
    )
    .expect("write config");
    let map: HashMap<String, String> =
        [("STREAMER_GRPC_ADDR".to_owned(), "127.0.0.1:7000".to_owned())]
            .into_iter()
            .collect();
    let config =
        Config::load(Some(path.clone()), &move |name| map.get(name).cloned()).expect("load");
    assert_eq!(config.server.grpc_addr.port(), 7000);
    assert_eq!(config.limits.messages_per_minute, 7);
    assert!(config.groups.presence_enabled("room-9"));
    assert!(config.groups.presence_enabled("lobby"));
    assert!(!config.groups.presence_enabled("other"));
    assert_eq!(
        config.jwt.expect("jwt").algorithms,
        vec![jsonwebtoken::Algorithm::ES256]
    );
    assert_eq!(config.actions.len(), 1);
    assert_eq!(config.actions[0].permission.as_deref(), Some("admin"));
    assert_eq!(config.tokens.services[0].tenant_id.as_deref(), Some("acme"));

    std::fs::write(&path, "unknown_key = 1\n[limits]\nnope = 2\n").expect("write config");
    let err = Config::load(Some(path), &|_| None).expect_err("unknown keys");
    assert!(err.to_string().contains("unknown_key"), "{err}");
    assert!(err.to_string().contains("limits.nope"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_configuration_page_matches_the_settings_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let page = std::fs::read_to_string(path).expect("docs/configuration.md");
    let begin = "<!-- settings:begin (generated from control-plane/src/config/settings.rs) -->\n";
    let end = "<!-- settings:end -->";
    let start = page.find(begin).expect("begin marker") + begin.len();
    let stop = page.find(end).expect("end marker");
    let table = settings::markdown_table();
    if std::env::var_os("STREAMER_BLESS").is_some() && page[start..stop] != table {
        let updated = format!("{}{table}{}", &page[..start], &page[stop..]);
        std::fs::write(path, updated).expect("rewrite docs/configuration.md");
        return;
    }
    assert!(
        page[start..stop] == table,
        "docs/configuration.md is out of date: run the tests with STREAMER_BLESS=1, or put this table between the markers:\n{table}"
    );
}
