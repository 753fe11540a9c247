//! Certificates for the lab and the tests: a CA in a directory and one
//! certificate per component, each naming its drc identity
//! (`drc://<cluster>/<role>/<name>`), made with rcgen as an operator would
//! make them with openssl, cert-manager or step-ca (README, "Security").

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drc_tls::{Identity, Role, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// A CA on disk (`ca.pem`, `ca.key`) and the certificates it issued.
pub struct Pki {
    dir: PathBuf,
    cluster: String,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| path.display().to_string())?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The CA's parameters; the same every time, so that the CA key alone
/// rebuilds the issuer (its name and key identifier) of later certificates.
fn ca_params(cluster: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(DnType::CommonName, format!("drc {cluster} test CA"));
    Ok(params)
}

impl Pki {
    /// A new CA in `dir` for drc cluster `cluster`.
    pub fn create(dir: &Path, cluster: &str) -> anyhow::Result<Pki> {
        fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster)?.self_signed(&key)?;
        fs::write(dir.join("ca.pem"), cert.pem())?;
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        Ok(Pki { dir: dir.to_path_buf(), cluster: cluster.to_string() })
    }

    /// The CA already in `dir`.
    pub fn open(dir: &Path, cluster: &str) -> anyhow::Result<Pki> {
        anyhow::ensure!(dir.join("ca.key").exists(), "no CA in {}", dir.display());
        Ok(Pki { dir: dir.to_path_buf(), cluster: cluster.to_string() })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn issuer(&self) -> anyhow::Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&fs::read_to_string(self.dir.join("ca.key"))?)?;
        Ok(Issuer::new(ca_params(&self.cluster)?, key))
    }

    /// A certificate for `role`/`name` of this cluster, valid as a server
    /// for `hosts` (IP addresses or DNS names), in `<role>-<name>.pem` and
    /// `.key`.
    pub fn issue(&self, role: Role, name: &str, hosts: &[&str]) -> anyhow::Result<TlsFiles> {
        let id = Identity::new(&self.cluster, role, name)?;
        self.issue_for(&id, hosts, &format!("{role}-{name}"))
    }

    /// A client certificate for `role`/`name` in files of its own
    /// (`client-<file>`), so that it never replaces the certificate of a
    /// running process with the same identity.
    pub fn client(&self, role: Role, name: &str, file: &str) -> anyhow::Result<TlsFiles> {
        self.issue_for(&Identity::new(&self.cluster, role, name)?, &[], &format!("client-{file}"))
    }

    /// A certificate for any identity (another cluster's, say), in `file`.pem
    /// and `file`.key.
    pub fn issue_for(&self, id: &Identity, hosts: &[&str], file: &str) -> anyhow::Result<TlsFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, id.uri());
        params.subject_alt_names.push(SanType::URI(id.uri().as_str().try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, hosts, file)
    }

    /// A database server's certificate: only the hosts it is reached at
    /// (no drc identity), in `file`.pem and `file`.key.
    pub fn server(&self, hosts: &[&str], file: &str) -> anyhow::Result<TlsFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, hosts.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, hosts, file)
    }

    /// Adds `hosts` (IP or DNS names) to `params`, signs them with a new key
    /// and writes both.
    fn sign(&self, mut params: CertificateParams, hosts: &[&str], file: &str) -> anyhow::Result<TlsFiles> {
        for h in hosts {
            params.subject_alt_names.push(match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let files = TlsFiles { ca: self.ca(), cert: self.dir.join(format!("{file}.pem")), key: self.dir.join(format!("{file}.key")) };
        // The key first: a process that reloads when the certificate
        // changes then finds the matching key.
        write_private(&files.key, &key.serialize_pem())?;
        fs::write(&files.cert, cert.pem())?;
        Ok(files)
    }

    /// A CA of its own in `dir`, unrelated to this one, with one operator
    /// certificate: what a stranger would present.
    pub fn stranger(&self, dir: &Path) -> anyhow::Result<TlsFiles> {
        Pki::create(dir, &self.cluster)?.issue(Role::Operator, "stranger", &[])
    }
}

/// `--ca --cert --key` for drctl.
pub fn drctl_args(files: &TlsFiles) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    for (flag, path) in [("--ca", &files.ca), ("--cert", &files.cert), ("--key", &files.key)] {
        args.push(flag.into());
        args.push(path.clone().into_os_string());
    }
    args
}

/// The TLS section of a drc configuration file.
pub fn config_section(files: &TlsFiles) -> String {
    format!(
        "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.ca.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string()
    )
}
