//! The agent's one Kubernetes client: kube's default stack plus a
//! client-side token bucket (`--k8s-client-qps`, `--k8s-client-burst`) in
//! front of every request, as client-go's rate limiter. Time spent waiting is
//! logged like client-go ("Waited for … due to client-side throttling") and
//! reported to a [`ThrottleObserver`] for the metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::{Layer, Service};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
/// Reservations may drive the balance negative; the caller then waits until
/// its token exists (golang.org/x/time/rate's `Reserve`).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` and `burst` are validated positive by the
    /// agent's configuration; smaller values are clamped to stay defined.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(1e-6),
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: now,
            }),
        }
    }

    /// The tokens there now (negative while reservations wait).
    pub fn available(&self, now: Instant) -> f64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        (s.tokens + elapsed * self.rate).min(self.burst)
    }

    /// The most tokens the bucket holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes one token if one is there now; whether it did.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now.max(s.last);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token; returns how long the caller must wait for it.
    pub fn reserve(&self, now: Instant) -> Duration {
        // A poisoned lock only means another request panicked mid-update;
        // the numbers inside are still usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now.max(s.last);
        s.tokens -= 1.0;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate)
        }
    }
}

/// Receives every throttling wait (zero waits included) and every
/// request's outcome, for metrics.
pub trait ThrottleObserver: Send + Sync {
    fn waited(&self, wait: Duration, method: &str, path: &str);
    /// A request finished: its status code, or `None` when no answer came.
    fn completed(&self, _method: &str, _path: &str, _query: Option<&str>, _code: Option<u16>) {}
}

/// An observer that records nothing.
pub struct NoObserver;

impl ThrottleObserver for NoObserver {
    fn waited(&self, _: Duration, _: &str, _: &str) {}
}

/// The tower layer that puts the bucket in front of a service.
#[derive(Clone)]
pub struct ThrottleLayer {
    bucket: Arc<TokenBucket>,
    observer: Arc<dyn ThrottleObserver>,
}

impl ThrottleLayer {
    pub fn new(qps: f64, burst: u32, observer: Arc<dyn ThrottleObserver>) -> Self {
        Self::with_bucket(
            Arc::new(TokenBucket::new(qps, burst, Instant::now())),
            observer,
        )
    }

    /// A layer over a bucket the caller also reads (see [`ClientBudget`]).
    pub fn with_bucket(bucket: Arc<TokenBucket>, observer: Arc<dyn ThrottleObserver>) -> Self {
        ThrottleLayer { bucket, observer }
    }
}

/// The client's token bucket, readable by those who want to leave room
/// for more urgent requests (acquisitions wait while renewals need it).
pub type ClientBudget = Arc<TokenBucket>;

/// The budget of writes nobody waits for (Events, the Service's Announced
/// condition): at most a fifth of the client rate, and only while the
/// client's bucket holds at least half its burst, so that announcing many
/// Services at once never queues a heartbeat, a renewal or a record write
/// behind a thousand informational writes.
#[derive(Debug)]
pub struct Background {
    own: TokenBucket,
    client: Option<ClientBudget>,
}

impl Background {
    pub fn new(client_qps: f64, client: Option<ClientBudget>) -> Arc<Background> {
        Arc::new(Background {
            own: TokenBucket::new((client_qps / 5.0).max(0.2), 2, Instant::now()),
            client,
        })
    }

    /// Takes a token if a background write may go now.
    pub fn try_take(&self, now: Instant) -> bool {
        if self
            .client
            .as_ref()
            .is_some_and(|c| c.available(now) < c.burst() / 2.0)
        {
            return false;
        }
        self.own.try_take(now)
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            bucket: self.bucket.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// A service whose requests each wait for a token first.
#[derive(Clone)]
pub struct Throttle<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
    observer: Arc<dyn ThrottleObserver>,
}

/// client-go logs waits above this at info level, and shorter ones not.
const LONG_THROTTLE: Duration = Duration::from_secs(1);

impl<S, B, RB> Service<http::Request<B>> for Throttle<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let wait = self.bucket.reserve(Instant::now());
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        self.observer.waited(wait, &method, &path);
        let observer = self.observer.clone();
        // The readied inner service serves this request; a fresh clone takes
        // its place for the next one (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if !wait.is_zero() {
                if wait >= LONG_THROTTLE {
                    tracing::info!(
                        "Waited for {:.6}s due to client-side throttling, request: {}:{}",
                        wait.as_secs_f64(),
                        method,
                        path
                    );
                } else {
                    tracing::debug!(wait_seconds = wait.as_secs_f64(), %method, %path, "client-side throttling");
                }
                tokio::time::sleep(wait).await;
            }
            let result = inner.call(req).await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            observer.completed(&method, &path, query.as_deref(), code);
            result
        })
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("no Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("client: {0}")]
    Build(#[from] kube::Error),
}

/// Loads the configuration: an explicit kubeconfig file, else kube's
/// inference (in-cluster service account, then $KUBECONFIG / ~/.kube).
pub async fn load_config(
    kubeconfig: Option<&std::path::Path>,
) -> Result<kube::Config, ClientError> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            Ok(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)
        }
        None => Ok(kube::Config::infer().await?),
    }
}

/// Builds the throttled client. Call once, on the System arbiter, and clone.
/// Requests carry `User-Agent: l2announcer/<version> (<node>)`.
pub fn build_client(
    config: kube::Config,
    node: &str,
    qps: f64,
    burst: u32,
    observer: Arc<dyn ThrottleObserver>,
) -> Result<kube::Client, ClientError> {
    build_client_with_budget(config, node, qps, burst, observer).map(|(c, _)| c)
}

/// [`build_client`], also returning the client's token bucket.
pub fn build_client_with_budget(
    mut config: kube::Config,
    node: &str,
    qps: f64,
    burst: u32,
    observer: Arc<dyn ThrottleObserver>,
) -> Result<(kube::Client, ClientBudget), ClientError> {
    let agent = format!("l2announcer/{} ({node})", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    let builder = kube::client::ClientBuilder::try_from(config)?;
    let bucket = Arc::new(TokenBucket::new(qps, burst, Instant::now()));
    // kube's stack is not Clone; a buffer in front of it makes it so (its
    // worker task runs on the runtime that builds the client).
    let client = builder
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&ThrottleLayer::with_bucket(bucket.clone(), observer))
        .build();
    Ok((client, bucket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_writes_leave_half_the_burst_and_keep_to_a_fifth() {
        let t0 = Instant::now();
        let client = Arc::new(TokenBucket::new(5.0, 10, t0));
        let bg = Background::new(5.0, Some(client.clone()));
        // Its own burst of 2, then one per second (a fifth of 5/s).
        assert!(bg.try_take(t0));
        assert!(bg.try_take(t0));
        assert!(!bg.try_take(t0));
        assert!(bg.try_take(t0 + Duration::from_millis(1100)));
        // The client's bucket below half its burst: none at all.
        let t5 = t0 + Duration::from_secs(5);
        assert!(bg.try_take(t5));
        for _ in 0..6 {
            client.reserve(t5);
        }
        assert!(!bg.try_take(t5 + Duration::from_millis(100)));
    }

    #[test]
    fn burst_is_free_then_requests_are_spaced_by_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(2.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        assert_eq!(b.reserve(t0), Duration::from_millis(500));
        assert_eq!(b.reserve(t0), Duration::from_millis(1000));
        // Two seconds later the balance is -2 + 4 = 2 tokens.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(b.reserve(t2), Duration::ZERO);
        assert_eq!(b.reserve(t2), Duration::ZERO);
        assert_eq!(b.reserve(t2), Duration::from_millis(500));
    }

    #[test]
    fn tokens_never_exceed_the_burst() {
        let t0 = Instant::now();
        let b = TokenBucket::new(100.0, 2, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::from_millis(10));
    }
}
