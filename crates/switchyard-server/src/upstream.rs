//! Upstream mode: mirror the flags of an existing PostHog (its local evaluation API, with a
//! personal API key) into one project. Every good snapshot is persisted in the control store
//! and swapped in; while upstream fails, the last persisted snapshot keeps being served —
//! across restarts too — and is reported stale (response metadata and `/metrics`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::UpstreamSettings;
use crate::flags::project_flags_from_posthog;
use crate::AppState;

/// What the mirror knows about its snapshot.
pub struct MirrorState {
    interval: Duration,
    /// When the snapshot being served was last confirmed by upstream.
    fetched_at: Mutex<Option<DateTime<Utc>>>,
    last_error: Mutex<Option<String>>,
    failing: AtomicBool,
    etag: Mutex<Option<String>>,
}

impl MirrorState {
    pub fn new(interval: Duration) -> Self {
        MirrorState { interval, fetched_at: Mutex::new(None), last_error: Mutex::new(None), failing: AtomicBool::new(false), etag: Mutex::new(None) }
    }

    pub fn age_seconds(&self) -> Option<i64> {
        self.fetched_at.lock().expect("mirror lock").map(|t| (Utc::now() - t).num_seconds().max(0))
    }

    /// Stale: the last attempt failed, or the snapshot is older than two poll intervals.
    pub fn is_stale(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
            || self.age_seconds().is_none_or(|age| age as u64 > 2 * self.interval.as_secs().max(1))
    }

    pub fn describe(&self) -> Value {
        json!({
            "source": "upstream",
            "fetched_at": self.fetched_at.lock().expect("mirror lock").map(|t| t.to_rfc3339()),
            "age_seconds": self.age_seconds(),
            "stale": self.is_stale(),
            "last_error": *self.last_error.lock().expect("mirror lock"),
        })
    }
}

/// Registers the mirror and installs the persisted snapshot, if there is one.
pub fn restore(state: &AppState, project_id: i64, settings: &UpstreamSettings) -> anyhow::Result<Arc<MirrorState>> {
    let mirror = Arc::new(MirrorState::new(Duration::from_secs(settings.poll_interval_secs)));
    state.flags.set_mirrored(project_id, mirror.clone());
    if let Some((body, fetched_at)) = state.control.load_flag_snapshot(project_id)? {
        let value: Value = serde_json::from_str(&body)?;
        let flags = project_flags_from_posthog(&value).map_err(|e| anyhow::anyhow!("persisted flag snapshot: {e}"))?;
        state.flags.install(project_id, flags);
        *mirror.fetched_at.lock().expect("mirror lock") = DateTime::parse_from_rfc3339(&fetched_at).ok().map(|t| t.with_timezone(&Utc));
        tracing::info!(%fetched_at, "serving the persisted upstream flag snapshot until upstream answers");
    }
    Ok(mirror)
}

/// Polls upstream until `stop`.
pub async fn run(state: AppState, project_id: i64, settings: UpstreamSettings, mirror: Arc<MirrorState>, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(settings.timeout_secs)).build() {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "cannot build the upstream HTTP client");
            return;
        }
    };
    loop {
        match fetch(&state, &client, project_id, &settings, &mirror).await {
            Ok(()) => {
                mirror.failing.store(false, Ordering::SeqCst);
                *mirror.last_error.lock().expect("mirror lock") = None;
            }
            Err(error) => {
                tracing::warn!(%error, "upstream flags unavailable; serving the last snapshot");
                mirror.failing.store(true, Ordering::SeqCst);
                *mirror.last_error.lock().expect("mirror lock") = Some(error.to_string());
                state.metrics.flags_upstream_failures.inc();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(settings.poll_interval_secs.max(1))) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn fetch(state: &AppState, client: &reqwest::Client, project_id: i64, settings: &UpstreamSettings, mirror: &MirrorState) -> anyhow::Result<()> {
    let base = settings.url.as_deref().unwrap_or_default().trim_end_matches('/');
    let mut request = client
        .get(format!("{base}/api/feature_flag/local_evaluation/"))
        .query(&[("send_cohorts", "")])
        .bearer_auth(settings.personal_api_key.as_deref().unwrap_or_default());
    if let Some(token) = &settings.project_token {
        request = request.query(&[("token", token)]);
    }
    let etag = mirror.etag.lock().expect("mirror lock").clone();
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await?;
    let now = Utc::now();
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        state.control.touch_flag_snapshot(project_id, &now.to_rfc3339())?;
        *mirror.fetched_at.lock().expect("mirror lock") = Some(now);
        return Ok(());
    }
    if !response.status().is_success() {
        anyhow::bail!("upstream answered {}", response.status());
    }
    let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.text().await?;
    let value: Value = serde_json::from_str(&body)?;
    let flags = project_flags_from_posthog(&value).map_err(|e| anyhow::anyhow!("upstream snapshot rejected: {e}"))?;
    state.control.save_flag_snapshot(project_id, &body, &now.to_rfc3339())?;
    state.flags.install(project_id, flags);
    *mirror.fetched_at.lock().expect("mirror lock") = Some(now);
    *mirror.etag.lock().expect("mirror lock") = etag;
    Ok(())
}
