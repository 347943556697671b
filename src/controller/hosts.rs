//! Which hosts a tenant's own connection may call: the SSRF guard of `--allowed-api-hosts`.

/// Hosts a tenant's `PipedreamConnection.spec.apiUrl` may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// Exact host names, or `*.suffix` for any subdomain of `suffix`.
    pub fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        Self(
            hosts
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    /// Whether a tenant's connection may call `api_url`: the host must be listed, and plain `http` is only for
    /// loopback hosts (tests).
    pub fn admit(&self, api_url: &str) -> Result<(), HostRefused> {
        let url = reqwest::Url::parse(api_url).map_err(|_| HostRefused::NotAUrl(api_url.into()))?;
        let host = url
            .host_str()
            .ok_or_else(|| HostRefused::NoHost(api_url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HostRefused::Credentials);
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            s => return Err(HostRefused::Scheme(s.into())),
        }
        let listed = self.0.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => *a == host,
        });
        if listed {
            Ok(())
        } else {
            Err(HostRefused::NotAllowed {
                host,
                allowed: self.0.join(", "),
            })
        }
    }
}

/// Why a tenant's `spec.apiUrl` may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefused {
    /// Not a URL.
    #[error("spec.apiUrl {0:?} is not a URL")]
    NotAUrl(String),
    /// A URL without a host.
    #[error("spec.apiUrl {0:?} has no host")]
    NoHost(String),
    /// User info in the URL.
    #[error("spec.apiUrl must not carry credentials")]
    Credentials,
    /// Not https (http only for loopback).
    #[error("spec.apiUrl uses {0}; only https is allowed (http only for loopback hosts)")]
    Scheme(String),
    /// The host is not listed.
    #[error(
        "spec.apiUrl host {host} is not among the operator's allowed Pipedream hosts ({allowed}); ask the cluster admin (--allowed-api-hosts)"
    )]
    NotAllowed {
        /// The host named.
        host: String,
        /// The allowed list.
        allowed: String,
    },
}

impl Default for AllowedHosts {
    fn default() -> Self {
        Self::new(["api.pipedream.com".to_string()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 7): a namespaced `apiUrl` could name any host (limited SSRF from inside the cluster).
    #[test]
    fn tenant_api_urls_must_name_an_allowed_host_over_https() {
        let a = AllowedHosts::default();
        assert!(a.admit("https://api.pipedream.com").is_ok());
        assert!(a.admit("https://API.pipedream.com/").is_ok());
        for bad in [
            "https://evil.example",
            "http://api.pipedream.com",
            "https://api.pipedream.com.evil.example",
            "https://user:pw@api.pipedream.com",
            "http://10.0.0.1:8080",
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(a.admit(bad).is_err(), "{bad}");
        }
        let tests = AllowedHosts::new(["127.0.0.1".into(), "*.pipedream.com".into(), "::1".into()]);
        assert!(tests.admit("http://127.0.0.1:8081").is_ok());
        assert!(tests.admit("http://[::1]:8081").is_ok());
        assert!(tests.admit("https://api2.pipedream.com").is_ok());
        assert!(tests.admit("https://pipedream.com.evil.example").is_err());
        let m = a.admit("https://evil.example").unwrap_err().to_string();
        assert!(
            m.contains("evil.example") && m.contains("--allowed-api-hosts"),
            "{m}"
        );
    }
}
