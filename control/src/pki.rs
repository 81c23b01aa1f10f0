//! The control plane's TLS material: the cluster's CA (made in the data
//! directory on first start, or given), the control plane's own
//! certificate (naming the addresses it is reached at), and certificates
//! for nodes (on join, or directly for the nodes of `tern up`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tern_api::tls::{self, Ca, Identity, Role, Tls};

/// The file stem of the control plane's certificate in its data directory.
pub const CONTROL_CERT_STEM: &str = "control";

/// What the control plane presents and trusts, and the CA key that signs
/// node certificates (absent when it was given a certificate without it:
/// then nodes cannot join through it).
#[derive(Clone)]
pub struct ClusterTls {
    pub tls: Tls,
    pub ca: Option<Arc<Ca>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("signs", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// The CA in `data_dir` (made there on first start, key owner-only)
    /// and a new control-plane certificate for `hosts` (loopback and
    /// `localhost` are always named), kept as `control.pem`/`control.key`.
    pub fn load_or_create(data_dir: &Path, hosts: &[String]) -> Result<ClusterTls> {
        tern_util::create_private_dir(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let ca = Ca::load_or_create(data_dir)?;
        ClusterTls::with_ca(ca, data_dir, hosts)
    }

    /// An existing CA (`--ca-cert`, `--ca-key`), copied into the data
    /// directory so that clients and nodes of this machine find it.
    pub fn from_ca_files(
        cert: &Path,
        key: &Path,
        data_dir: &Path,
        hosts: &[String],
    ) -> Result<ClusterTls> {
        let ca = Ca::from_files(cert, key)?;
        tern_util::create_private_dir(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        ca.save(data_dir)?;
        ClusterTls::with_ca(ca, data_dir, hosts)
    }

    /// A server certificate and key given as files (`--tls-cert`,
    /// `--tls-key`), signed by the CA in `ca_file`. Without the CA's key,
    /// nodes cannot join through this control plane.
    pub fn from_server_files(ca_file: &Path, cert: &Path, key: &Path) -> Result<ClusterTls> {
        let ca_pem = std::fs::read_to_string(ca_file)
            .with_context(|| format!("cannot read {}", ca_file.display()))?;
        let id = Identity::from_files(cert, key)?;
        Ok(ClusterTls {
            tls: Tls::new(ca_pem, Some(id))?,
            ca: None,
        })
    }

    fn with_ca(ca: Ca, data_dir: &Path, hosts: &[String]) -> Result<ClusterTls> {
        let id = ca.issue(&Role::Control, &tls::local_hosts(hosts))?;
        id.save(data_dir, CONTROL_CERT_STEM)?;
        Ok(ClusterTls {
            tls: Tls::new(ca.cert_pem.clone(), Some(id))?,
            ca: Some(Arc::new(ca)),
        })
    }

    /// A node's TLS material, signed here directly (the nodes `tern up`
    /// and the tests start in this process).
    pub fn issue_node(&self, name: &str, hosts: &[String]) -> Result<Tls> {
        let ca = self
            .ca
            .as_ref()
            .context("this control plane has no CA key: it cannot sign node certificates")?;
        let id = ca.issue(&Role::Node(name.to_string()), &tls::local_hosts(hosts))?;
        Tls::new(ca.cert_pem.clone(), Some(id))
    }

    /// What a client of this cluster trusts (the CA, no identity).
    pub fn client_trust(&self) -> Tls {
        Tls {
            ca_pem: self.tls.ca_pem.clone(),
            identity: None,
        }
    }
}
