//! The dashboard: a page served at `/` (its HTML, script and style are
//! compiled into the binary; nothing is fetched from elsewhere) that polls
//! `GET /v1/dashboard` and draws the nodes with their load, the apps and
//! where they run, migrations as they happen on a timeline, and each app's
//! observed CPU against what the predictor expected.
//!
//! The page itself holds no data, so it is served without the token; the
//! data endpoint needs it like every other. The browser gets the token
//! from the URL's fragment (`/#token=...`, never sent to the server), keeps
//! it in the tab's session storage and sends it as a bearer token.

use std::collections::BTreeMap;

use hyper::{Response, StatusCode};
use serde::Serialize;
use tern_api::server::{self, Body};
use tern_api::types::{AppView, MigrationReport, NodeView};

use crate::plan::Capacity;
use crate::state::{now_ms, DemandPoint, InFlight, Shared};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Migrations the dashboard shows (newest last).
const RECENT_MIGRATIONS: usize = 50;

/// The static asset at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/dashboard.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/dashboard.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut r = server::bytes(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    // Only this page's own script and style; data only from this origin.
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

/// `GET /v1/dashboard`: everything the page draws, in one document.
#[derive(Debug, Serialize)]
pub struct DashboardView {
    pub now_unix_ms: u64,
    /// The cluster's placement policy.
    pub policy: String,
    /// One demand point per this many ms.
    pub sample_period_ms: u64,
    pub nodes: Vec<NodeView>,
    pub apps: Vec<AppView>,
    /// Migrations under way.
    pub in_flight: Vec<InFlight>,
    /// The latest finished migrations, oldest first.
    pub migrations: Vec<MigrationReport>,
    /// Per app: CPU observed against CPU predicted, per sample period.
    pub demand: BTreeMap<String, Vec<DemandPoint>>,
    /// Whether the forecast needs more nodes (as of the last rebalance;
    /// `null` before the first).
    pub capacity: Option<Capacity>,
}

pub fn view(sh: &Shared) -> DashboardView {
    let now = now_ms();
    let st = sh.lock();
    let nodes = sh
        .sorted_nodes(&st)
        .into_iter()
        .map(|n| sh.node_view(&st, n, now))
        .collect();
    let apps = st.apps.values().map(|a| sh.app_view(&st, a, now)).collect();
    let skip = st.migrations.len().saturating_sub(RECENT_MIGRATIONS);
    let migrations = st
        .migrations
        .iter()
        .skip(skip)
        .map(|(_, r)| r.clone())
        .collect();
    let demand = st
        .apps
        .keys()
        .filter_map(|a| {
            st.demand
                .get(a)
                .map(|p| (a.clone(), p.iter().copied().collect()))
        })
        .collect();
    DashboardView {
        now_unix_ms: now,
        policy: sh.cfg.policy.to_string(),
        sample_period_ms: sh.cfg.sample_period.as_millis() as u64,
        nodes,
        apps,
        in_flight: st.in_flight.values().cloned().collect(),
        migrations,
        demand,
        capacity: st.capacity.clone(),
    }
}
