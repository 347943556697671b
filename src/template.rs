//! Secret data rendering: raw credential fields or minijinja templates. Errors never quote credential values.

use std::collections::BTreeMap;

use base64::Engine;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::pipedream::{Account, Credentials};

/// A template that does not compile or render, naming the Secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.target.template.data[{key}]: {message}")]
pub struct TemplateError {
    /// The Secret key whose template failed.
    pub key: String,
    /// What failed (never a credential value).
    pub message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // minijinja would JSON-escape templates whose name ends in .json; Secret values are written verbatim.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("b64encode", |s: String| {
        base64::engine::general_purpose::STANDARD.encode(s)
    });
    env.add_filter(
        "b64decode",
        |s: String| -> Result<String, minijinja::Error> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "b64decode: input is not base64",
                    )
                })?;
            String::from_utf8(bytes).map_err(|_| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "b64decode: result is not UTF-8",
                )
            })
        },
    );
    env
}

fn describe(e: &minijinja::Error) -> String {
    // Syntax and undefined-variable details refer to the template text, never to values; other details might.
    let detail = match e.kind() {
        ErrorKind::SyntaxError
        | ErrorKind::UndefinedError
        | ErrorKind::UnknownFilter
        | ErrorKind::UnknownFunction => e.detail().map(|d| format!(": {d}")).unwrap_or_default(),
        _ => String::new(),
    };
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    format!("{}{detail}{line}", e.kind())
}

/// Check every template compiles (before anything is fetched).
pub fn validate(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    let env = environment();
    for (key, source) in templates {
        env.template_from_str(source).map_err(|e| TemplateError {
            key: key.clone(),
            message: describe(&e),
        })?;
    }
    Ok(())
}

/// The template context: `credentials`, `account`, `expires_at`.
fn context(credentials: &Credentials, account: &Account, expires_at: Option<&str>) -> Value {
    let app = account.app.clone().unwrap_or_default();
    let account_json = serde_json::json!({
        "id": account.id,
        "name": account.name,
        "external_id": account.external_id,
        "healthy": account.healthy,
        "dead": account.dead,
        "app": { "id": app.id, "name_slug": app.name_slug, "name": app.name, "auth_type": app.auth_type },
    });
    Value::from_serialize(serde_json::json!({
        "credentials": credentials.expose(),
        "account": account_json,
        "expires_at": expires_at,
    }))
}

/// Render each template against the fetched account.
pub fn render(
    templates: &BTreeMap<String, String>,
    credentials: &Credentials,
    account: &Account,
    expires_at: Option<&str>,
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let env = environment();
    let ctx = context(credentials, account, expires_at);
    templates
        .iter()
        .map(|(key, source)| {
            env.render_str(source, &ctx)
                .map(|s| (key.clone(), s.into_bytes()))
                .map_err(|e| TemplateError {
                    key: key.clone(),
                    message: describe(&e),
                })
        })
        .collect()
}

/// Without a template: every non-null credential field becomes one key; strings verbatim, other JSON values as
/// compact JSON. Fields whose names are not valid Secret keys are skipped and returned for logging.
pub fn raw_data(credentials: &Credentials) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut data = BTreeMap::new();
    let mut skipped = Vec::new();
    for (k, v) in credentials.expose() {
        if !is_valid_secret_key(k) {
            skipped.push(k.clone());
            continue;
        }
        match v {
            Json::Null => {}
            Json::String(s) => {
                data.insert(k.clone(), s.clone().into_bytes());
            }
            other => {
                data.insert(k.clone(), other.to_string().into_bytes());
            }
        }
    }
    (data, skipped)
}

/// Kubernetes Secret key syntax: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub fn is_valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account() -> Account {
        serde_json::from_value(json!({
            "id": "apn_X1", "external_id": "tenant-42", "healthy": true, "dead": false,
            "app": {"name_slug": "github", "name": "GitHub"},
            "credentials": {"oauth_access_token": "tok-SECRET", "expires_in": 3600, "nested": {"a": 1}, "gone": null, "bad key": "x"}
        }))
        .unwrap()
    }

    #[test]
    fn raw_data_keeps_strings_json_encodes_others_and_skips_bad_keys() {
        let a = account();
        let (data, skipped) = raw_data(a.credentials.as_ref().unwrap());
        assert_eq!(data["oauth_access_token"], b"tok-SECRET");
        assert_eq!(data["expires_in"], b"3600");
        assert_eq!(data["nested"], br#"{"a":1}"#);
        assert!(!data.contains_key("gone"));
        assert_eq!(skipped, vec!["bad key".to_string()]);
    }

    #[test]
    fn templates_render_credentials_account_and_expiry_without_escaping() {
        let a = account();
        let t: BTreeMap<String, String> = [
            ("GITHUB_TOKEN".to_string(), "{{ credentials.oauth_access_token }}".to_string()),
            ("config.json".to_string(), r#"{"token": "{{ credentials.oauth_access_token }}", "app": {{ account.app.name_slug | tojson }}}"#.to_string()),
            ("exp".to_string(), "{{ expires_at }}".to_string()),
            ("b64".to_string(), "{{ credentials.oauth_access_token | b64encode }}".to_string()),
        ]
        .into();
        let out = render(
            &t,
            a.credentials.as_ref().unwrap(),
            &a,
            Some("2026-11-22T10:00:00Z"),
        )
        .unwrap();
        assert_eq!(out["GITHUB_TOKEN"], b"tok-SECRET");
        assert_eq!(
            String::from_utf8(out["config.json"].clone()).unwrap(),
            r#"{"token": "tok-SECRET", "app": "github"}"#
        );
        assert_eq!(out["exp"], b"2026-11-22T10:00:00Z");
        assert_eq!(out["b64"], b"dG9rLVNFQ1JFVA==");
    }

    #[test]
    fn undefined_variables_and_syntax_errors_name_the_key_and_hide_values() {
        let a = account();
        let t: BTreeMap<String, String> =
            [("K".to_string(), "{{ credentials.missing }}".to_string())].into();
        let e = render(&t, a.credentials.as_ref().unwrap(), &a, None).unwrap_err();
        assert_eq!(e.key, "K");
        assert!(
            e.to_string().starts_with("spec.target.template.data[K]: "),
            "{e}"
        );
        let t: BTreeMap<String, String> = [(
            "K".to_string(),
            "{{ credentials.oauth_access_token + 1 }}".to_string(),
        )]
        .into();
        let e = render(&t, a.credentials.as_ref().unwrap(), &a, None).unwrap_err();
        assert!(!e.to_string().contains("tok-SECRET"), "{e}");
        let bad: BTreeMap<String, String> = [("K".to_string(), "{{ unclosed".to_string())].into();
        let e = validate(&bad).unwrap_err();
        assert!(e.message.contains("syntax"), "{e}");
    }
}
