//! What the spec means beyond what the CRD schema can check: durations parsed and bounded, label and annotation
//! keys, template syntax and keys. Pure.

use std::time::Duration;

use crate::crd::{ConnectedAccountSpec, CreationPolicy, DeletionPolicy, TargetSpec};
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

/// The propagation time of a spec: its `spec.refresh.propagationTime`, else `default` (also for a value that does
/// not parse, which [`validate_spec`] reports).
pub fn propagation(spec: &ConnectedAccountSpec, default: Duration) -> Duration {
    spec.refresh
        .propagation_time
        .as_deref()
        .and_then(schedule::parse_duration)
        .unwrap_or(default)
}

/// Check what the CRD schema cannot: parse durations, compile templates within the allowed language, key syntax.
/// `default_propagation` applies without `spec.refresh.propagationTime`.
pub fn validate_spec(
    spec: &ConnectedAccountSpec,
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
        &spec.refresh.before_expiry,
        Duration::from_secs(5),
    )?;
    let interval = dur(
        "spec.refresh.interval",
        &spec.refresh.interval,
        Duration::from_secs(10),
    )?;
    let min_restart_interval = dur(
        "spec.minRestartInterval",
        &spec.min_restart_interval,
        Duration::ZERO,
    )?;
    let propagation = match &spec.refresh.propagation_time {
        Some(v) => dur("spec.refresh.propagationTime", v, Duration::ZERO)?,
        None => default_propagation,
    };
    validate_target(&spec.target)?;
    Ok(Validated {
        policy: Policy {
            before_expiry,
            interval,
            propagation,
        },
        min_restart_interval,
    })
}

/// Check `spec.target`: label and annotation keys, types and keys Kubernetes acts on, the policies, the template.
/// The error message names the field.
fn validate_target(target: &TargetSpec) -> Result<(), SyncFailure> {
    let invalid = |m: String| SyncFailure::new(Reason::InvalidSpec, m);
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
    // The CRD refuses these at admission; objects stored before it did are refused here.
    if let Some(t) = target.type_.as_deref().filter(|t| reserved_type(t)) {
        return Err(invalid(format!(
            "spec.target.type: {t} is a type Kubernetes or Helm acts on; use Opaque, a kubernetes.io credential type or a type of your own domain"
        )));
    }
    if let Some(k) = target
        .labels
        .keys()
        .find(|k| domain_of(k).is_some_and(is_operator_domain))
    {
        return Err(invalid(format!(
            "spec.target.labels[{k}]: keys of the pipedream-secrets.io domain belong to the operator"
        )));
    }
    if let Some(k) = target.annotations.keys().find(|k| reserved_annotation(k)) {
        return Err(invalid(format!(
            "spec.target.annotations[{k}]: keys of the pipedream-secrets.io, kubernetes.io and k8s.io domains are not allowed (app.kubernetes.io is)"
        )));
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
    Ok(())
}

/// Secret types the operator will not write: their contents make Kubernetes or Helm act (a service-account-token
/// Secret gets a token minted for the ServiceAccount its annotation names; bootstrap tokens authenticate nodes;
/// `helm.sh/release.v1` is Helm's release record).
pub fn reserved_type(t: &str) -> bool {
    const ALLOWED: [&str; 6] = [
        "Opaque",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
    ];
    !ALLOWED.contains(&t)
        && domain_of(t).is_some_and(|d| {
            ["kubernetes.io", "k8s.io", "helm.sh"]
                .iter()
                .any(|r| in_domain(d, r))
        })
}

/// Annotation keys a tenant may not set on the Secret: the operator's own (owner, expiry, Merge writers) and
/// Kubernetes' (`kubernetes.io/service-account.name` and the like), except the `app.kubernetes.io` labels' domain.
pub fn reserved_annotation(k: &str) -> bool {
    domain_of(k).is_some_and(|d| {
        is_operator_domain(d)
            || (d != "app.kubernetes.io"
                && (in_domain(d, "kubernetes.io") || in_domain(d, "k8s.io")))
    })
}

fn is_operator_domain(d: &str) -> bool {
    in_domain(d, "pipedream-secrets.io")
}

/// The prefix of a `prefix/name` key or type.
fn domain_of(k: &str) -> Option<&str> {
    k.split_once('/').map(|(d, _)| d)
}

/// `d` is `domain` or one of its subdomains.
fn in_domain(d: &str, domain: &str) -> bool {
    d == domain || d.strip_suffix(domain).is_some_and(|p| p.ends_with('.'))
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

    /// Issue 25 (9): types and keys with side effects, for objects stored before the CRD refused them.
    #[test]
    fn types_and_keys_kubernetes_acts_on_are_refused() {
        for t in [
            "kubernetes.io/service-account-token",
            "bootstrap.kubernetes.io/token",
            "helm.sh/release.v1",
            "kubernetes.io/anything-new",
        ] {
            assert!(reserved_type(t), "{t}");
        }
        for t in [
            "Opaque",
            "kubernetes.io/basic-auth",
            "kubernetes.io/dockerconfigjson",
            "example.com/token",
            "notkubernetes.io/x",
            "custom",
        ] {
            assert!(!reserved_type(t), "{t}");
        }
        for k in [
            "kubernetes.io/service-account.name",
            "kubectl.kubernetes.io/last-applied-configuration",
            "k8s.io/x",
            "pipedream-secrets.io/connected-account",
            "merge.pipedream-secrets.io/uid",
        ] {
            assert!(reserved_annotation(k), "{k}");
        }
        for k in [
            "app.kubernetes.io/description",
            "reloader.stakater.com/match",
            "description",
            "mykubernetes.io/x",
        ] {
            assert!(!reserved_annotation(k), "{k}");
        }
        let ca = |target: serde_json::Value| -> ConnectedAccountSpec {
            serde_json::from_value(json!({"accountId": "apn_A1", "target": target})).unwrap()
        };
        for (target, field) in [
            (
                json!({"type": "kubernetes.io/service-account-token"}),
                "spec.target.type",
            ),
            (
                json!({"labels": {"pipedream-secrets.io/managed": "false"}}),
                "spec.target.labels[pipedream-secrets.io/managed]",
            ),
            (
                json!({"annotations": {"kubernetes.io/service-account.name": "default"}}),
                "spec.target.annotations[kubernetes.io/service-account.name]",
            ),
        ] {
            let e = validate_spec(&ca(target), schedule::DEFAULT_PROPAGATION).unwrap_err();
            assert!(e.message.starts_with(field), "{}", e.message);
        }
    }

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
        let c: ConnectedAccountSpec = serde_json::from_value(json!({
            "accountId": "apn_A1", "target": {"annotations": {"bad key!": "v"}}}))
        .unwrap();
        let e = validate_spec(&c, schedule::DEFAULT_PROPAGATION).unwrap_err();
        assert!(
            e.message.starts_with("spec.target.annotations[bad key!]"),
            "{}",
            e.message
        );
    }
}
