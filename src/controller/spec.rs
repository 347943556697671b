//! What the spec means beyond what the CRD schema can check: durations parsed and bounded, label and annotation
//! keys, template syntax and keys. Pure.

use std::time::Duration;

use crate::crd::{ConnectedAccount, CreationPolicy, DeletionPolicy};
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, Policy};
use crate::template;

/// Validated, parsed spec settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Schedule policy.
    pub policy: Policy,
    /// Least time between rollout restarts.
    pub min_restart_interval: Duration,
}

/// The propagation time of `ca`: its `spec.refresh.propagationTime`, else `default` (also for a value that does
/// not parse, which [`validate_spec`] reports).
pub fn propagation(ca: &ConnectedAccount, default: Duration) -> Duration {
    ca.spec
        .refresh
        .propagation_time
        .as_deref()
        .and_then(schedule::parse_duration)
        .unwrap_or(default)
}

/// Check what the CRD schema cannot: parse durations, compile templates within the allowed language, key syntax.
/// `default_propagation` applies without `spec.refresh.propagationTime`.
pub fn validate_spec(
    ca: &ConnectedAccount,
    default_propagation: Duration,
) -> Result<Validated, SyncFailure> {
    let invalid = |m: String| SyncFailure::new(Reason::InvalidSpec, m);
    let dur = |field: &str, v: &str, min: Duration| {
        let d = schedule::parse_duration(v).ok_or_else(|| {
            invalid(format!(
                "{field}: {v:?} is not a duration like 30s, 5m or 1h30m"
            ))
        })?;
        if d < min {
            return Err(invalid(format!(
                "{field}: {v} is below the minimum of {}s",
                min.as_secs()
            )));
        }
        Ok(d)
    };
    let before_expiry = dur(
        "spec.refresh.beforeExpiry",
        &ca.spec.refresh.before_expiry,
        Duration::from_secs(5),
    )?;
    let interval = dur(
        "spec.refresh.interval",
        &ca.spec.refresh.interval,
        Duration::from_secs(10),
    )?;
    let min_restart_interval = dur(
        "spec.minRestartInterval",
        &ca.spec.min_restart_interval,
        Duration::ZERO,
    )?;
    let propagation = match &ca.spec.refresh.propagation_time {
        Some(v) => dur("spec.refresh.propagationTime", v, Duration::ZERO)?,
        None => default_propagation,
    };
    let target = &ca.spec.target;
    for (field, map) in [
        ("labels", &target.labels),
        ("annotations", &target.annotations),
    ] {
        if let Some(k) = map.keys().find(|k| !is_qualified_name(k)) {
            return Err(invalid(format!(
                "spec.target.{field}[{k}]: not a valid key (an optional DNS-subdomain prefix and '/', then up to 63 letters, digits, '-', '_', '.')"
            )));
        }
    }
    if target.creation_policy != CreationPolicy::Owner
        && target.deletion_policy == DeletionPolicy::Delete
    {
        return Err(invalid(
            "spec.target.deletionPolicy: Delete needs creationPolicy Owner; use Retain".into(),
        ));
    }
    if let Some(t) = &target.template {
        if t.data.is_empty() {
            return Err(invalid(
                "spec.target.template.data: at least one key is required".into(),
            ));
        }
        if let Some(k) = t.data.keys().find(|k| !template::is_valid_secret_key(k)) {
            return Err(invalid(format!(
                "spec.target.template.data[{k}]: not a valid Secret key"
            )));
        }
        template::validate(&t.data).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Validated {
        policy: Policy {
            before_expiry,
            interval,
            propagation,
        },
        min_restart_interval,
    })
}

/// Label and annotation key syntax, as the API server checks it: `[prefix/]name`, prefix a DNS subdomain of at
/// most 253 characters, name at most 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn is_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Regression (issue 7): label and annotation keys the API server refuses only failed the Secret write.
    #[test]
    fn label_and_annotation_keys_are_checked_before_anything_is_written() {
        for ok in [
            "team",
            "app.kubernetes.io/name",
            "example.com/a_b-c.d",
            "A1",
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "x-",
            "a/b/c",
            "/x",
            "Example.com/x",
            "a b",
            &"x".repeat(64),
            "a..b/c",
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        let c: ConnectedAccount = serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a"},
            "spec": {"accountId": "apn_A1", "target": {"annotations": {"bad key!": "v"}}}}))
        .unwrap();
        let e = validate_spec(&c, schedule::DEFAULT_PROPAGATION).unwrap_err();
        assert!(
            e.message.starts_with("spec.target.annotations[bad key!]"),
            "{}",
            e.message
        );
    }
}
