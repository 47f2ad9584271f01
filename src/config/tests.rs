//! The configuration's own tests: defaults, refusals by name, precedence,
//! lists in the file.

use super::*;
use crate::admin::{parse_admin_tokens, AdminRole};

#[test]
fn hygiene_settings_are_off_by_default_and_bad_values_name_their_setting() {
    let hygiene = Settings::default().validate().unwrap().hygiene;
    assert_eq!(hygiene.dormant_after, None);
    assert!(hygiene.imported_prefixes.is_empty() && hygiene.scanning_keys.is_none());
    assert_eq!(hygiene.leak_action, LeakAction::Revoke);
    let with = |change: fn(&mut Settings)| {
        let mut settings = Settings::default();
        change(&mut settings);
        settings.validate()
    };
    let set = with(|s| {
        s.dormant_after = Some("90d".into());
        s.imported_prefixes = Some("lk_, old_".into());
        s.leak_action = Some("notify".into());
    })
    .unwrap()
    .hygiene;
    assert_eq!(set.dormant_after, Some(Duration::from_secs(90 * 86_400)));
    assert_eq!(set.imported_prefixes, ["lk_", "old_"]);
    assert_eq!(set.leak_action, LeakAction::Notify);
    for (error, env) in [
        (
            with(|s| s.leak_action = Some("delete".into())),
            "KEYGATE_LEAK_ACTION",
        ),
        (
            with(|s| s.dormant_after = Some("soon".into())),
            "KEYGATE_DORMANT_AFTER",
        ),
        (
            with(|s| s.dormant_after = Some("0s".into())),
            "KEYGATE_DORMANT_AFTER",
        ),
        (
            with(|s| s.imported_prefixes = Some("l k".into())),
            "KEYGATE_IMPORTED_PREFIXES",
        ),
        (
            with(|s| s.github_scanning_keys = Some("/nonexistent/keys.json".into())),
            "KEYGATE_GITHUB_SCANNING_KEYS",
        ),
    ] {
        assert_eq!(error.unwrap_err().env, env);
    }
}

#[test]
fn defaults_validate() {
    let config = Settings::default().validate().unwrap();
    assert_eq!(config.database_url, "sqlite://keygate.db");
    assert_eq!(config.authz_addr.port(), 50051);
    assert_eq!(config.cache_ttl, Duration::from_secs(60));
    assert_eq!(config.check_timeout, Duration::from_millis(100));
    assert_eq!(config.key_format.environments(), ["live", "test"]);
}

#[test]
fn a_zero_flush_interval_or_check_timeout_is_refused_by_name() {
    let zero_flush = Settings {
        usage_flush_interval: Some("0s".into()),
        ..Default::default()
    };
    let message = zero_flush.validate().unwrap_err().to_string();
    assert!(
        message.contains("KEYGATE_USAGE_FLUSH_INTERVAL") && message.contains("greater than zero"),
        "{message}"
    );
    let zero_timeout = Settings {
        check_timeout: Some("0ms".into()),
        ..Default::default()
    };
    let message = zero_timeout.validate().unwrap_err().to_string();
    assert!(message.contains("KEYGATE_CHECK_TIMEOUT"), "{message}");
}

#[test]
fn an_invalid_setting_is_named_in_the_error() {
    let settings = Settings {
        cache_ttl: Some("ten minutes".into()),
        ..Default::default()
    };
    let message = settings.validate().unwrap_err().to_string();
    assert!(
        message.contains("cache_ttl") && message.contains("KEYGATE_CACHE_TTL"),
        "{message}"
    );
    let settings = Settings {
        foreign_bearer: Some("maybe".into()),
        ..Default::default()
    };
    assert!(settings
        .validate()
        .unwrap_err()
        .to_string()
        .contains("KEYGATE_FOREIGN_BEARER"));
}

#[test]
fn forward_auth_settings_refuse_unusable_prefixes_and_metadata_names() {
    let config = Settings::default().validate().unwrap();
    assert_eq!(config.forward_auth_addr.port(), 8081);
    assert_eq!(config.forward_auth_path_prefix, "");
    let settings = Settings {
        forward_auth_path_prefix: Some("/ext-authz".into()),
        metadata_headers: Some("tier, plan_code".into()),
        ..Default::default()
    };
    let config = settings.validate().unwrap();
    assert_eq!(config.forward_auth_path_prefix, "/ext-authz");
    assert_eq!(config.metadata_headers, ["tier", "plan_code"]);
    for prefix in ["/", "ext-authz", "/ext-authz/", "/a?b"] {
        let settings = Settings {
            forward_auth_path_prefix: Some(prefix.into()),
            ..Default::default()
        };
        let message = settings.validate().unwrap_err().to_string();
        assert!(
            message.contains("KEYGATE_FORWARD_AUTH_PATH_PREFIX"),
            "{prefix}: {message}"
        );
    }
    for names in ["tier,pl an", "a:b", "caf\u{e9}"] {
        let settings = Settings {
            metadata_headers: Some(names.into()),
            ..Default::default()
        };
        let message = settings.validate().unwrap_err().to_string();
        assert!(
            message.contains("KEYGATE_METADATA_HEADERS"),
            "{names}: {message}"
        );
    }
}

#[test]
fn a_public_admin_bind_requires_tokens() {
    let settings = Settings {
        admin_addr: Some("0.0.0.0:50052".into()),
        ..Default::default()
    };
    assert!(settings
        .validate()
        .unwrap_err()
        .to_string()
        .contains("KEYGATE_ADMIN_TOKENS"));
    let hash = "a".repeat(64);
    let settings = Settings {
        admin_addr: Some("0.0.0.0:50052".into()),
        admin_tokens: Some(format!("ops:admin:{hash}")),
        ..Default::default()
    };
    assert_eq!(
        settings.validate().unwrap().admin_tokens[0].role,
        AdminRole::Admin
    );
}

#[test]
fn a_public_rest_bind_requires_tokens() {
    let settings = Settings {
        http_addr: Some("0.0.0.0:8080".into()),
        ..Default::default()
    };
    assert!(settings
        .validate()
        .unwrap_err()
        .to_string()
        .contains("KEYGATE_HTTP_ADDR"));
    let settings = Settings {
        http_addr: Some("0.0.0.0:8080".into()),
        admin_tokens: Some(format!("ops:admin:{}", "a".repeat(64))),
        ..Default::default()
    };
    assert_eq!(settings.validate().unwrap().http_addr.port(), 8080);
}

#[test]
fn flags_and_env_win_over_the_file() {
    let file: Settings = toml::from_str("cache_ttl = \"30s\"\nkey_prefix = \"pk\"\n[[routes]]\npath = \"/v1/orders*\"\nabilities = [\"read:orders\"]\n").unwrap();
    let cli = Settings {
        key_prefix: Some("ak".into()),
        ..Default::default()
    };
    let config = cli.over(file).validate().unwrap();
    assert_eq!(config.key_format.prefix(), "ak");
    assert_eq!(config.cache_ttl, Duration::from_secs(30));
    assert!(config.routes[0].matches("GET", "/v1/orders/42?x=1"));
    assert!(!config.routes[0].matches("GET", "/v2/orders"));
}

fn rules(paths: &[&str]) -> Result<Config, ConfigError> {
    let routes = paths.iter().map(|path| RouteRuleSettings {
        path: (*path).into(),
        abilities: vec!["write:orders".into()],
        ..Default::default()
    });
    Settings {
        routes: routes.collect(),
        ..Default::default()
    }
    .validate()
}

#[test]
fn route_rules_match_normalised_paths_in_any_case() {
    let config = rules(&["/v1/orders*", "/v1/%40me"]).unwrap();
    let [prefix, exact] = &config.routes[..] else {
        panic!("two rules")
    };
    for path in ["/v1/orders", "/V1/Orders/42", "/v1/orders-archive"] {
        assert!(prefix.matches("POST", path), "{path}");
    }
    assert!(!prefix.matches("POST", "/v1/order"));
    assert!(exact.matches("GET", "/V1/%40ME"));
    assert!(!exact.matches("GET", "/v1/%40me/x"));
}

#[test]
fn a_route_rule_path_that_is_not_normalised_is_refused() {
    for (path, problem) in [
        ("/v1//orders*", "write \"/v1/orders*\""),
        ("/v1/./orders", "write \"/v1/orders\""),
        ("/v1/%6frders*", "write \"/v1/orders*\""),
        ("/v1/../../x", "above the root"),
        ("/v1%2forders*", "encoded slash"),
    ] {
        let message = rules(&[path]).unwrap_err().to_string();
        assert!(message.contains(problem), "{path}: {message}");
    }
}

#[test]
fn one_token_hash_under_two_names_is_refused() {
    let hash = "b".repeat(64);
    let error =
        parse_admin_tokens(&format!("ops:admin:{hash},billing:service:{hash}")).unwrap_err();
    assert!(
        error.contains("\"ops\"") && error.contains("\"billing\""),
        "{error}"
    );
    let other = "c".repeat(64);
    assert_eq!(
        parse_admin_tokens(&format!("ops:admin:{hash},billing:service:{other}"))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn rotation_overlap_defaults_to_seven_days_and_superkeys_to_admins() {
    let config = Settings::default().validate().unwrap();
    assert_eq!(
        config.max_rotation_overlap,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert!(!config.service_tokens_may_grant_superkey);
}

#[test]
fn a_check_client_ca_requires_tls() {
    let settings = Settings {
        authz_client_ca: Some("ca.crt".into()),
        ..Default::default()
    };
    assert!(settings
        .validate()
        .unwrap_err()
        .to_string()
        .contains("KEYGATE_AUTHZ_CLIENT_CA"));
}

/// Reads `text` as the TOML file beneath no flags, and validates it.
fn from_file(text: &str) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    Ok(Settings::default().with_file(Some(&path))?.validate()?)
}

/// What each list reads as, to compare one file's lists with another's.
fn lists(config: &Config) -> Vec<Vec<String>> {
    vec![
        config.key_format.environments().to_vec(),
        config
            .ability_catalog
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        config.metadata_headers.clone(),
        config.admin_tokens.iter().map(|t| t.name.clone()).collect(),
        config
            .webhooks
            .expiry_warnings
            .iter()
            .map(|d| format!("{d:?}"))
            .collect(),
        config.hygiene.imported_prefixes.clone(),
        config.routes.iter().map(|r| r.abilities.clone()).collect(),
    ]
}

const TOKEN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const OTHER_TOKEN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000002";

#[test]
fn every_list_in_the_file_may_be_an_array_or_a_comma_string() {
    let arrays = from_file(&format!(
        r#"
        environments = ["prod", "staging"]
        abilities = ["read:orders", "write:orders"]
        metadata_headers = ["tier", "plan"]
        admin_tokens = ["ops:admin:{TOKEN_HASH}", "billing:service:{OTHER_TOKEN_HASH}"]
        expiry_warnings = ["3d", "1h"]
        imported_prefixes = ["lk_", "old_"]
        [[routes]]
        path = "/v1/orders*"
        abilities = ["read:orders", "write:orders"]
        "#
    ))
    .expect("arrays are accepted");
    let strings = from_file(&format!(
        r#"
        environments = "prod,staging"
        abilities = "read:orders, write:orders"
        metadata_headers = "tier,plan"
        admin_tokens = "ops:admin:{TOKEN_HASH},billing:service:{OTHER_TOKEN_HASH}"
        expiry_warnings = "3d,1h"
        imported_prefixes = "lk_,old_"
        [[routes]]
        path = "/v1/orders*"
        abilities = "read:orders,write:orders"
        "#
    ))
    .expect("comma strings are still accepted");
    assert_eq!(lists(&arrays), lists(&strings));
    assert_eq!(
        lists(&arrays)[1],
        ["read:orders", "write:orders"],
        "the catalog holds both abilities"
    );
    assert_eq!(arrays.routes[0].abilities, "read:orders,write:orders");
}

#[test]
fn flags_and_env_still_win_over_a_list_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, r#"abilities = ["read:orders", "write:orders"]"#).unwrap();
    let from_env = Settings {
        abilities: Some("admin:all".into()),
        ..Default::default()
    };
    let config = from_env.with_file(Some(&path)).unwrap().validate().unwrap();
    assert_eq!(config.ability_catalog.len(), 1);
    assert_eq!(config.ability_catalog[0].as_str(), "admin:all");
}

#[test]
fn an_array_item_holding_a_comma_is_refused_by_name() {
    let error = from_file(r#"abilities = ["read:orders,write:orders"]"#)
        .expect_err("an item with a comma would read as two")
        .to_string();
    assert!(
        error.contains("abilities") && error.contains("comma"),
        "{error}"
    );
    let error = from_file("abilities = [1, 2]")
        .expect_err("not strings")
        .to_string();
    assert!(error.contains("abilities"), "{error}");
}

#[test]
fn unknown_file_keys_are_rejected() {
    assert!(toml::from_str::<Settings>("cache_tll = \"30s\"").is_err());
}

#[test]
fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url");
    std::fs::write(&path, "postgres://u@h/db\n").unwrap();
    let settings = Settings {
        database_url_file: Some(path),
        ..Default::default()
    };
    assert_eq!(
        settings.validate().unwrap().database_url,
        "postgres://u@h/db"
    );
}
