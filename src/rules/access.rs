//! Who may use a ClusterPipedreamConnection: pure decisions over its `access` rules.

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

/// Whether the admission narrows which accounts may be used (externalUserIds, apps or accountIds).
pub fn narrows(a: &Admission) -> bool {
    match a {
        Admission::Rules(rules) => rules.iter().any(|r| {
            !r.external_user_ids.is_empty() || !r.apps.is_empty() || !r.account_ids.is_empty()
        }),
        _ => false,
    }
}

/// Whether any rule needs the namespace's labels.
pub fn needs_namespace_labels(rules: &[AccessRule]) -> bool {
    rules.iter().any(|r| r.namespace_selector.is_some())
}

/// Decide namespace admission. `selects` says whether a rule's `namespaceSelector` selects the namespace (the
/// caller evaluates label selectors against the namespace's labels; it is asked only for rules that have one).
pub fn admit_namespace(
    rules: &[AccessRule],
    namespace: &str,
    selects: impl Fn(&AccessRule) -> bool,
    operator_namespace: &str,
) -> Admission {
    if rules.is_empty() {
        return if namespace == operator_namespace {
            Admission::Unrestricted
        } else {
            Admission::Denied
        };
    }
    let matching: Vec<AccessRule> = rules
        .iter()
        .filter(|r| {
            r.namespaces.iter().any(|n| n == namespace || n == "*")
                || (r.namespace_selector.is_some() && selects(r))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(ext: &str, app: &str) -> Account {
        serde_json::from_value(
            json!({"id": "apn_A1", "external_id": ext, "app": {"name_slug": app}}),
        )
        .unwrap()
    }

    #[test]
    fn empty_rules_admit_only_the_operator_namespace() {
        assert_eq!(
            admit_namespace(&[], "ops", |_| true, "ops"),
            Admission::Unrestricted
        );
        assert_eq!(
            admit_namespace(&[], "team-a", |_| true, "ops"),
            Admission::Denied
        );
    }

    #[test]
    fn namespaces_selector_and_narrowing() {
        let rules = vec![
            AccessRule {
                namespaces: vec!["team-a".into()],
                external_user_ids: vec!["tenant-42".into()],
                ..Default::default()
            },
            serde_json::from_value(json!({
                "namespaceSelector": {"matchLabels": {"pipedream": "yes"}},
                "apps": ["slack_bot"],
            }))
            .unwrap(),
        ];
        let none = |_: &AccessRule| false;
        // Stands for the API's label selector matching: team-b's labels match the second rule's selector.
        let team_b = |r: &AccessRule| r.namespace_selector.is_some();
        assert!(needs_namespace_labels(&rules));
        let a = admit_namespace(&rules, "team-a", none, "ops");
        assert!(admit_account(&a, &account("tenant-42", "github")));
        assert!(!admit_account(&a, &account("tenant-7", "github")));
        let b = admit_namespace(&rules, "team-b", team_b, "ops");
        assert!(admit_account(&b, &account("anyone", "slack_bot")));
        assert!(!admit_account(&b, &account("anyone", "github")));
        assert_eq!(
            admit_namespace(&rules, "team-c", none, "ops"),
            Admission::Denied
        );
        let star = vec![AccessRule {
            namespaces: vec!["*".into()],
            account_ids: vec!["apn_A1".into()],
            ..Default::default()
        }];
        assert!(admit_account(
            &admit_namespace(&star, "x", none, "ops"),
            &account("e", "a")
        ));
    }
}
