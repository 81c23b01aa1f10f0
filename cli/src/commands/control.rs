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
    #[command(flatten)]
    limits: DefaultLimits,
    /// The URL nodes reach this control plane at (default: the listen address).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    #[command(flatten)]
    tls: ControlTlsArgs,
    #[command(flatten)]
    observe: crate::observe::Observe,
}

/// How a control plane serves TLS (`tern control`, `tern up`).
#[derive(Args, Clone, Debug, Default)]
pub struct ControlTlsArgs {
    /// Use this CA (certificate file) instead of the one made in the data
    /// dir on first start; needs --ca-key. It is copied into the data dir.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Serve with this certificate (signed by the CA in --ca-cert, or in
    /// DATA_DIR/ca.pem) instead of one signed here; needs --tls-key.
    /// Without the CA's key, nodes cannot join through this control plane.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "ca_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP, without TLS: nothing on the wire is encrypted and
    /// nodes cannot join (only for a cluster on one trusted machine).
    #[arg(long, conflicts_with_all = ["ca_cert", "tls_cert"])]
    pub insecure_plain_http: bool,
    /// With an `etcd+https://` store: the CA of etcd's certificate.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With an `etcd+https://` store: the client certificate to present.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl ControlTlsArgs {
    /// The TLS material, made or read (`None`: plain HTTP, asked for).
    /// `hosts`: the addresses the control plane's certificate names.
    pub fn cluster_tls(
        &self,
        data_dir: &Path,
        hosts: &[String],
    ) -> Result<Option<tern_control::ClusterTls>> {
        if self.insecure_plain_http {
            return Ok(None);
        }
        Ok(Some(
            match (&self.ca_cert, &self.ca_key, &self.tls_cert, &self.tls_key) {
                (Some(c), Some(k), _, _) => {
                    tern_control::ClusterTls::from_ca_files(c, k, data_dir, hosts)?
                }
                (_, _, Some(c), Some(k)) => {
                    let ca = self
                        .ca_cert
                        .clone()
                        .unwrap_or_else(|| tern_api::tls::ca_path(data_dir));
                    tern_control::ClusterTls::from_server_files(&ca, c, k)?
                }
                _ => tern_control::ClusterTls::load_or_create(data_dir, hosts)?,
            },
        ))
    }

    /// The etcd store's TLS material, for `etcd+https://`.
    pub fn etcd_tls(&self) -> Result<Option<tern_control::EtcdTls>> {
        let Some(ca) = &self.etcd_ca else {
            return Ok(None);
        };
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let client = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Ok(Some(tern_control::EtcdTls {
            ca_pem: read(ca)?,
            client,
        }))
    }
}

/// The hosts a control plane's certificate names: the listen host and the
/// advertised URL's host (loopback and `localhost` are always named).
pub fn cert_hosts(listen: &str, advertise: Option<&str>) -> Vec<String> {
    let mut hosts = Vec::new();
    if let Some(h) = tern_api::tls::url_host(listen) {
        hosts.push(h);
    }
    if let Some(h) = advertise.and_then(tern_api::tls::url_host) {
        hosts.push(h);
    }
    hosts
}

/// The limits an app that sets none gets (`tern control`, `tern up`).
#[derive(Args)]
pub struct DefaultLimits {
    /// Memory of an app that does not set it: all its linear memories
    /// together (`memory.grow` past it fails as Wasm says).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    default_memory: String,
    /// Time per call of an app that does not set it; a call past it is
    /// stopped and answered with an error, and the app goes on.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    default_timeout: String,
}

impl DefaultLimits {
    /// Sets the control plane's defaults from the flags.
    pub fn apply(&self, cfg: &mut tern_control::ControlConfig) -> Result<()> {
        let memory = crate::util::parse_size(&self.default_memory)
            .with_context(|| format!("--default-memory {}", self.default_memory))?;
        let timeout = parse_duration(&self.default_timeout)
            .with_context(|| format!("--default-timeout {}", self.default_timeout))?;
        if memory == 0 || timeout.is_zero() {
            anyhow::bail!("--default-memory and --default-timeout must be more than 0");
        }
        cfg.default_limits = tern_api::types::AppLimits {
            memory_bytes: Some(memory),
            timeout_ms: Some(timeout.as_millis() as u64),
            fuel: None,
        };
        Ok(())
    }
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
    a.observe.init_logs()?;
    let mut store: tern_control::StoreConfig = a.store.parse().map_err(|e: String| anyhow!(e))?;
    if let tern_control::StoreConfig::Etcd(url) = &mut store {
        match a.tls.etcd_tls()? {
            Some(t) if url.endpoint.starts_with("https://") => *url = url.clone().with_tls(t),
            Some(_) => anyhow::bail!("--etcd-ca is for an etcd+https:// store"),
            None if url.endpoint.starts_with("https://") => anyhow::bail!("an etcd+https:// store needs --etcd-ca (and --etcd-cert/--etcd-key when etcd checks clients)"),
            None => {}
        }
    }
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
    a.limits.apply(&mut cfg)?;
    cfg.advertise_url = a.advertise.clone();
    cfg.store = store;
    cfg.metrics_listener = a.observe.metrics_listener()?;
    cfg.tls = a
        .tls
        .cluster_tls(&data_dir, &cert_hosts(&a.listen, a.advertise.as_deref()))?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
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
        outln!("control plane listening on {scheme}://{addr}")?;
        match &cfg.tls {
            Some(_) => outln!("  ca     {} (clients and browsers trust this file)", tern_api::tls::ca_path(&data_dir).display())?,
            None => outln!("  WARNING: plain HTTP (--insecure-plain-http): tokens and apps' data cross the network unencrypted")?,
        }
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
        if let Some(l) = &cfg.metrics_listener {
            outln!("  metrics {}", tern_api::metrics::url_of(l))?;
        }
        outln!("Ctrl-C stops it.")?;
        tern_control::run(listener, cfg, shutdown_signal()).await
    })?;
    outln!("control plane stopped")?;
    ok()
}
