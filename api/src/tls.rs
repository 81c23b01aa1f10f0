//! The cluster's certificates and TLS settings: a certificate authority
//! (made on first start, kept in the control plane's data directory with
//! its key readable by its owner only), the certificates it signs for the
//! control plane and for each node, and the rustls configurations every
//! listener and client of the cluster uses.
//!
//! Who a certificate names is its subject's common name: `tern control`
//! for a control plane, `tern node NAME` for a node. The subject
//! alternative names hold the addresses it serves at (what a client checks
//! against the URL it dialled). Nodes and the control plane present their
//! certificates as clients too (mutual TLS): a server learns who calls it
//! from the [`Peer`] the accept loop puts in each request's extensions.
//!
//! Crypto is ring's, through rustls: no OpenSSL.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// File names in a data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// How long the certificates the CA signs are valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The common name of a control plane's certificate.
const CONTROL_CN: &str = "tern control";
/// The prefix of a node certificate's common name (then the node's name).
const NODE_CN_PREFIX: &str = "tern node ";

/// What a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Control,
    Node(String),
}

impl Role {
    fn common_name(&self) -> String {
        match self {
            Role::Control => CONTROL_CN.to_string(),
            Role::Node(n) => format!("{NODE_CN_PREFIX}{n}"),
        }
    }

    fn from_common_name(cn: &str) -> Option<Role> {
        if cn == CONTROL_CN {
            return Some(Role::Control);
        }
        let name = cn.strip_prefix(NODE_CN_PREFIX)?;
        crate::names::is_valid_name(name).then(|| Role::Node(name.to_string()))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Control => f.write_str("the control plane"),
            Role::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// Who is at the other end of a connection, as its (verified) client
/// certificate says. Put in every request's extensions by the accept loop
/// when the client presented a certificate signed by the cluster's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `None`: a certificate of the cluster's CA whose name is not one of
    /// tern's roles (it grants nothing).
    pub role: Option<Role>,
    /// The certificate's serial number, lowercase hex (what revocation names).
    pub serial: String,
}

impl Peer {
    /// The node this peer is, if it is one.
    pub fn node(&self) -> Option<&str> {
        match &self.role {
            Some(Role::Node(n)) => Some(n),
            _ => None,
        }
    }

    pub fn is_control(&self) -> bool {
        self.role == Some(Role::Control)
    }
}

/// What a certificate names, read from its DER bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub role: Option<Role>,
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (what browsers
    /// pin with `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: [u8; 32],
}

/// Reads a certificate's role, serial and validity.
pub fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("cannot parse the certificate: {e}"))?;
    let role = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .and_then(Role::from_common_name);
    Ok(CertInfo {
        role,
        serial: hex::encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        spki_sha256: Sha256::digest(cert.public_key().raw).into(),
    })
}

/// The peer of a connection from the certificates it presented (the first
/// is its own), already verified against the CA by rustls.
pub fn peer_of(certs: &[CertificateDer<'_>]) -> Option<Peer> {
    let info = cert_info(certs.first()?).ok()?;
    Some(Peer {
        role: info.role,
        serial: info.serial,
    })
}

/// The SHA-256 of a certificate's DER bytes, lowercase hex: how a join
/// token pins the cluster's CA.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The first certificate of a PEM text, as DER.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in the PEM text"))?
        .map_err(|e| anyhow!("unreadable certificate: {e:?}"))
}

fn certs_of(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("unreadable certificate: {e:?}"))?;
    if certs.is_empty() {
        bail!("no certificate in the PEM text");
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            tern_util::create_private_dir(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    tern_util::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn offset(t: std::time::SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand_bytes(&mut b);
    b[0] &= 0x7f; // a positive INTEGER
    b[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&b)
}

/// Fills `buf` from the system's random source.
pub fn rand_bytes(buf: &mut [u8]) {
    provider()
        .secure_random
        .fill(buf)
        .expect("the system's random source works");
}

/// The cluster's certificate authority: its certificate and its key.
pub struct Ca {
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Ca {
    /// A new CA (ECDSA P-256) named after the cluster.
    pub fn generate() -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tern cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = std::time::SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600));
        params.not_after = offset(now + CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// The CA whose certificate and key are in these PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Ca> {
        Ca::from_pem(&read(cert)?, &read(key)?)
            .with_context(|| format!("the CA in {} and {}", cert.display(), key.display()))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("unreadable CA key")?;
        let cert_der = first_cert_der(cert_pem)?;
        // The key must be the certificate's.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| anyhow!("cannot parse the CA certificate: {e}"))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            bail!("the CA key is not the CA certificate's key");
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`), made there on first use (the
    /// key owner-only, in an owner-only directory).
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if cert.exists() || key.exists() {
            return Ca::from_files(&cert, &key);
        }
        let ca = Ca::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_private(&dir.join(CA_KEY_FILE), &self.key.serialize_pem())?;
        write_private(&dir.join(CA_CERT_FILE), &self.cert_pem)
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The SHA-256 of the CA certificate (hex): what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    fn params(role: &Role, hosts: &[String]) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, role.common_name());
        params.distinguished_name = dn;
        params.subject_alt_names = san_list(hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(60));
        params.not_after = offset(now + CERT_VALIDITY);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A certificate and a new key for `role`, serving at `hosts` (IP
    /// addresses or DNS names).
    pub fn issue(&self, role: &Role, hosts: &[String]) -> Result<Identity> {
        let key = KeyPair::generate()?;
        let params = Ca::params(role, hosts)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        // The chain up to the CA: a browser pinned to the CA finds it.
        Ok(Identity {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `role` at `hosts`, for the key of a certificate
    /// signing request (its signature proves the requester holds the key;
    /// what it asks for besides the key is ignored: the CA decides the
    /// names). Returns the certificate's PEM.
    pub fn sign_request(&self, csr_pem: &str, role: &Role, hosts: &[String]) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow!("the certificate request is not valid: {e}"))?;
        let params = Ca::params(role, hosts)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let cert = params.signed_by(&csr.public_key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

fn san_list(hosts: &[String]) -> Result<Vec<SanType>> {
    let mut out = Vec::new();
    for h in hosts {
        let h = h.trim().trim_start_matches('[').trim_end_matches(']');
        if h.is_empty() {
            continue;
        }
        let san = match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.to_string()
                    .try_into()
                    .map_err(|e| anyhow!("`{h}` cannot be named in a certificate: {e}"))?,
            ),
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

/// The host of a URL (`https://HOST:PORT/...` → `HOST`).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?.to_string()
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    };
    (!host.is_empty()).then_some(host)
}

/// The names a server on this machine is reached at besides those given:
/// loopback, and `localhost`.
pub fn local_hosts(extra: &[String]) -> Vec<String> {
    let mut hosts = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "::1".to_string(),
    ];
    for h in extra {
        if h != "0.0.0.0" && h != "::" && !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    hosts
}

/// A certificate (with the chain above it, if any) and its private key.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    /// `STEM.pem` and `STEM.key` in `dir`.
    pub fn load(dir: &Path, stem: &str) -> Result<Identity> {
        Identity::from_files(
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}.key")),
        )
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<Identity> {
        let id = Identity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        id.key()
            .with_context(|| format!("the key in {}", key.display()))?;
        certs_of(&id.cert_pem).with_context(|| format!("the certificate in {}", cert.display()))?;
        Ok(id)
    }

    /// Whether `STEM.pem` and `STEM.key` exist in `dir`.
    pub fn exists(dir: &Path, stem: &str) -> bool {
        dir.join(format!("{stem}.pem")).exists() && dir.join(format!("{stem}.key")).exists()
    }

    /// Writes `STEM.pem` and `STEM.key` (both owner-only) into `dir`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        write_private(&dir.join(format!("{stem}.key")), &self.key_pem)?;
        write_private(&dir.join(format!("{stem}.pem")), &self.cert_pem)
    }

    pub fn certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        certs_of(&self.cert_pem)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| anyhow!("unreadable private key: {e:?}"))
    }

    /// What the certificate names.
    pub fn info(&self) -> Result<CertInfo> {
        cert_info(&first_cert_der(&self.cert_pem)?)
    }
}

/// A new key and a certificate signing request for it (the CA decides the
/// names; the request carries `role`'s as a hint). Returns (key PEM, CSR PEM).
pub fn new_key_and_request(role: &Role) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, role.common_name());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// What a process of the cluster trusts and presents: the cluster's CA
/// and, for the control plane and nodes, its own certificate.
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub identity: Option<Identity>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = self
            .identity
            .as_ref()
            .and_then(|i| i.info().ok())
            .and_then(|i| i.role);
        f.debug_struct("Tls")
            .field("identity", &who)
            .finish_non_exhaustive()
    }
}

/// ring's crypto for rustls (aws-lc-rs, rustls' other provider, needs
/// cmake and nasm to build; ring offers no post-quantum key exchange).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Trusts the CA in `ca_pem`, presents `identity` if given.
    pub fn new(ca_pem: String, identity: Option<Identity>) -> Result<Tls> {
        let tls = Tls { ca_pem, identity };
        tls.roots()?;
        Ok(tls)
    }

    /// Trusts the CA in the file `ca`.
    pub fn trusting(ca: &Path) -> Result<Tls> {
        Tls::new(read(ca)?, None).with_context(|| format!("the CA file {}", ca.display()))
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_of(&self.ca_pem)? {
            roots
                .add(c)
                .map_err(|e| anyhow!("the CA certificate cannot be trusted: {e}"))?;
        }
        Ok(roots)
    }

    /// The CA's certificate (the first of the PEM).
    pub fn ca_der(&self) -> Result<CertificateDer<'static>> {
        first_cert_der(&self.ca_pem)
    }

    /// A server that presents this identity and verifies the certificates
    /// clients present against the CA (clients without one are served
    /// too: operators with a token, anonymous ingress).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let id = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("a TLS server needs a certificate and key"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow!("cannot verify client certificates: {e}"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("{e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(id.certs()?, id.key()?)
            .map_err(|e| anyhow!("the certificate and key do not go together: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client that verifies servers against the CA and presents this
    /// identity, if any.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("{e}"))?
            .with_root_certificates(self.roots()?);
        let cfg = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.certs()?, id.key()?)
                .map_err(|e| anyhow!("the certificate and key do not go together: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        // (No ALPN here: the HTTP client sets it.)
        Ok(Arc::new(cfg))
    }
}

impl Tls {
    /// As [`Tls::client_config`], and the server's certificate must also
    /// name `role`: a node moving an app checks that the target is the node
    /// the control plane chose, not any holder of a cluster certificate.
    pub fn client_config_for(&self, role: &Role) -> Result<Arc<rustls::ClientConfig>> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        )
        .build()
        .map_err(|e| anyhow!("cannot verify server certificates: {e}"))?;
        let verifier = Arc::new(ExpectRole {
            inner,
            role: role.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("{e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let cfg = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.certs()?, id.key()?)
                .map_err(|e| anyhow!("the certificate and key do not go together: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(cfg))
    }
}

/// The CA's verdict, then the role the certificate names.
#[derive(Debug)]
struct ExpectRole {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    role: Role,
}

impl rustls::client::danger::ServerCertVerifier for ExpectRole {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let named = cert_info(end_entity).ok().and_then(|i| i.role);
        if named.as_ref() != Some(&self.role) {
            let named = match named {
                Some(Role::Node(n)) => format!("node {n}"),
                Some(Role::Control) => "the control plane".to_string(),
                None => "no tern role".to_string(),
            };
            let want = match &self.role {
                Role::Node(n) => format!("node {n}"),
                Role::Control => "the control plane".to_string(),
            };
            return Err(rustls::Error::General(format!(
                "the server's certificate names {named}, not {want}"
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificates a server presented (DER, its own first).
pub type SeenChain = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A client configuration that accepts any server certificate and records
/// the chain it saw: only for fetching a CA whose fingerprint the caller
/// then checks against one it already trusts (a join token's pin).
pub fn pinning_client_config() -> (Arc<rustls::ClientConfig>, SeenChain) {
    #[derive(Debug)]
    struct Record(
        Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        Arc<rustls::crypto::CryptoProvider>,
    );
    impl rustls::client::danger::ServerCertVerifier for Record {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error>
        {
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.clear();
            seen.push(end_entity.to_vec());
            seen.extend(intermediates.iter().map(|c| c.to_vec()));
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
        {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.1.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
        {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Record(seen.clone(), p)))
        .with_no_client_auth();
    (Arc::new(cfg), seen)
}

/// Where the files of a data directory's TLS material are.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_what_it_names_and_reads_it_back() {
        let ca = Ca::generate().unwrap();
        let id = ca
            .issue(&Role::Node("edge-1".into()), &local_hosts(&[]))
            .unwrap();
        let info = id.info().unwrap();
        assert_eq!(info.role, Some(Role::Node("edge-1".into())));
        assert_eq!(info.serial.len(), 32);
        let (key, csr) = new_key_and_request(&Role::Node("x".into())).unwrap();
        let cert = ca
            .sign_request(&csr, &Role::Node("edge-2".into()), &["10.0.0.2".into()])
            .unwrap();
        let id2 = Identity {
            cert_pem: cert,
            key_pem: key,
        };
        assert_eq!(id2.info().unwrap().role, Some(Role::Node("edge-2".into())));
        // Both configurations build.
        let tls = Tls::new(ca.cert_pem.clone(), Some(id2)).unwrap();
        tls.server_config().unwrap();
        tls.client_config().unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.save(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is owner-only");
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("https://127.0.0.1:7070/x").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:7070").as_deref(), Some("::1"));
        assert_eq!(url_host("edge.example:80").as_deref(), Some("edge.example"));
    }
}
