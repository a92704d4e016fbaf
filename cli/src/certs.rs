//! `stead certs ca|node|client`: a cluster's production certificates.
//!
//! The profiles, as the runtime expects them (a node's certificate names the
//! node; any other certificate of the CA is a client):
//!
//! - **CA**: self-signed, subject CN = `--common-name`, basic constraints
//!   CA with path length 0 (it signs nodes and clients directly), key usages
//!   keyCertSign and cRLSign.
//! - **node**: subject CN = the node's name, subjectAltName DNS = the node's
//!   name (the TLS server name other nodes and clients check), extended key
//!   usages serverAuth and clientAuth (a node also connects to other nodes),
//!   basic constraints not a CA, key usage digitalSignature.
//! - **client**: subject CN = the client's name, no subjectAltName, extended
//!   key usage clientAuth only (it can never serve as a node), basic
//!   constraints not a CA, key usage digitalSignature.
//!
//! Keys are ECDSA P-256. Leaf certificates carry the CA's key identifier and
//! are valid from an hour before they are issued (so that a machine whose
//! clock is a little behind accepts them at once), never past the CA's own
//! end. Private keys are created readable by their owner only (mode 0600)
//! from the start, and no file is ever overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::note;

/// The CA's certificate and key file names, in `--out` and `--ca-dir`.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key.pem";

/// File modes: a private key is readable by its owner only; a certificate
/// by everyone.
const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// The longest validity `--days` accepts (about a hundred years).
const MAX_DAYS: u32 = 36_500;

/// The `stead certs` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Creates the cluster's certificate authority: `ca.pem` and its private
    /// key `ca.key.pem` (mode 0600). Keep the key offline; every node and
    /// client trusts `ca.pem`.
    Ca(CaArgs),
    /// Issues a node's certificate, signed by the CA: `<NAME>.pem` and
    /// `<NAME>.key.pem`. The certificate names the node (CN and DNS name).
    Node(IssueArgs),
    /// Issues a client's certificate (for a process built with `.client()`),
    /// signed by the CA: `<NAME>.pem` and `<NAME>.key.pem`.
    Client(IssueArgs),
}

/// The arguments of `stead certs ca`.
#[derive(clap::Args)]
pub(crate) struct CaArgs {
    /// How many days the CA is valid.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS as i64))]
    days: u32,
    /// The CA's common name (its subject).
    #[arg(long, default_value = "stead cluster CA", value_name = "NAME")]
    common_name: String,
    /// Where to write `ca.pem` and `ca.key.pem` (created if missing).
    #[arg(long, default_value = ".", value_name = "DIR")]
    out: PathBuf,
}

/// The arguments of `stead certs node` and `stead certs client`.
#[derive(clap::Args)]
pub(crate) struct IssueArgs {
    /// The name: letters, digits and `-`. A node's is the name it has in
    /// `.node(name)` and `.peer(name, addr)`.
    name: String,
    /// Where the CA's `ca.pem` and `ca.key.pem` are.
    #[arg(long, default_value = ".", value_name = "DIR")]
    ca_dir: PathBuf,
    /// How many days the certificate is valid (never past the CA's end).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS as i64))]
    days: u32,
    /// Where to write the certificate and its key (created if missing).
    #[arg(long, default_value = ".", value_name = "DIR")]
    out: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Node,
    Client,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

/// Runs a `stead certs` subcommand, saying on `out` what it wrote.
pub(crate) fn run(command: Command, out: &mut impl Write) -> Result<()> {
    match command {
        Command::Ca(args) => ca(args, out),
        Command::Node(args) => issue(Role::Node, args, out),
        Command::Client(args) => issue(Role::Client, args, out),
    }
}

fn ca(args: CaArgs, out: &mut impl Write) -> Result<()> {
    if args.common_name.trim().is_empty() {
        return Err(Error::Ca("the CA's `--common-name` must not be empty".into()));
    }
    let cert_path = args.out.join(CA_CERT);
    let key_path = args.out.join(CA_KEY);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, args.common_name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (not_before, not_after) = validity(args.days)?;
    (params.not_before, params.not_after) = (not_before, not_after);
    let cert = params.self_signed(&key)?;
    create_dir(&args.out)?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    writeln!(
        out,
        "wrote {}: CA certificate `{}`, valid until {}",
        cert_path.display(),
        args.common_name,
        date(not_after)
    )?;
    writeln!(out, "wrote {}: its private key (mode 0600); keep it offline", key_path.display())?;
    Ok(())
}

fn issue(role: Role, args: IssueArgs, out: &mut impl Write) -> Result<()> {
    check_name(role, &args.name)?;
    let cert_path = args.out.join(format!("{}.pem", args.name));
    let key_path = args.out.join(format!("{}.key.pem", args.name));
    refuse_existing(&[&cert_path, &key_path])?;
    let ca = Ca::load(&args.ca_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, args.name.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match role {
        Role::Node => {
            params.subject_alt_names = vec![SanType::DnsName(args.name.clone().try_into()?)];
            params.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        }
        Role::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    let (not_before, mut not_after) = validity(args.days)?;
    if not_after > ca.not_after {
        not_after = ca.not_after;
        note(format_args!(
            "the certificate ends with its CA on {}, before the {} days asked for",
            date(not_after),
            args.days
        ));
    }
    (params.not_before, params.not_after) = (not_before, not_after);
    let cert = params.signed_by(&key, &ca.issuer, &ca.key)?;
    create_dir(&args.out)?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    let usage = match role {
        Role::Node => format!("DNS name `{}`, server and client authentication", args.name),
        Role::Client => "client authentication only".to_string(),
    };
    writeln!(
        out,
        "wrote {}: {} certificate `{}` ({usage}), valid until {}, signed by {}",
        cert_path.display(),
        role.noun(),
        args.name,
        date(not_after),
        ca.cert_path.display()
    )?;
    writeln!(out, "wrote {}: its private key (mode 0600)", key_path.display())?;
    Ok(())
}

/// Node and client names follow the runtime's rule for node names (letters,
/// digits and `-`), and must be usable as a TLS server name: one DNS label
/// that is not a number.
fn check_name(role: Role, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Some("use letters, digits and `-` only (a node's name is its TLS server name)")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("it must not start or end with `-`")
    } else if name.len() > 63 {
        Some("it is longer than 63 characters")
    } else if is_number(name) {
        Some("a TLS server name cannot be a number (it would read as an address)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::BadName { kind: role.noun(), name: name.to_string(), reason }),
        None => Ok(()),
    }
}

/// Whether a name reads as a number: decimal, or hex with `0x`.
fn is_number(name: &str) -> bool {
    let hex = name.strip_prefix("0x").or_else(|| name.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.chars().all(|c| c.is_ascii_hexdigit()),
        None => name.chars().all(|c| c.is_ascii_digit()),
    }
}

/// The CA that signs leaf certificates, read from `--ca-dir`.
struct Ca {
    /// The CA certificate as rcgen's issuer (same subject, key and key id).
    issuer: rcgen::Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
    cert_path: PathBuf,
}

impl Ca {
    fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let read = |path: &Path| match fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::Ca(format!(
                "there is no CA in {}: {} is missing (create a CA with `stead certs ca --out {}`, or give \
                 its directory with `--ca-dir`)",
                dir.display(),
                path.display(),
                dir.display()
            ))),
            Err(source) => Err(Error::Io { doing: "read", path: path.to_path_buf(), source }),
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        warn_if_readable_by_others(&key_path);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::Ca(format!("{} is not a PEM private key: {e}", key_path.display())))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| Error::Ca(format!("{} is not a PEM certificate: {e}", cert_path.display())))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(Error::Ca(format!(
                "{} is not a CA certificate (its basic constraints do not allow it to sign)",
                cert_path.display()
            )));
        }
        if certificate_key(&cert_pem).as_deref() != Some(key.public_key_der().as_slice()) {
            return Err(Error::Ca(format!(
                "{} is not the private key of {}; certificates it signed would not be trusted",
                key_path.display(),
                cert_path.display()
            )));
        }
        let not_after = params.not_after;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(Error::Ca(format!("the CA {} expired on {}", cert_path.display(), date(not_after))));
        }
        let issuer = params.self_signed(&key)?;
        Ok(Ca { issuer, key, not_after, cert_path })
    }
}

/// The public key (SubjectPublicKeyInfo DER) of a PEM certificate.
fn certificate_key(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.public_key().raw.to_vec())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            note(format_args!("{} can be read by others (mode {mode:04o}); `chmod 600` it", path.display()));
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// From an hour ago (for clocks a little behind) to `days` from now.
fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(time::Duration::days(i64::from(days)))
        .ok_or_else(|| Error::Ca(format!("{days} days from now is too far in the future")))?;
    Ok((now - time::Duration::hours(1), not_after))
}

/// A certificate time as RFC 3339 UTC, to the second.
fn date(time: OffsetDateTime) -> String {
    let seconds = time.unix_timestamp().max(0) as u64;
    crate::format::utc_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Refuses to go on when any output file exists, before anything is written.
fn refuse_existing(paths: &[&Path]) -> Result<()> {
    match paths.iter().find(|path| path.exists()) {
        Some(path) => Err(Error::Exists(path.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Io { doing: "create", path: dir.to_path_buf(), source })
}

/// Writes a key (first) and its certificate; the certificate's presence
/// means the pair is complete. Neither may exist.
fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> Result<()> {
    write_new(key_path, key, PRIVATE)?;
    if let Err(err) = write_new(cert_path, cert, PUBLIC) {
        // The key is ours (it was just created) and useless alone.
        let _ = fs::remove_file(key_path);
        return Err(err);
    }
    Ok(())
}

/// Creates `path`, which must not exist, with `mode` from the start (on
/// Unix): a key is never readable by others, not even for a moment.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists(path.to_path_buf()),
        _ => Error::Io { doing: "create", path: path.to_path_buf(), source },
    })?;
    if let Err(source) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(Error::Io { doing: "write", path: path.to_path_buf(), source });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_dns_labels_of_letters_digits_and_hyphens() {
        for good in ["ohio", "node-1", "Seoul", "a", "1a", "x0"] {
            assert!(check_name(Role::Node, good).is_ok(), "{good}");
        }
        for bad in ["", "oh io", "ohio.example", "ünï", "-ohio", "ohio-", "123", "0x1f", &"a".repeat(64)] {
            assert!(check_name(Role::Node, bad).is_err(), "{bad}");
        }
    }
}
