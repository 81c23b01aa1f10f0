//! `tern nodes` lists the nodes; `tern drain` stops one taking new apps so
//! the rebalancer moves its apps away.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tern_api::types::NodeView;

use super::ok;
use crate::client::{runtime, seg, Conn};
use crate::output::{out, outln};
use crate::util::{human_bytes, human_ms, print_json, table};

#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn nodes(a: NodesArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let nodes: Vec<NodeView> = runtime()?.block_on(ctl.get("/v1/nodes"))?;
    if a.conn.json {
        print_json(&nodes)?;
        return ok();
    }
    if nodes.is_empty() {
        outln!(
            "no nodes yet: start some with `tern up` or `tern node --control {}`",
            ctl.base
        )?;
        return ok();
    }
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.clone(),
                n.url.clone(),
                n.arch.clone(),
                format!("{}m / {}m", n.usage.cpu_milli, n.capacity.cpu_milli),
                format!(
                    "{} / {}",
                    human_bytes(n.usage.memory_bytes),
                    human_bytes(n.capacity.memory_bytes)
                ),
                if n.apps.is_empty() {
                    "-".into()
                } else {
                    format!("{} ({})", n.apps.len(), n.apps.join(","))
                },
                kv_list(&n.labels),
                n.last_heartbeat_ms_ago
                    .map_or("never".into(), |ms| format!("{} ago", human_ms(ms as f64))),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "NAME",
                "STATE",
                "ADDRESS",
                "ARCH",
                "CPU",
                "MEMORY",
                "APPS",
                "LABELS",
                "HEARTBEAT"
            ],
            rows
        )
    )?;
    ok()
}

#[derive(Args)]
pub struct DrainArgs {
    /// The node.
    node: String,
    /// Take new apps again (undo a drain).
    #[arg(long)]
    undo: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn drain(a: DrainArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let view: NodeView = runtime()?.block_on(ctl.post(
        &format!("/v1/nodes/{}/drain", seg(&a.node)),
        &serde_json::json!({"drain": !a.undo}),
    ))?;
    if a.conn.json {
        print_json(&view)?;
    } else if a.undo {
        outln!("{} takes new apps again ({})", view.name, view.state)?;
    } else {
        outln!(
            "{} is draining: it takes no new apps, and the rebalancer moves its {} app(s) away",
            view.name,
            view.apps.len()
        )?;
    }
    ok()
}

fn kv_list(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        "-".into()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
