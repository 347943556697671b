//! Who may use a ClusterPipedreamConnection: pure decisions over its `access` rules.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::crd::AccessRule;
use crate::pipedream::Account;

/// Whether a namespace may use a cluster connection, and under which rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// No rule admits the namespace.
    Denied,
    /// Admitted with no narrowing (empty `access` and the operator's own namespace).
    Unrestricted,
    /// Admitted by these rules; the fetched account must satisfy one of them.
    Rules(Vec<AccessRule>),
}

/// Whether any rule needs the namespace's labels.
pub fn needs_namespace_labels(rules: &[AccessRule]) -> bool {
    rules.iter().any(|r| r.namespace_selector.is_some())
}

/// Decide namespace admission. `labels` are the namespace's labels (only needed for selector rules).
pub fn admit_namespace(
    rules: &[AccessRule],
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    operator_namespace: &str,
) -> Admission {
    if rules.is_empty() {
        return if namespace == operator_namespace {
            Admission::Unrestricted
        } else {
            Admission::Denied
        };
    }
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let matching: Vec<AccessRule> = rules
        .iter()
        .filter(|r| {
            r.namespaces.iter().any(|n| n == namespace || n == "*")
                || r.namespace_selector.as_ref().is_some_and(|sel| {
                    Selector::try_from(sel.clone())
                        .map(|s| s.matches(labels))
                        .unwrap_or(false)
                })
        })
        .cloned()
        .collect();
    if matching.is_empty() {
        Admission::Denied
    } else {
        Admission::Rules(matching)
    }
}

/// Whether the fetched account satisfies the narrowing of at least one admitting rule.
pub fn admit_account(admission: &Admission, account: &Account) -> bool {
    match admission {
        Admission::Denied => false,
        Admission::Unrestricted => true,
        Admission::Rules(rules) => rules.iter().any(|r| {
            (r.external_user_ids.is_empty()
                || account
                    .external_id
                    .as_ref()
                    .is_some_and(|e| r.external_user_ids.contains(e)))
                && (r.apps.is_empty()
                    || account
                        .app_slug()
                        .is_some_and(|a| r.apps.iter().any(|x| x == a)))
                && (r.account_ids.is_empty() || r.account_ids.contains(&account.id))
        }),
    }
}
