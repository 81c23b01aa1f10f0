//! What a node's registration and heartbeats change.
//!
//! For each app a heartbeat reports, compared with the table:
//! - same node and generation: its status is recorded (state, memory,
//!   requests, CPU), and a usage sample feeds the predictor;
//! - an older generation: a stale copy (the app moved or was restarted
//!   elsewhere while this node was away): the node is told to delete it;
//! - a newer generation, with no operation in flight: a move whose answer
//!   was lost (the control plane restarted, a timeout): the table follows
//!   the node, since generations are only handed out by the control plane;
//! - an app the table does not have, at a generation this control plane
//!   handed out: a copy of a removed app: deleted.
//!
//! An app the table places on this node that the heartbeat does not list
//! (and that was placed there, and this control plane started, longer than
//! the heartbeat timeout ago) is `lost`: its restart policy decides what
//! happens to it.

use std::sync::Arc;

use tern_api::types::{Heartbeat, NodeInfo};
use tern_scheduler::Resources;

use crate::error::ApiError;
use crate::ops::state_word;
use crate::state::{now_ms, NodeRec, Shared};

/// How often a heartbeat stores its node's record (last heartbeat and
/// usage); registration and draining store it at once.
pub const NODE_RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/nodes`.
pub fn register(sh: &Shared, info: NodeInfo) -> Result<(), ApiError> {
    tern_api::names::check_node_name(&info.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !(info.url.starts_with("http://") || info.url.starts_with("https://")) {
        return Err(ApiError::bad_request(format!(
            "node URL `{}` must start with http:// (it is where the control plane calls the node)",
            info.url
        )));
    }
    let now = now_ms();
    let mut st = sh.lock();
    let rec = match st.nodes.get(&info.name) {
        Some(old) => NodeRec {
            info,
            registered_unix_ms: now,
            ..old.clone()
        },
        None => NodeRec {
            info,
            registered_unix_ms: now,
            ..NodeRec::default()
        },
    };
    sh.store.put_node(&rec, true)?;
    tracing::info!(node = %rec.info.name, url = %rec.info.url, "node registered");
    sh.note_node(&rec.info.name);
    st.node_stored.insert(rec.info.name.clone(), now);
    st.nodes.insert(rec.info.name.clone(), rec);
    Ok(())
}

/// `POST /v1/nodes/NAME/heartbeat`.
pub fn heartbeat(sh: &Arc<Shared>, name: &str, hb: Heartbeat) -> Result<(), ApiError> {
    if !hb.name.is_empty() && hb.name != name {
        return Err(ApiError::bad_request(format!(
            "heartbeat for node {} sent to the address of node {name}",
            hb.name
        )));
    }
    let now = now_ms();
    sh.heard(name, now);
    let period = sh.cfg.sample_period.as_millis().max(1) as u64;
    let index = now / period;
    let mut fence: Vec<(String, u64)> = Vec::new();
    let mut samples: Vec<(String, u64, u64, u64)> = Vec::new();
    let mut changed: Vec<String> = Vec::new();

    let took = std::time::Instant::now();
    let mut guard = sh.lock();
    let waited = took.elapsed();
    let st = &mut *guard;
    let Some(node) = st.nodes.get_mut(name) else {
        return Err(ApiError::not_found(format!(
            "node {name} is not registered: register it first (POST /v1/nodes)"
        )));
    };
    node.last_heartbeat_unix_ms = Some(now);
    node.usage = hb.usage;
    let node_url = node.info.url.clone();
    let node_rec = node.clone();

    let mut reported = std::collections::HashSet::new();
    for s in &hb.apps {
        reported.insert(s.name.as_str());
        let busy = st.busy.contains(&s.name);
        let Some(app) = st.apps.get_mut(&s.name) else {
            if !busy
                && st
                    .generations
                    .get(&s.name)
                    .is_some_and(|g| *g >= s.generation)
            {
                fence.push((s.name.clone(), s.generation));
            }
            continue;
        };
        let here = app.node.as_deref() == Some(name);
        if s.generation < app.generation || (s.generation == app.generation && !here && !busy) {
            // Same generation on two nodes cannot come from this control
            // plane; keep the copy the table names.
            fence.push((s.name.clone(), s.generation));
            continue;
        }
        if s.generation > app.generation {
            if busy {
                continue;
            }
            tracing::warn!(app = %s.name, node = name, generation = s.generation, "adopting a newer copy than the table's");
            app.node = Some(name.to_string());
            app.generation = s.generation;
            app.placed_unix_ms = now;
            let g = st.generations.entry(s.name.clone()).or_insert(0);
            *g = (*g).max(s.generation);
        } else if !here {
            continue;
        }
        let state = state_word(s.state);
        let before = (app.state.clone(), app.last_error.clone());
        // While an operation holds the app, its own state word stands.
        if !busy || app.state == "deploying" {
            app.state = state;
        }
        app.memory_bytes = s.memory_bytes;
        app.requests_served = app.requests_served.max(s.requests_served);
        app.last_error = s.last_error.clone();
        app.start_at_unix_ms = s.start_at_unix_ms;
        if app.checkpoint != s.checkpoint {
            if let Some(e) = s.checkpoint.as_ref().and_then(|c| c.error.as_ref()) {
                tracing::warn!(app = %s.name, node = name, "checkpoint failed: {e}");
            }
            app.checkpoint = s.checkpoint.clone();
        }
        let prev_cpu = app.cpu_ms;
        app.cpu_ms = s.cpu_ms;
        if before != (app.state.clone(), app.last_error.clone())
            || app.generation != s.generation
            || prev_cpu > s.cpu_ms
        {
            changed.push(s.name.clone());
        }
        // Usage: CPU from the counter's rate since the last report.
        let cpu = match st.cpu_prev.get(&s.name) {
            Some((n, g, c, t)) if n == name && *g == s.generation && *c <= s.cpu_ms && *t < now => {
                Some((s.cpu_ms - c) * 1000 / (now - t))
            }
            _ => None,
        };
        st.cpu_prev.insert(
            s.name.clone(),
            (name.to_string(), s.generation, s.cpu_ms, now),
        );
        if let Some(cpu) = cpu {
            let usage = Resources::new(cpu, s.memory_bytes);
            st.usage.insert(s.name.clone(), usage);
            st.record_demand(&s.name, index, now, cpu);
            st.predictor.observe(&s.name, index, usage);
            let next = st
                .predictor
                .predict(&s.name)
                .map(|f| f.plan.cpu_milli as f64);
            sh.metrics.observed(&s.name, index, cpu as f64, next);
            samples.push((s.name.clone(), index, cpu, s.memory_bytes));
        }
    }

    // Apps the table puts here that the node no longer has. The grace
    // counts from this control plane's start too: a table loaded at a
    // takeover may name the source of a move the last leader did not live
    // to record, and the target must get its turn to report the app.
    let grace = sh.cfg.heartbeat_timeout.as_millis() as u64;
    for app in st.apps.values_mut() {
        if app.node.as_deref() == Some(name)
            && !reported.contains(app.name.as_str())
            && !st.busy.contains(&app.name)
            && now.saturating_sub(app.placed_unix_ms.max(sh.started_unix_ms)) > grace
            && app.state != "lost"
        {
            tracing::warn!(app = %app.name, node = name, "the node no longer reports the app: lost");
            app.state = "lost".into();
            changed.push(app.name.clone());
        }
    }

    let changed_apps: Vec<_> = changed.iter().filter_map(|n| st.apps.get(n)).collect();
    let writing = std::time::Instant::now();
    sh.store.put_apps(&changed_apps, false)?;
    // The node's time and usage are stored every NODE_RECORD_EVERY, not
    // with each heartbeat (twice a second per node, each a write to etcd
    // under the table): a new leader hears every node again within its
    // heartbeat timeout anyway.
    let stored = st.node_stored.get(name).copied().unwrap_or(0);
    if now.saturating_sub(stored) >= NODE_RECORD_EVERY.as_millis() as u64 {
        sh.store.put_node(&node_rec, false)?;
        st.node_stored.insert(name.to_string(), now);
    }
    sh.store
        .push_samples(&samples, sh.cfg.predictor.max_history as u64)?;
    drop(guard);
    let took = took.elapsed();
    if took > sh.cfg.heartbeat_timeout / 8 {
        tracing::warn!(
            node = name,
            "a heartbeat took {} ms to record ({} ms waiting for the table, {} ms writing the store)",
            took.as_millis(),
            waited.as_millis(),
            writing.elapsed().as_millis()
        );
    }

    for (app, generation) in fence {
        let sh = sh.clone();
        let url = format!(
            "{}/v1/apps/{app}?generation={generation}",
            node_url.trim_end_matches('/')
        );
        let node = name.to_string();
        tokio::spawn(async move {
            tracing::info!(%app, %node, generation, "fencing a stale copy");
            if let Err(e) = sh.short_client.delete(&url).await {
                if e.status() != Some(404) {
                    tracing::warn!(%app, %node, "cannot delete a stale copy: {e}");
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tern_api::types::{AppLimits, AppState, AppStatus, Heartbeat, NodeInfo};

    use super::*;
    use crate::state::AppRec;
    use crate::store::Store;
    use crate::ControlConfig;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            url: format!("http://127.0.0.1:1/{name}"),
            capacity: tern_api::types::Resources {
                cpu_milli: 1000,
                memory_bytes: 1 << 30,
            },
            ..NodeInfo::default()
        }
    }

    fn status(app: &str, generation: u64) -> AppStatus {
        AppStatus {
            name: app.into(),
            module_sha256: "0".repeat(64),
            state: AppState::Running,
            generation,
            memory_bytes: 1 << 16,
            requests_served: 0,
            cpu_ms: 0,
            restart: "always".into(),
            last_error: None,
            start_at_unix_ms: None,
            limits: AppLimits::default(),
            checkpoint: None,
            queued: 0,
            in_call_ms: None,
            holding: None,
            pages_pending: None,
        }
    }

    fn beat(sh: &Arc<Shared>, name: &str, apps: Vec<AppStatus>) {
        let hb = Heartbeat {
            name: name.into(),
            usage: Default::default(),
            apps,
            migrations_in: Vec::new(),
        };
        heartbeat(sh, name, hb).expect("the heartbeat is taken");
    }

    /// A control plane whose table, loaded at its start, places `counter`
    /// (generation 3, placed an hour ago) on node `a`; it started
    /// `started_ago` before now.
    pub(crate) fn leader(dir: &std::path::Path, started_ago: Duration) -> Arc<Shared> {
        let store = Store::open(dir).expect("a store");
        let hour_ago = now_ms() - 3_600_000;
        let app = AppRec {
            name: "counter".into(),
            module_sha256: "0".repeat(64),
            node: Some("a".into()),
            generation: 3,
            state: "running".into(),
            restart: "always".into(),
            created_unix_ms: hour_ago,
            placed_unix_ms: hour_ago,
            ..AppRec::default()
        };
        store.put_app(&app).expect("the app's record");
        let loaded = store.load().expect("the records");
        let mut cfg = ControlConfig::new(dir, "token");
        cfg.heartbeat_timeout = Duration::from_secs(3);
        let mut sh = Shared::new(
            cfg,
            store,
            loaded,
            "http://127.0.0.1:1".into(),
            crate::metrics::Metrics::new(),
        )
        .expect("a control plane");
        sh.started_unix_ms -= started_ago.as_millis() as u64;
        let sh = Arc::new(sh);
        register(&sh, node("a")).expect("node a registers");
        register(&sh, node("b")).expect("node b registers");
        sh
    }

    fn app(sh: &Shared) -> AppRec {
        sh.lock().apps["counter"].clone()
    }

    /// A leader killed at the end of a move from `a` to `b` leaves a table
    /// that names `a`. The next leader must not call the app lost when `a`
    /// reports first: `b` reports it at a newer generation and the table
    /// follows `b`.
    #[test]
    fn a_new_leader_waits_for_the_target_of_a_move_it_did_not_see_end() {
        let dir = tempfile::tempdir().unwrap();
        let sh = leader(dir.path(), Duration::ZERO);
        beat(&sh, "a", vec![]);
        assert_eq!(
            app(&sh).state,
            "running",
            "the app was called lost at the takeover"
        );
        beat(&sh, "b", vec![status("counter", 4)]);
        let a = app(&sh);
        assert_eq!(
            (a.node.as_deref(), a.generation, a.state.as_str()),
            (Some("b"), 4, "running")
        );
        // Node a goes on not listing it: the app is where the table says.
        beat(&sh, "a", vec![]);
        assert_eq!(app(&sh).state, "running");
    }

    /// Past the grace, an app its node no longer lists is lost, and the
    /// loss is recorded.
    #[test]
    fn an_app_its_node_no_longer_lists_is_lost_once_the_grace_is_over() {
        for (started_ago, lost) in [(Duration::ZERO, false), (Duration::from_secs(4), true)] {
            let dir = tempfile::tempdir().unwrap();
            let sh = leader(dir.path(), started_ago);
            beat(&sh, "a", vec![]);
            let want = if lost { "lost" } else { "running" };
            assert_eq!(app(&sh).state, want, "started {started_ago:?} ago");
            drop(sh);
            let stored = Store::open(dir.path()).unwrap().load().unwrap();
            let rec = stored.apps.iter().find(|a| a.name == "counter").unwrap();
            assert_eq!(rec.state, want, "the record, started {started_ago:?} ago");
        }
    }

    /// A heartbeat that arrives while the table is held (a slow store
    /// write) counts from its arrival: the node is not down meanwhile.
    #[test]
    fn a_heartbeat_waiting_for_the_table_keeps_its_node_up() {
        let dir = tempfile::tempdir().unwrap();
        let sh = leader(dir.path(), Duration::from_secs(60));
        let old = {
            let mut st = sh.lock();
            let n = st.nodes.get_mut("a").unwrap();
            n.registered_unix_ms -= 60_000;
            n.clone()
        };
        assert!(sh.is_down(&old, now_ms()), "a node unheard for a minute");
        let table = sh.lock();
        let beating = std::thread::spawn({
            let sh = sh.clone();
            move || beat(&sh, "a", vec![status("counter", 3)])
        });
        let t0 = std::time::Instant::now();
        while sh.is_down(&old, now_ms()) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the heartbeat never arrived"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            table.nodes["a"].last_heartbeat_unix_ms, None,
            "the table was held"
        );
        drop(table);
        beating.join().unwrap();
        assert!(sh.lock().nodes["a"].last_heartbeat_unix_ms.is_some());
        // A name never registered is not noted.
        sh.heard("stranger", now_ms());
        let stranger = NodeRec {
            info: node("stranger"),
            ..NodeRec::default()
        };
        assert!(sh.is_down(&stranger, now_ms()));
    }

    /// Heartbeats store their node's record every `NODE_RECORD_EVERY`,
    /// not each time.
    #[test]
    fn heartbeats_store_their_node_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let sh = leader(dir.path(), Duration::ZERO);
        let stored = |sh: &Shared| {
            let loaded = sh.store.load().unwrap();
            let n = loaded
                .nodes
                .into_iter()
                .find(|n| n.info.name == "a")
                .unwrap();
            n.last_heartbeat_unix_ms
        };
        beat(&sh, "a", vec![status("counter", 3)]);
        beat(&sh, "a", vec![status("counter", 3)]);
        assert!(sh.lock().nodes["a"].last_heartbeat_unix_ms.is_some());
        assert_eq!(
            stored(&sh),
            None,
            "registered just now: not stored again yet"
        );
        sh.lock()
            .node_stored
            .insert("a".into(), now_ms() - NODE_RECORD_EVERY.as_millis() as u64);
        beat(&sh, "a", vec![status("counter", 3)]);
        let memory = sh.lock().nodes["a"].last_heartbeat_unix_ms;
        assert_eq!(stored(&sh), memory, "stored once the last is old enough");
    }
}
