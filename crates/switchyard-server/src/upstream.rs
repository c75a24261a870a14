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
use crate::flags::{persisted_project_flags, project_flags_from_posthog, SnapshotRejected};
use crate::metrics::ReasonLabels;
use crate::AppState;

/// What the mirror knows about its snapshot.
pub struct MirrorState {
    interval: Duration,
    /// When the snapshot being served was last confirmed by upstream.
    fetched_at: Mutex<Option<DateTime<Utc>>>,
    failing: AtomicBool,
    etag: Mutex<Option<String>>,
}

impl MirrorState {
    pub fn new(interval: Duration) -> Self {
        MirrorState { interval, fetched_at: Mutex::new(None), failing: AtomicBool::new(false), etag: Mutex::new(None) }
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
        })
    }
}

/// Registers the mirror and installs the persisted snapshot, if there is one.
pub fn restore(state: &AppState, project_id: i64, settings: &UpstreamSettings) -> anyhow::Result<Arc<MirrorState>> {
    let mirror = Arc::new(MirrorState::new(Duration::from_secs(settings.poll_interval_secs)));
    state.flags.set_mirrored(project_id, mirror.clone());
    if let Some((body, fetched_at)) = state.control.load_flag_snapshot(project_id)? {
        let value: Value = serde_json::from_str(&body)?;
        // Persisted by this or an older version (which did not check definitions): served
        // whatever it holds; a broken flag evaluates to an error instead of stopping the start.
        let flags = persisted_project_flags(&value).map_err(|e| anyhow::anyhow!("persisted flag snapshot: {e}"))?;
        state.flags.install(project_id, flags);
        *mirror.fetched_at.lock().expect("mirror lock") = DateTime::parse_from_rfc3339(&fetched_at).ok().map(|t| t.with_timezone(&Utc));
        tracing::info!(%fetched_at, "serving the persisted upstream flag snapshot until upstream answers");
    }
    Ok(mirror)
}

/// Polls upstream until `stop`.
pub async fn run(state: AppState, project_id: i64, settings: UpstreamSettings, mirror: Arc<MirrorState>, mut stop: watch::Receiver<bool>) {
    let client = match crate::outbound::client(state.config.tls.ca_file.as_deref())
        .and_then(|builder| Ok(builder.timeout(Duration::from_secs(settings.timeout_secs)).build()?))
    {
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
            }
            Err(error) => {
                tracing::warn!(%error, "upstream flags unavailable; serving the last snapshot");
                mirror.failing.store(true, Ordering::SeqCst);
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
    let body = String::from_utf8(crate::outbound::read_limited(response, settings.max_response_bytes).await?)?;
    // A snapshot that is not sound is never swapped in nor persisted: the last good one keeps
    // being served (marked stale), and the refusal is counted by reason and logged.
    let flags = serde_json::from_str::<Value>(&body)
        .map_err(|e| SnapshotRejected { reason: "invalid_json", message: format!("not JSON: {e}") })
        .and_then(|value| project_flags_from_posthog(&value));
    let flags = match flags {
        Ok(flags) => flags,
        Err(rejected) => {
            state.metrics.flags_upstream_rejected.get_or_create(&ReasonLabels { reason: rejected.reason }).inc();
            tracing::warn!(reason = rejected.reason, error = %rejected, "upstream flag snapshot refused; the last good one is kept");
            anyhow::bail!("upstream snapshot rejected ({}): {rejected}", rejected.reason);
        }
    };
    state.control.save_flag_snapshot(project_id, &body, &now.to_rfc3339())?;
    state.flags.install(project_id, flags);
    *mirror.fetched_at.lock().expect("mirror lock") = Some(now);
    *mirror.etag.lock().expect("mirror lock") = etag;
    Ok(())
}
