//! What `keygate admin-token` prints: a fresh token and its
//! `KEYGATE_ADMIN_TOKENS` entry, for a person (`text`) or for a script
//! (`env`, `json`), so that the README's Helm command can take the entry
//! without cutting lines out of prose.

use clap::ValueEnum;
use serde::Serialize;

use crate::{admin::AdminRole, grpc::auth::new_admin_token};

/// How `keygate admin-token` prints the token and its entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Labelled lines for a person.
    #[default]
    Text,
    /// `ADMIN_TOKEN=…` and `KEYGATE_ADMIN_TOKENS=…`, shell-quoted, for `eval`.
    Env,
    /// One JSON object: `name`, `role`, `token`, `entry`.
    Json,
}

/// A token name fit for a `name:role:sha256hex` entry: the actor recorded in
/// audit events, without the entry's separators.
pub fn parse_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains([':', ',']) || name.chars().any(char::is_whitespace) {
        return Err("a token name must be non-empty, without ':', ',' or spaces".into());
    }
    Ok(name.to_owned())
}

#[derive(Serialize)]
struct Issued<'a> {
    name: &'a str,
    role: &'static str,
    token: &'a str,
    entry: &'a str,
}

/// A fresh token for `name` with `role`, printed in `format`.
pub fn issue(name: &str, role: AdminRole, format: Format) -> String {
    let (token, entry) = new_admin_token(name, role);
    render(name, role, &token, &entry, format)
}

fn render(name: &str, role: AdminRole, token: &str, entry: &str, format: Format) -> String {
    match format {
        Format::Text => format!(
            "token (give to the client; it is not stored anywhere):\n  {token}\n\
             config entry (add to KEYGATE_ADMIN_TOKENS, comma-separated):\n  {entry}"
        ),
        Format::Env => format!(
            "ADMIN_TOKEN={}\nKEYGATE_ADMIN_TOKENS={}",
            shell_quote(token),
            shell_quote(entry)
        ),
        Format::Json => serde_json::to_string(&Issued {
            name,
            role: role.as_str(),
            token,
            entry,
        })
        .expect("strings serialise"),
    }
}

/// `value` as one POSIX shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::parse_admin_tokens;

    #[test]
    fn json_output_carries_a_token_whose_entry_configures_it() {
        let out = issue("ops", AdminRole::Admin, Format::Json);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["name"], "ops");
        assert_eq!(value["role"], "admin");
        let entry = value["entry"].as_str().unwrap();
        let tokens = parse_admin_tokens(entry).unwrap();
        assert_eq!(tokens.len(), 1);
        assert!(value["token"].as_str().unwrap().starts_with("kga_"));
        assert!(!entry.contains(value["token"].as_str().unwrap()));
    }

    #[test]
    fn every_role_printed_is_read_back_as_the_same_role() {
        for role in [AdminRole::Service, AdminRole::Admin, AdminRole::Feed] {
            let out = issue("proxy", role, Format::Json);
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(value["role"], role.as_str());
            let tokens = parse_admin_tokens(value["entry"].as_str().unwrap()).unwrap();
            assert_eq!(tokens[0].role, role);
        }
    }

    #[test]
    fn env_output_is_two_quoted_assignments() {
        let out = render(
            "it's",
            AdminRole::Service,
            "kga_x",
            "it's:service:ab",
            Format::Env,
        );
        assert_eq!(
            out,
            "ADMIN_TOKEN='kga_x'\nKEYGATE_ADMIN_TOKENS='it'\\''s:service:ab'"
        );
    }

    #[test]
    fn names_that_would_break_the_entry_are_rejected() {
        for bad in ["", "a:b", "a,b", "a b", "a\tb"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_name("billing-backend").unwrap(), "billing-backend");
    }
}
