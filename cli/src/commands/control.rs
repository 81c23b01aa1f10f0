//! `tern control`: run a control plane (the cluster's state, placement,
//! rebalancing) in the foreground, on redb or on a shared etcd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Args;

use super::ok;
use crate::output::outln;
use crate::util::{default_data_dir, parse_duration, shutdown_signal};

/// Where `tern up` and `tern control` listen by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

#[derive(Args)]
pub struct ControlArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Where the state lives (default: $TERN_DATA_DIR, $XDG_DATA_HOME/tern or ~/.local/share/tern).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The state store: `redb` (embedded, the default) or
    /// `etcd://HOST:PORT[/PREFIX]` (shared by several control planes, of
    /// which one leads and the others stand by).
    #[arg(long, value_name = "STORE", default_value = "redb")]
    store: String,
    /// The cluster token (default: DATA_DIR/token, created if missing).
    #[arg(long, value_name = "TOKEN", env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Default placement policy.
    #[arg(long, value_name = "POLICY", default_value = "requests", value_parser = ["requests", "cost", "learned"])]
    policy: String,
    /// A node without a heartbeat for this long is down.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    heartbeat_timeout: String,
    /// How often the rebalancer runs.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    rebalance_interval: String,
    /// The URL nodes reach this control plane at (default: the listen address).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

/// The control plane's configuration from `tern control` / `tern up` flags.
pub fn control_config(
    data_dir: &Path,
    token: String,
    policy: &str,
    heartbeat: &str,
    rebalance: &str,
) -> Result<tern_control::ControlConfig> {
    let mut cfg = tern_control::ControlConfig::new(data_dir, token);
    cfg.policy = policy.parse().map_err(|e| anyhow!("{e}"))?;
    cfg.heartbeat_timeout = parse_duration(heartbeat)?;
    cfg.rebalance_interval = parse_duration(rebalance)?;
    Ok(cfg)
}

pub fn control(a: ControlArgs) -> Result<ExitCode> {
    let store: tern_control::StoreConfig = a.store.parse().map_err(|e: String| anyhow!(e))?;
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    tern_util::create_private_dir(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let given = a.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let token = match (&store, given) {
        (tern_control::StoreConfig::Redb, Some(t)) => t.to_string(),
        (tern_control::StoreConfig::Redb, None) => tern_control::load_or_create_token(&data_dir)?,
        // Control planes sharing an etcd share its token: the first one's,
        // kept in DATA_DIR/token too so that client commands find it.
        (tern_control::StoreConfig::Etcd(url), given) => {
            let t = tern_control::etcd_token(url, given, || {
                tern_control::load_or_create_token(&data_dir)
            })?;
            if given.is_none() {
                tern_control::write_token(&data_dir.join("token"), &t)?;
            }
            t
        }
    };
    let mut cfg = control_config(
        &data_dir,
        token,
        &a.policy,
        &a.heartbeat_timeout,
        &a.rebalance_interval,
    )?;
    cfg.advertise_url = a.advertise.clone();
    cfg.store = store;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: is another control plane running there? (use --listen)",
                    a.listen
                )
            })?;
        let addr = listener.local_addr()?;
        outln!("control plane listening on http://{addr}")?;
        match &cfg.store {
            tern_control::StoreConfig::Redb => {
                outln!("  state  {}", data_dir.join("control.redb").display())?
            }
            tern_control::StoreConfig::Etcd(url) => outln!(
                "  state  {url} (this control plane leads, or stands by while another does)\n  blobs  {}",
                data_dir.display()
            )?,
        }
        if a.token.is_none() {
            outln!("  token  {}", data_dir.join("token").display())?;
        }
        outln!("Ctrl-C stops it.")?;
        tern_control::run(listener, cfg, shutdown_signal()).await
    })?;
    outln!("control plane stopped")?;
    ok()
}
