//! The `status` view (`kubectl pipedream status`): one line per ConnectedAccount with its expiry horizon and Ready
//! reason, or one ConnectedAccount in detail. Pure: built from the objects and the clock, so it is tested without
//! a cluster. Never holds a credential value: of the Secret only key names are kept.

use jiff::Timestamp;
use serde::Serialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::{ConnectedAccount, EXPIRES_AT_ANNOTATION};
use crate::schedule::parse_ts;

/// One line of the view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
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
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::crd::READY);
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

/// The target Secret as `status NAME` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretState {
    /// Name.
    pub name: String,
    /// It exists.
    pub exists: bool,
    /// Its keys (never values).
    pub keys: Vec<String>,
    /// The expires-at annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SecretState {
    /// From the Secret, if any: key names and the expiry annotation; the values are dropped here.
    pub fn of(name: &str, secret: Option<&k8s_openapi::api::core::v1::Secret>) -> Self {
        let keys = secret
            .and_then(|s| s.data.as_ref())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        Self {
            name: name.into(),
            exists: secret.is_some(),
            keys,
            expires_at: secret
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get(EXPIRES_AT_ANNOTATION).cloned()),
            error: None,
        }
    }

    /// A Secret this user may not read.
    pub fn unreadable(name: &str, error: &str) -> Self {
        Self {
            name: name.into(),
            exists: false,
            keys: Vec::new(),
            expires_at: None,
            error: Some(error.into()),
        }
    }
}

/// The connection as `status NAME` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionState {
    /// `Kind/name`, empty before the first pass.
    pub name: String,
    /// Its Ready condition: `True`, `False`, `Unknown`, or `NotFound`.
    pub ready: String,
    /// The reason and message of that condition.
    pub reason: String,
    /// Message.
    pub message: String,
}

impl ConnectionState {
    /// From the connection's conditions (`Ok(None)`: it does not exist).
    pub fn of<E: std::fmt::Display>(name: &str, got: Result<Option<Vec<Condition>>, E>) -> Self {
        let (ready, reason, message) = match got {
            Ok(Some(conditions)) => {
                match conditions.iter().find(|c| c.type_ == crate::crd::READY) {
                    Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
                    None => ("Unknown".into(), String::new(), String::new()),
                }
            }
            Ok(None) => ("NotFound".into(), String::new(), String::new()),
            Err(e) => ("Unknown".into(), "Unreadable".into(), e.to_string()),
        };
        Self {
            name: name.into(),
            ready,
            reason,
            message,
        }
    }

    /// No connection recorded yet.
    pub fn unknown() -> Self {
        Self::of::<String>("", Ok(Some(Vec::new())))
    }
}

/// One Event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    /// When it last happened.
    pub time: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// `ConnectedAccount` or `Secret`.
    pub object: String,
    /// Message (the operator's Events never carry credential values).
    pub message: String,
    /// How often.
    pub count: i32,
}

impl EventLine {
    /// From a core/v1 view of an Event.
    pub fn of(e: &k8s_openapi::api::core::v1::Event) -> Self {
        let time = e
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0.to_string()))
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
            .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
            .or_else(|| {
                e.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .unwrap_or_default();
        Self {
            time,
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            object: e.involved_object.kind.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1),
        }
    }
}

/// One ConnectedAccount in detail.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// The table's line.
    #[serde(flatten)]
    pub row: Row,
    /// Its conditions.
    pub conditions: Vec<Condition>,
    /// `status.expiresAt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `status.nextSyncTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<String>,
    /// `status.lastSyncTime`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// The Secret.
    pub secret_state: SecretState,
    /// The connection.
    pub connection: ConnectionState,
    /// Recent Events of the ConnectedAccount and its Secret, oldest first.
    pub events: Vec<EventLine>,
}

impl Detail {
    /// Put the pieces together.
    pub fn build(
        ca: &ConnectedAccount,
        secret_state: SecretState,
        connection: ConnectionState,
        mut events: Vec<EventLine>,
        now: Timestamp,
    ) -> Self {
        let status = ca.status.clone().unwrap_or_default();
        events.sort_by(|a, b| a.time.cmp(&b.time));
        let keep = events.len().saturating_sub(20);
        events.drain(..keep);
        Self {
            row: row(ca, now),
            conditions: status.conditions,
            expires_at: status.expires_at,
            next_sync_time: status.next_sync_time,
            last_sync_time: status.last_sync_time,
            secret_state,
            connection,
            events,
        }
    }
}

/// `status NAME` as text, like `kubectl describe`.
pub fn describe(d: &Detail) -> String {
    let r = &d.row;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "Name:          {}\nNamespace:     {}\nAccount:       {}\nReady:         {} {}\nExpires:       {} ({})\nNext sync:     {} ({})\nLast sync:     {}\n",
        r.name,
        r.namespace,
        r.account,
        r.ready,
        r.reason,
        or_dash(&d.expires_at),
        r.expires_in,
        or_dash(&d.next_sync_time),
        r.next_sync,
        or_dash(&d.last_sync_time),
    );
    let s = &d.secret_state;
    let secret = match (&s.error, s.exists) {
        (Some(e), _) => format!("{} (cannot read: {e})", s.name),
        (None, false) => format!("{} (does not exist)", s.name),
        (None, true) => format!("{} keys: {}", s.name, s.keys.join(", ")),
    };
    out.push_str(&format!("Secret:        {secret}\n"));
    let c = &d.connection;
    out.push_str(&format!(
        "Connection:    {} Ready={} {} {}\n",
        if c.name.is_empty() { "-" } else { &c.name },
        c.ready,
        c.reason,
        c.message
    ));
    out.push_str("Conditions:\n");
    for c in &d.conditions {
        out.push_str(&format!(
            "  {:<8} {:<6} {:<22} {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    out.push_str("Events:\n");
    if d.events.is_empty() {
        out.push_str("  <none>\n");
    }
    for e in &d.events {
        out.push_str(&format!(
            "  {}  {:<7} {:<18} {:<16} {} (x{})\n",
            e.time, e.type_, e.reason, e.object, e.message, e.count
        ));
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests;
