//! Opt-in RBAC enforcement, evaluated as the real authorizer does for the verbs the operator and kubectl use:
//! RoleBindings in the request's namespace and ClusterRoleBindings grant the rules of the Role or ClusterRole they
//! reference to their subjects (`ServiceAccount`, `User`, `Group`); a rule matches on API group, resource (or
//! `resource/subresource`), verb and, when listed, resource name; `*` matches anything.
//!
//! Only service-account users (`system:serviceaccount:<ns>:<name>`, from the bearer token) are checked; any other
//! user is the test's administrator. Aggregated ClusterRoles and non-resource URLs are not modelled (discovery and
//! OpenAPI are open to all, as the default `system:discovery` role makes them).

use serde_json::Value;

use super::catalog::Kind;
use super::store::{ApiError, Store};

const RBAC: &str = "rbac.authorization.k8s.io";

/// One authorization question.
pub struct Request<'a> {
    /// User from the bearer token.
    pub user: &'a str,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …).
    pub verb: &'a str,
    /// API group ("" for core).
    pub group: &'a str,
    /// Plural resource.
    pub resource: &'a str,
    /// Subresource (`status`, `finalizers`), if any.
    pub subresource: Option<&'a str>,
    /// Namespace ("" for cluster-scoped or all-namespaces requests).
    pub namespace: &'a str,
    /// Object name, if the request names one.
    pub name: Option<&'a str>,
}

/// Whether `user` is subject to enforcement.
pub fn enforced(user: &str) -> bool {
    user.starts_with("system:serviceaccount:")
}

fn subject_matches(subject: &Value, user: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            user == format!("system:serviceaccount:{ns}:{name}")
        }
        Some("User") => user == name,
        Some("Group") => {
            let sa_ns = user
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
                .map(|(ns, _)| ns);
            name == "system:authenticated"
                || (enforced(user) && name == "system:serviceaccounts")
                || sa_ns.is_some_and(|ns| name == format!("system:serviceaccounts:{ns}"))
        }
        _ => false,
    }
}

fn any_is(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

fn rule_allows(rule: &Value, r: &Request) -> bool {
    let resource = match r.subresource {
        Some(sub) => format!("{}/{sub}", r.resource),
        None => r.resource.to_string(),
    };
    let names_ok = match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => r.name.is_some_and(|n| names.iter().any(|v| v == n)),
        _ => true,
    };
    any_is(&rule["apiGroups"], r.group)
        && any_is(&rule["resources"], &resource)
        && any_is(&rule["verbs"], r.verb)
        && names_ok
}

fn kind(store: &Store, plural: &str) -> Option<Kind> {
    // By key: cloning the whole catalog (CRD schemas included) per binding per request would be wasteful.
    store.kind(RBAC, "v1", plural)
}

fn role_rules(store: &Store, role_ref: &Value, binding_ns: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let (plural, ns) = match role_ref["kind"].as_str() {
        Some("Role") => ("roles", binding_ns),
        _ => ("clusterroles", ""),
    };
    kind(store, plural)
        .and_then(|k| store.get(&k, ns, name).ok())
        .and_then(|role| role["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// Allow, or a 403 shaped like the API server's.
pub fn authorize(store: &Store, r: &Request) -> Result<(), ApiError> {
    if !enforced(r.user) {
        return Ok(());
    }
    let mut bindings: Vec<(Value, String)> = Vec::new();
    if let Some(k) = kind(store, "clusterrolebindings") {
        bindings.extend(store.list(&k, "").into_iter().map(|b| (b, String::new())));
    }
    if !r.namespace.is_empty()
        && let Some(k) = kind(store, "rolebindings")
    {
        bindings.extend(
            store
                .list(&k, r.namespace)
                .into_iter()
                .map(|b| (b, r.namespace.to_string())),
        );
    }
    let allowed = bindings.iter().any(|(b, ns)| {
        b["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, r.user)))
            && role_rules(store, &b["roleRef"], ns)
                .iter()
                .any(|rule| rule_allows(rule, r))
    });
    if allowed {
        return Ok(());
    }
    let resource = match r.subresource {
        Some(sub) => format!("{}/{sub}", r.resource),
        None => r.resource.to_string(),
    };
    let target = match r.name {
        Some(n) => format!("{} \"{n}\"", r.resource),
        None => r.resource.to_string(),
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", r.namespace)
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{target} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            r.user, r.verb, r.group
        ),
    );
    e.details = Some(Box::new((
        r.group.to_string(),
        r.resource.to_string(),
        r.name.unwrap_or_default().to_string(),
    )));
    Err(e)
}
