//! `arbor certs dev`: a local CA and certificates for trying TLS and mutual
//! TLS on one machine. Not for production: the keys are written unencrypted
//! next to the certificates.
//!
//! Writes `ca.pem`/`ca.key`, `agent.pem`/`agent.key` (server and client
//! use, valid for `localhost`, `127.0.0.1` and any `--name`), and
//! `operator.pem`/`operator.key` (a client identity for the CLI, CN
//! `operator`).

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Private keys are readable by their owner alone.
const KEY_MODE: u32 = 0o600;
/// Certificates are public.
const CERT_MODE: u32 = 0o644;

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(name);
    let mode = if name.ends_with(".key") {
        KEY_MODE
    } else {
        CERT_MODE
    };
    let context = || format!("write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .with_context(context)?;
    // `mode` applies only to a new file: an existing one is narrowed too.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(context)?;
    file.write_all(text.as_bytes()).with_context(context)
}

/// Writes the CA and the agent and operator certificates into `dir`.
pub fn dev(dir: &Path, names: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "arbor dev CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    write(dir, "ca.pem", &ca.pem())?;

    let leaf = |cn: &str,
                sans: Vec<String>,
                usages: Vec<ExtendedKeyUsagePurpose>|
     -> Result<(String, String)> {
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().cloned());
    let (agent_pem, agent_key) = leaf(
        "arbor agent",
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    write(dir, "agent.pem", &agent_pem)?;
    write(dir, "agent.key", &agent_key)?;
    let (op_pem, op_key) = leaf(
        "operator",
        vec![],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write(dir, "operator.pem", &op_pem)?;
    write(dir, "operator.key", &op_key)?;
    Ok(())
}
