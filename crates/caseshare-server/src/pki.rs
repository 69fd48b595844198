//! The development PKI: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates whose SPIFFE URI SANs name the
//! sample agencies, an auditor and an admin. Written as PEM files; private
//! keys are created with mode 0600. For development and tests only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The client identities a dev PKI contains: (file name, SPIFFE path).
pub const DEV_CLIENTS: &[(&str, &str)] = &[
    ("nhs-trust-a", "agency/nhs-trust-a"),
    ("school-b", "agency/school-b"),
    ("la-social-care-c", "agency/la-social-care-c"),
    ("auditor", "auditor/auditor"),
    ("admin", "admin/admin"),
];

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes a file, creating it with the given mode.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Caseshare development PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A CA able to issue certificates and revocation lists.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a new CA with the given common name.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// Loads the CA of a dev PKI directory (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
        };
        let cert_pem = read("ca.pem")?;
        let key = KeyPair::from_pem(&read("ca.key")?)?;
        Ok(DevCa {
            issuer: Issuer::from_ca_cert_pem(&cert_pem, key)?,
            cert_pem,
        })
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a server certificate for the given DNS names / IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<(String, String), PkiError> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn("caseshare server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a client certificate with `spiffe_id` as its URI SAN.
    pub fn issue_client(
        &self,
        spiffe_id: &str,
        validity: Option<time_offset::Offset>,
    ) -> Result<(String, String), PkiError> {
        self.issue_client_with_serial(spiffe_id, validity, rand::random::<u64>() >> 1)
    }

    /// Issues a client certificate with a chosen serial number (to revoke it).
    pub fn issue_client_with_serial(
        &self,
        spiffe_id: &str,
        validity: Option<time_offset::Offset>,
        serial: u64,
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(spiffe_id);
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        if let Some(offset) = validity {
            offset.apply(&mut params);
        }
        self.sign(params)
    }

    /// Issues a leaf with exactly the given URI and DNS SANs and extended
    /// key usages (none when both flags are false), for tests of the
    /// certificates the broker refuses (two SPIFFE ids, no clientAuth, a
    /// server certificate without serverAuth).
    pub fn issue_leaf(
        &self,
        uri_sans: &[&str],
        dns_sans: &[&str],
        client_auth: bool,
        server_auth: bool,
    ) -> Result<(String, String), PkiError> {
        let mut params =
            CertificateParams::new(dns_sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(uri_sans.first().copied().unwrap_or("caseshare leaf"));
        for uri in uri_sans {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into()?));
        }
        if client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        self.sign(params)
    }

    /// A CRL revoking the given serial numbers, PEM.
    pub fn revocation_list(&self, serials: &[u64], crl_number: u64) -> Result<String, PkiError> {
        let now = std::time::SystemTime::now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: (now - std::time::Duration::from_secs(60)).into(),
            next_update: (now + std::time::Duration::from_secs(30 * 86_400)).into(),
            crl_number: rcgen::SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now.into(),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn sign(&self, params: CertificateParams) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Validity adjustments for test certificates (expired, not yet valid).
pub mod time_offset {
    /// Shifts a certificate's validity window.
    #[derive(Debug, Clone, Copy)]
    pub enum Offset {
        /// Valid from two days ago until one day ago.
        Expired,
        /// Valid from tomorrow.
        NotYetValid,
    }

    impl Offset {
        pub(super) fn apply(self, params: &mut rcgen::CertificateParams) {
            let now = std::time::SystemTime::now();
            let day = std::time::Duration::from_secs(86_400);
            let (from, to) = match self {
                Offset::Expired => (now - 2 * day, now - day),
                Offset::NotYetValid => (now + day, now + 30 * day),
            };
            params.not_before = from.into();
            params.not_after = to.into();
        }
    }
}

/// Paths of a written dev PKI.
#[derive(Debug, Clone)]
pub struct DevPkiPaths {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
}

impl DevPkiPaths {
    /// The paths in `dir` (whether or not they exist).
    pub fn in_dir(dir: &Path) -> Self {
        DevPkiPaths {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    /// A client's certificate and key paths.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// True if the CA and server files exist.
    pub fn exists(&self) -> bool {
        self.ca.exists() && self.server_cert.exists() && self.server_key.exists()
    }
}

/// Every file of a dev PKI, by name: (file, mode).
pub fn dev_pki_files() -> Vec<(String, u32)> {
    let mut files = vec![
        ("ca.pem".to_string(), 0o644),
        ("ca.key".to_string(), 0o600),
        ("server.pem".to_string(), 0o644),
        ("server.key".to_string(), 0o600),
    ];
    for (name, _) in DEV_CLIENTS {
        files.push((format!("{name}.pem"), 0o644));
        files.push((format!("{name}.key"), 0o600));
    }
    files
}

/// Writes a complete dev PKI into `dir` for `trust_domain`, or nothing: it
/// is built in a temporary sibling directory, every file synced, then
/// renamed into place and the parent synced (`crate::datadir`). `dir` must
/// not exist or be empty: a CA is never made next to issued certificates.
pub fn write_dev_pki(dir: &Path, trust_domain: &str) -> Result<DevPkiPaths, PkiError> {
    write_dev_pki_with_nats(dir, trust_domain, &[])
}

/// The files [`write_dev_pki_with_nats`] adds for NATS: (file, mode).
pub fn dev_pki_nats_files() -> Vec<(String, u32)> {
    [
        ("nats.pem", 0o644),
        ("nats.key", 0o600),
        ("nats-client.pem", 0o644),
        ("nats-client.key", 0o600),
    ]
    .into_iter()
    .map(|(f, m)| (f.to_string(), m))
    .collect()
}

/// [`write_dev_pki`], and with `nats_hosts` not empty also, from the same
/// CA, `nats.pem`/`nats.key` for the NATS servers (DNS names
/// `nats_hosts`; server and client authentication, as NATS routes use one
/// certificate both ways) and `nats-client.pem`/`nats-client.key` for the
/// brokers' connections to NATS (client authentication).
pub fn write_dev_pki_with_nats(
    dir: &Path,
    trust_domain: &str,
    nats_hosts: &[String],
) -> Result<DevPkiPaths, PkiError> {
    let has_files = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if has_files {
        return Err(PkiError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already holds files; a new CA is never made next to issued certificates \
                 (choose an empty or new directory)",
            ),
        });
    }
    let ca = DevCa::new("Caseshare dev CA")?;
    let (server_cert, server_key) = ca.issue_server(&["localhost", "127.0.0.1"])?;
    let mut contents = vec![ca.cert_pem.clone(), ca.key_pem(), server_cert, server_key];
    for (_, path) in DEV_CLIENTS {
        let (cert, key) = ca.issue_client(&format!("spiffe://{trust_domain}/{path}"), None)?;
        contents.push(cert);
        contents.push(key);
    }
    let mut files = dev_pki_files();
    if !nats_hosts.is_empty() {
        let mut node = CertificateParams::new(nats_hosts.to_vec())?;
        node.distinguished_name = dn("caseshare nats");
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (cert, key) = ca.sign(node)?;
        contents.extend([cert, key]);
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name = dn("caseshare broker (NATS client)");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = ca.sign(client)?;
        contents.extend([cert, key]);
        files.extend(dev_pki_nats_files());
    }
    // `contents` is in the order of `files`.
    crate::datadir::create_dir_atomically(dir, 0o755, |tmp| {
        for (text, (file, mode)) in contents.iter().zip(files) {
            write_file(&tmp.join(file), text.as_bytes(), mode)?;
        }
        Ok(())
    })?;
    Ok(DevPkiPaths::in_dir(dir))
}
