//! The `status` view (`kubectl pipedream status`): one line per ConnectedAccount with its expiry horizon and Ready
//! reason. Pure: built from the objects and the clock, so it is tested without a cluster.

use jiff::Timestamp;

use crate::crd::ConnectedAccount;
use crate::schedule::parse_ts;

/// One line of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.accountId`.
    pub account: String,
    /// `True`, `False` or `Unknown`.
    pub ready: String,
    /// The Ready reason (empty before the first pass).
    pub reason: String,
    /// Time until the credentials in the Secret expire, e.g. `54m`, `expired 3m ago`, `-` (no expiry).
    pub expires_in: String,
    /// Time until the next sync, e.g. `49m`, `due`.
    pub next_sync: String,
    /// The Secret written.
    pub secret: String,
}

/// `1h2m`, `5m`, `42s` (whole seconds, two largest units).
pub fn humanize(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec > 0 && m < 10 => format!("{m}m{sec}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// The row of one ConnectedAccount at `now`.
pub fn row(ca: &ConnectedAccount, now: Timestamp) -> Row {
    let status = ca.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let until = |t: Option<&String>| {
        t.and_then(|s| parse_ts(s))
            .map(|t| t.as_second() - now.as_second())
    };
    let expires_in = match until(status.expires_at.as_ref()) {
        None => "-".to_string(),
        Some(s) if s <= 0 => format!("expired {} ago", humanize(s)),
        Some(s) => humanize(s),
    };
    let next_sync = match until(status.next_sync_time.as_ref()) {
        None => "-".to_string(),
        Some(s) if s <= 0 => "due".to_string(),
        Some(s) => humanize(s),
    };
    Row {
        namespace: ca.metadata.namespace.clone().unwrap_or_default(),
        name: ca.metadata.name.clone().unwrap_or_default(),
        account: ca.spec.account_id.clone(),
        ready: ready.map_or("Unknown", |c| c.status.as_str()).to_string(),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        expires_in,
        next_sync,
        secret: status.secret_name.unwrap_or_default(),
    }
}

/// Rows as an aligned table with a header, like `kubectl get`.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "ACCOUNT",
        "READY",
        "REASON",
        "EXPIRES IN",
        "NEXT SYNC",
        "SECRET",
    ];
    let cells: Vec<[&str; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.as_str(),
                &r.name,
                &r.account,
                &r.ready,
                &r.reason,
                &r.expires_in,
                &r.next_sync,
                &r.secret,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: &[&str; 8]| {
        let mut s = String::new();
        for (i, (v, w)) in c.iter().zip(widths).enumerate() {
            if i + 1 == c.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&header);
    for c in &cells {
        out.push('\n');
        out.push_str(&line(c));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca(status: serde_json::Value) -> ConnectedAccount {
        serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a"},
            "spec": {"accountId": "apn_X"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn rows_show_expiry_horizon_reason_and_next_sync() {
        let now: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
        let r = row(
            &ca(
                json!({"expiresAt": "2026-11-22T09:54:00Z", "nextSyncTime": "2026-11-22T09:49:05Z",
                "secretName": "gh", "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                "message": "", "lastTransitionTime": "2026-11-22T08:00:00Z"}]}),
            ),
            now,
        );
        assert_eq!(
            (
                r.ready.as_str(),
                r.reason.as_str(),
                r.expires_in.as_str(),
                r.next_sync.as_str()
            ),
            ("True", "Synced", "54m", "49m")
        );
        let r = row(
            &ca(
                json!({"expiresAt": "2026-11-22T08:57:00Z", "nextSyncTime": "2026-11-22T08:59:59Z",
                "conditions": [{"type": "Ready", "status": "False", "reason": "Expired",
                "message": "", "lastTransitionTime": "2026-11-22T08:00:00Z"}]}),
            ),
            now,
        );
        assert_eq!(
            (r.expires_in.as_str(), r.next_sync.as_str()),
            ("expired 3m ago", "due")
        );
        let r = row(&ca(json!({})), now);
        assert_eq!((r.ready.as_str(), r.expires_in.as_str()), ("Unknown", "-"));
        let t = table(&[r]);
        assert!(
            t.starts_with(
                "NAMESPACE   NAME   ACCOUNT   READY     REASON   EXPIRES IN   NEXT SYNC   SECRET\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn humanize_keeps_two_units() {
        assert_eq!(humanize(42), "42s");
        assert_eq!(humanize(5 * 60 + 3), "5m3s");
        assert_eq!(humanize(3600 + 120), "1h2m");
        assert_eq!(humanize(2 * 86_400 + 3 * 3600 + 5), "2d3h");
        assert_eq!(humanize(-90), "1m30s");
    }
}
