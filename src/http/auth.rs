//! Who may scrape `/metrics` when it is served with `--metrics-secure`: a client whose bearer token the API server
//! authenticates (TokenReview) and whose user it allows to `get` the non-resource URL `/metrics`
//! (SubjectAccessReview). This is controller-runtime's `filters.WithAuthenticationAndAuthorization`, and the same
//! RBAC rule Prometheus already holds to scrape the API server and the kubelets, so a Prometheus set up for those
//! needs only a binding to the chart's `metrics-reader` ClusterRole.
//!
//! Each decision is cached for a short while, keyed by a SHA-256 of the token (the token itself is never kept,
//! logged or put in an error), so a Prometheus scraping every 30 s costs the API server two reviews a minute, not
//! two a scrape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long an allowed token is trusted without asking again. Prometheus scrapes every 30 s by default, so this
/// saves every other pair of reviews; a revoked binding (or a deleted ServiceAccount) keeps its scrapes for at
/// most this long. controller-runtime caches authentication for a minute too.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);

/// How long a refusal (unknown token, or a user without the grant) is remembered: short, so a binding just
/// created works within seconds, yet a client repeating a bad token costs the API server one review pair per
/// this period instead of one per request.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);

/// Decisions kept at most. A key and a decision are a few dozen bytes, so this bounds the cache well under
/// 100 KiB however many distinct tokens clients invent; when full, the decision that expires first goes.
pub const MAX_CACHED: usize = 1024;

/// Reviews in flight at most. Beyond this a client gets 503 without a review: unauthenticated clients sending
/// fresh tokens in a loop cannot turn the operator into a load generator against the API server, nor queue up
/// tasks. A Prometheus whose decision is cached is answered without a review, so it is not held up by them.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 4;

/// A bearer token longer than this is refused without a review (ServiceAccount tokens are about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How long one review (both requests) may take before the scrape gets 503: a slow API server must not hold the
/// review slots, and the scrape that waits, for the client's full timeout.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of reviewing one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated, and allowed to `get` `/metrics`: 200.
    Allowed,
    /// Authenticated, but not allowed: 403.
    Forbidden,
    /// The API server does not know the token: 401.
    Unauthenticated,
}

/// Why a token could not be reviewed. No message carries the token.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Creating the review (`kind`: TokenReview or SubjectAccessReview) failed: `cause` is an API error's code and
    /// reason only (a refused review's message could quote the request), any other error's text with the token
    /// masked.
    #[error("{kind}: {cause}")]
    Create { kind: &'static str, cause: String },
    /// No answer within the review timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Asks whoever decides (the API server, or a test's stand-in) about one token. The error must not contain the
/// token.
pub trait Reviewer: Send + Sync {
    /// Review `token`.
    fn review<'a>(
        &'a self,
        token: &'a SecretString,
    ) -> BoxFuture<'a, Result<Decision, ReviewError>>;
}

/// The API server: a TokenReview, then a SubjectAccessReview for the user it names.
pub struct KubeReviewer {
    client: kube::Client,
}

impl KubeReviewer {
    /// Reviews with `client`, which needs `create` on `tokenreviews.authentication.k8s.io` and
    /// `subjectaccessreviews.authorization.k8s.io` (the chart grants both with `metrics.secure.enabled`).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    async fn ask(&self, token: &SecretString) -> Result<Decision, ReviewError> {
        let failed = |kind: &'static str| {
            move |e: kube::Error| ReviewError::Create {
                kind,
                cause: kube_error(&e).replace(token.expose_secret(), "<token>"),
            }
        };
        // No audiences: the API server's own, which is what ServiceAccount tokens mounted into Prometheus carry.
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.expose_secret().to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let review = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(failed("TokenReview"))?;
        let Some(status) = review.status else {
            return Ok(Decision::Unauthenticated);
        };
        if status.authenticated != Some(true) {
            return Ok(Decision::Unauthenticated);
        }
        let user = status.user.unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let access = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(failed("SubjectAccessReview"))?;
        Ok(if access.status.is_some_and(|s| s.allowed) {
            Decision::Allowed
        } else {
            Decision::Forbidden
        })
    }
}

/// An API error by its code and reason only: a refused review's message could quote the request.
fn kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
        other => other.to_string(),
    }
}

impl Reviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a SecretString,
    ) -> BoxFuture<'a, Result<Decision, ReviewError>> {
        Box::pin(self.ask(token))
    }
}

/// The check in front of `/metrics`: a cache of decisions and a bound on reviews in flight.
pub struct Gate {
    reviewer: Arc<dyn Reviewer>,
    cache: Mutex<HashMap<[u8; 32], (Decision, Instant)>>,
    reviews: Semaphore,
}

impl Gate {
    /// A gate asking `reviewer`.
    pub fn new(reviewer: Arc<dyn Reviewer>) -> Self {
        Self {
            reviewer,
            cache: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }

    /// `Ok` when the request's bearer token may scrape; otherwise the response to send (401, 403, or 503 when
    /// the token cannot be reviewed now).
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(token) = bearer(headers) else {
            return Err(unauthorized());
        };
        let key: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        let decision = match self.cached(&key) {
            Some(d) => d,
            None => {
                let Ok(_slot) = self.reviews.try_acquire() else {
                    return Err(busy("too many token reviews in flight"));
                };
                let review = tokio::time::timeout(REVIEW_TIMEOUT, self.reviewer.review(&token))
                    .await
                    .unwrap_or(Err(ReviewError::Timeout(REVIEW_TIMEOUT)));
                match review {
                    Ok(d) => {
                        self.remember(key, d);
                        d
                    }
                    Err(e) => {
                        // Not cached: the next scrape asks again.
                        tracing::warn!(error = %e, "cannot review a /metrics client's token");
                        return Err(busy("cannot review the token now"));
                    }
                }
            }
        };
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Forbidden => Err((
                StatusCode::FORBIDDEN,
                "forbidden: get on the non-resource URL /metrics is not granted (bind the metrics-reader ClusterRole)",
            )
                .into_response()),
            Decision::Unauthenticated => Err(unauthorized()),
        }
    }

    /// Decisions held now (for tests).
    pub fn cached_decisions(&self) -> usize {
        lock(&self.cache).len()
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Decision> {
        let cache = lock(&self.cache);
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(d, _)| *d)
    }

    fn remember(&self, key: [u8; 32], decision: Decision) {
        let ttl = match decision {
            Decision::Allowed => ALLOWED_TTL,
            Decision::Forbidden | Decision::Unauthenticated => REFUSED_TTL,
        };
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED && !cache.contains_key(&key) {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= MAX_CACHED {
                let soonest = cache
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key, (decision, now + ttl));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<SecretString> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_BYTES)
        .then(|| SecretString::from(token.to_string()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        "unauthorized: a bearer token the Kubernetes API server accepts is required",
    )
        .into_response()
}

fn busy(why: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        why,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Decides by the token's text (`allow…`, `deny…`, `fail…`, anything else unknown) and counts its reviews;
    /// `hold` keeps every review waiting until notified.
    #[derive(Default)]
    struct Fake {
        reviews: AtomicUsize,
        hold: Option<Arc<tokio::sync::Notify>>,
    }

    impl Reviewer for Fake {
        fn review<'a>(
            &'a self,
            token: &'a SecretString,
        ) -> BoxFuture<'a, Result<Decision, ReviewError>> {
            Box::pin(async move {
                self.reviews.fetch_add(1, Ordering::SeqCst);
                if let Some(h) = &self.hold {
                    h.notified().await;
                }
                let t = token.expose_secret();
                if t.starts_with("allow") {
                    Ok(Decision::Allowed)
                } else if t.starts_with("deny") {
                    Ok(Decision::Forbidden)
                } else if t.starts_with("fail") {
                    Err(ReviewError::Create {
                        kind: "TokenReview",
                        cause: "connection refused".into(),
                    })
                } else {
                    Ok(Decision::Unauthenticated)
                }
            })
        }
    }

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    async fn status(gate: &Gate, headers: &HeaderMap) -> u16 {
        match gate.check(headers).await {
            Ok(()) => 200,
            Err(r) => r.status().as_u16(),
        }
    }

    #[tokio::test]
    async fn no_token_or_another_scheme_is_401_without_a_review() {
        let fake = Arc::new(Fake::default());
        let gate = Gate::new(fake.clone());
        assert_eq!(status(&gate, &HeaderMap::new()).await, 401);
        assert_eq!(status(&gate, &with("Basic YWxsb3c6eA==")).await, 401);
        assert_eq!(status(&gate, &with("Bearer ")).await, 401);
        let huge = format!("Bearer allow{}", "x".repeat(MAX_TOKEN_BYTES));
        assert_eq!(status(&gate, &with(&huge)).await, 401);
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 0);
        let r = gate.check(&HeaderMap::new()).await.unwrap_err();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn decisions_map_to_200_403_401_and_review_errors_to_503() {
        let gate = Gate::new(Arc::new(Fake::default()));
        assert_eq!(status(&gate, &with("Bearer allow-1")).await, 200);
        assert_eq!(status(&gate, &with("bearer allow-1")).await, 200);
        assert_eq!(status(&gate, &with("Bearer deny-1")).await, 403);
        assert_eq!(status(&gate, &with("Bearer who-1")).await, 401);
        assert_eq!(status(&gate, &with("Bearer fail-1")).await, 503);
    }

    /// A token is reviewed once per TTL; refusals are remembered for less; errors not at all.
    #[tokio::test(start_paused = true)]
    async fn decisions_are_cached_for_their_ttl_and_errors_are_not() {
        let fake = Arc::new(Fake::default());
        let gate = Gate::new(fake.clone());
        let reviews = || fake.reviews.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(status(&gate, &with("Bearer allow-p")).await, 200);
        }
        assert_eq!(reviews(), 1);
        tokio::time::advance(ALLOWED_TTL - Duration::from_secs(1)).await;
        assert_eq!(status(&gate, &with("Bearer allow-p")).await, 200);
        assert_eq!(reviews(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(status(&gate, &with("Bearer allow-p")).await, 200);
        assert_eq!(reviews(), 2, "asked again after the TTL");

        assert_eq!(status(&gate, &with("Bearer deny-p")).await, 403);
        assert_eq!(status(&gate, &with("Bearer deny-p")).await, 403);
        assert_eq!(reviews(), 3);
        tokio::time::advance(REFUSED_TTL + Duration::from_secs(1)).await;
        assert_eq!(status(&gate, &with("Bearer deny-p")).await, 403);
        assert_eq!(reviews(), 4, "a refusal is remembered for REFUSED_TTL only");

        assert_eq!(status(&gate, &with("Bearer fail-p")).await, 503);
        assert_eq!(status(&gate, &with("Bearer fail-p")).await, 503);
        assert_eq!(reviews(), 6, "an error is not cached");
    }

    /// An API server that does not answer costs a scrape 503 after REVIEW_TIMEOUT, and frees the review slot.
    #[tokio::test(start_paused = true)]
    async fn a_review_without_an_answer_times_out() {
        let fake = Arc::new(Fake {
            hold: Some(Arc::new(tokio::sync::Notify::new())),
            ..Default::default()
        });
        let gate = Gate::new(fake.clone());
        let started = Instant::now();
        assert_eq!(status(&gate, &with("Bearer allow-stuck")).await, 503);
        assert_eq!(started.elapsed(), REVIEW_TIMEOUT);
        assert_eq!(gate.cached_decisions(), 0);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded_whatever_tokens_clients_invent() {
        let gate = Gate::new(Arc::new(Fake::default()));
        for i in 0..(MAX_CACHED * 2) {
            assert_eq!(
                status(&gate, &with(&format!("Bearer made-up-{i}"))).await,
                401
            );
        }
        assert_eq!(gate.cached_decisions(), MAX_CACHED);
        // A cached allowed token is still answered while the cache churns.
        assert_eq!(status(&gate, &with("Bearer allow-x")).await, 200);
        assert!(gate.cached_decisions() <= MAX_CACHED);
    }

    /// Reviews in flight are bounded; a client beyond gets 503, and a cached token is answered meanwhile.
    #[tokio::test]
    async fn reviews_in_flight_are_bounded_and_cached_tokens_pass_meanwhile() {
        let hold = Arc::new(tokio::sync::Notify::new());
        let fake = Arc::new(Fake {
            hold: Some(hold.clone()),
            ..Default::default()
        });
        let gate = Arc::new(Gate::new(fake.clone()));
        // Prime the cache with an allowed token.
        let primed = tokio::spawn({
            let gate = gate.clone();
            async move { status(&gate, &with("Bearer allow-prom")).await }
        });
        while fake.reviews.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        hold.notify_one();
        assert_eq!(primed.await.unwrap(), 200);
        let mut waiting = Vec::new();
        for i in 0..MAX_REVIEWS_IN_FLIGHT {
            let gate = gate.clone();
            waiting.push(tokio::spawn(async move {
                status(&gate, &with(&format!("Bearer slow-{i}"))).await
            }));
        }
        while fake.reviews.load(Ordering::SeqCst) < 1 + MAX_REVIEWS_IN_FLIGHT {
            tokio::task::yield_now().await;
        }
        assert_eq!(status(&gate, &with("Bearer another")).await, 503);
        assert_eq!(status(&gate, &with("Bearer allow-prom")).await, 200);
        hold.notify_waiters();
        for w in waiting {
            assert_eq!(w.await.unwrap(), 401);
        }
    }
}
