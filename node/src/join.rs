//! Joining a cluster: a node with a join token (`tern token create --scope
//! join`) learns the cluster's CA, checks it against the fingerprint the
//! token pins (so a machine in the middle cannot pose as the control
//! plane), makes its own key, and sends a certificate request with the
//! token; the control plane answers with a certificate naming the node.
//! The key, the certificate and the CA stay in the node's data directory
//! (owner-only) and are used again on every restart.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tern_api::client::Client;
use tern_api::tls::{self, Identity, Role, Tls};
use tern_api::types::{JoinRequest, JoinResponse};

/// The file stem of a node's certificate and key in its data directory.
pub const NODE_CERT_STEM: &str = "node";

/// A join token's parts: the CA fingerprint it pins, and the credential.
pub fn parse_join_token(token: &str) -> Result<(String, String)> {
    let bad = || {
        anyhow!("this is not a join token (they look like K10<64 hex digits>::tok-…): make one with `tern token create --scope join`")
    };
    let rest = token.trim().strip_prefix("K10").ok_or_else(bad)?;
    let (fp, cred) = rest.split_once("::").ok_or_else(bad)?;
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) || cred.is_empty() {
        return Err(bad());
    }
    Ok((fp.to_ascii_lowercase(), cred.to_string()))
}

/// The node's TLS material kept in `dir` from an earlier join, if any.
pub fn load(dir: &Path) -> Result<Option<Tls>> {
    if !Identity::exists(dir, NODE_CERT_STEM) {
        return Ok(None);
    }
    let id = Identity::load(dir, NODE_CERT_STEM)?;
    let ca = std::fs::read_to_string(tls::ca_path(dir))
        .with_context(|| format!("cannot read {}", tls::ca_path(dir).display()))?;
    Ok(Some(Tls::new(ca, Some(id))?))
}

/// Joins the cluster whose control plane is at `control` as node `name`,
/// serving at `url`; keeps the CA, the key and the certificate in `dir`.
pub async fn join(control: &str, token: &str, name: &str, url: &str, dir: &Path) -> Result<Tls> {
    tern_api::names::check_node_name(name)?;
    let (pin, _) = parse_join_token(token)?;
    if !control.starts_with("https://") {
        bail!("--control {control}: a node joins over https:// only");
    }
    // 1. The CA, fetched without trusting anything yet, then checked
    //    against the token's pin.
    let (cfg, _) = tls::pinning_client_config();
    let probe = Client::with_config(None, cfg).with_timeout(std::time::Duration::from_secs(10));
    let ca_url = format!("{control}/v1/ca");
    let (_, body) = probe
        .send(
            hyper::Method::GET,
            &ca_url,
            "application/x-pem-file",
            bytes::Bytes::new(),
        )
        .await
        .map_err(|e| anyhow!("cannot fetch the cluster's CA from {control}: {e}"))?;
    let ca_pem = String::from_utf8(body.to_vec()).context("the CA is not PEM text")?;
    let found = tls::fingerprint(&tls::first_cert_der(&ca_pem)?);
    if found != pin {
        bail!(
            "the control plane at {control} presents CA {found}, but the join token pins CA {pin}: this is not the cluster the token is for (or someone is in between); check --control"
        );
    }
    // 2. A key of our own, and its certificate from the control plane,
    //    now over TLS verified against that CA.
    let trust = Tls::new(ca_pem.clone(), None)?;
    let client = Client::with_tls(None, &trust)?;
    let (key_pem, csr_pem) = tls::new_key_and_request(&Role::Node(name.to_string()))?;
    let req = JoinRequest {
        token: token.trim().to_string(),
        name: name.to_string(),
        url: url.to_string(),
        csr_pem,
    };
    let answer: JoinResponse = client
        .post_json(&format!("{control}/v1/join"), &req)
        .await
        .map_err(|e| anyhow!("the control plane refused to let node {name} join: {e}"))?;
    if tls::fingerprint(&tls::first_cert_der(&answer.ca_pem)?) != pin {
        bail!("the control plane answered with another CA than the one the token pins");
    }
    let id = Identity {
        cert_pem: answer.cert_pem,
        key_pem,
    };
    if id.info()?.role != Some(Role::Node(name.to_string())) {
        bail!("the certificate the control plane issued does not name node {name}");
    }
    tern_util::create_private_dir(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    id.save(dir, NODE_CERT_STEM)?;
    tern_util::write_atomic(&tls::ca_path(dir), ca_pem.as_bytes())
        .with_context(|| format!("cannot write {}", tls::ca_path(dir).display()))?;
    Tls::new(ca_pem, Some(id))
}
