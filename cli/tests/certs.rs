//! `stead certs`: the real binary issues a CA, node and client certificates
//! with the runtime's profiles, and they work in a real cluster.

mod common;

use std::ffi::OsStr;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Account, SECRET, stead};
use stead::Runtime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const DAY: i64 = 24 * 60 * 60;

fn certs(pki: &Path, args: &[&str]) -> common::Run {
    // Options right after the subcommand, so that a name can follow `--`.
    let mut all = vec![OsStr::new("certs"), OsStr::new(args[0]), OsStr::new("--out"), pki.as_os_str()];
    if args[0] != "ca" {
        all.extend([OsStr::new("--ca-dir"), pki.as_os_str()]);
    }
    all.extend(args[1..].iter().map(OsStr::new));
    stead(all)
}

/// A CA, the node `ohio` and the client `worker` in `pki`.
fn issue_all(pki: &Path) {
    certs(pki, &["ca"]).ok();
    certs(pki, &["node", "ohio"]).ok();
    certs(pki, &["client", "worker"]).ok();
}

fn with_cert<R>(path: &Path, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let bytes = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
    let cert = pem.parse_x509().unwrap();
    f(&cert)
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string()
}

fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name().unwrap() {
        None => Vec::new(),
        Some(san) => san
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                other => panic!("only DNS names expected: {other:?}"),
            })
            .collect(),
    }
}

/// (serverAuth, clientAuth)
fn usages(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().expect("an extended key usage");
    assert!(!eku.value.any, "no anyExtendedKeyUsage");
    (eku.value.server_auth, eku.value.client_auth)
}

fn days_valid(cert: &X509Certificate<'_>) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let validity = cert.validity();
    assert!(validity.not_before.timestamp() <= now, "valid from now on");
    (validity.not_after.timestamp() - now + DAY / 2) / DAY
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_issue_a_ca_a_node_and_a_client_with_the_runtimes_profiles() {
    let pki = tempfile::tempdir().unwrap();
    let pki = pki.path();
    let run = certs(pki, &["ca"]);
    assert!(run.ok().contains("ca.pem") && run.stderr.is_empty(), "{}{}", run.stdout, run.stderr);
    certs(pki, &["node", "ohio"]).ok();
    certs(pki, &["client", "worker", "--days", "30"]).ok();

    #[cfg(unix)]
    for (file, expected) in [
        ("ca.key.pem", 0o600),
        ("ohio.key.pem", 0o600),
        ("worker.key.pem", 0o600),
        ("ca.pem", 0o644),
        ("ohio.pem", 0o644),
        ("worker.pem", 0o644),
    ] {
        assert_eq!(mode(&pki.join(file)), expected, "{file}");
    }

    let ca_bytes = std::fs::read(pki.join("ca.pem")).unwrap();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_bytes).unwrap();
    let ca = ca_pem.parse_x509().unwrap();
    assert_eq!(common_name(&ca), "stead cluster CA");
    assert!(ca.is_ca());
    assert_eq!(ca.basic_constraints().unwrap().unwrap().value.path_len_constraint, Some(0));
    let usage = ca.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    assert_eq!(days_valid(&ca), 3650);
    ca.verify_signature(None).expect("self-signed");

    with_cert(&pki.join("ohio.pem"), |node| {
        assert_eq!(common_name(node), "ohio");
        assert_eq!(dns_names(node), ["ohio"], "the TLS server name is the node's name");
        assert_eq!(usages(node), (true, true), "serverAuth and clientAuth");
        assert!(!node.is_ca());
        assert_eq!(node.issuer(), ca.subject());
        node.verify_signature(Some(ca.public_key())).expect("signed by the CA");
        assert_eq!(days_valid(node), 365);
    });
    with_cert(&pki.join("worker.pem"), |client| {
        assert_eq!(common_name(client), "worker");
        assert_eq!(dns_names(client), Vec::<String>::new(), "a client names no server");
        assert_eq!(usages(client), (false, true), "clientAuth only");
        assert!(!client.is_ca());
        client.verify_signature(Some(ca.public_key())).expect("signed by the CA");
        assert_eq!(days_valid(client), 30);
    });
}

/// A loopback address with a port the OS just handed out.
fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn files(pki: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (pki.join("ca.pem"), pki.join(format!("{name}.pem")), pki.join(format!("{name}.key.pem")))
}

async fn node(pki: &Path, cert: &str, addr: SocketAddr, data: &Path) -> Runtime {
    let (ca, chain, key) = files(pki, cert);
    Runtime::builder()
        .node("ohio")
        .peer("ohio", addr)
        .listen(addr)
        .secret(SECRET)
        .tls_pem_files(ca, chain, key)
        .data_dir(data)
        .host::<Account>()
        .build()
        .await
        .unwrap()
}

async fn client(pki: &Path, cert: &str, addr: SocketAddr) -> Runtime {
    let (ca, chain, key) = files(pki, cert);
    Runtime::builder()
        .client()
        .peer("ohio", addr)
        .secret(SECRET)
        .tls_pem_files(ca, chain, key)
        .in_memory()
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_node_and_client_certificates_carry_a_remote_call() {
    let pki = tempfile::tempdir().unwrap();
    issue_all(pki.path());
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let node = node(pki.path(), "ohio", addr, data.path()).await;
    let client = client(pki.path(), "worker", addr).await;

    let accounts = client.namespace::<Account>();
    let id = accounts.id_from_name("remote");
    let stub = accounts.stub(&id);
    let call = stub.put("greeting".into(), b"hello".to_vec());
    tokio::time::timeout(Duration::from_secs(30), call).await.expect("in time").unwrap().unwrap();
    assert_eq!(stub.get("greeting".into()).await.unwrap().unwrap(), Some(b"hello".to_vec()));
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();

    // The object the remote call made is on the node's disk.
    let listing = stead(["objects".as_ref(), data.path().as_os_str()]);
    assert!(listing.ok().contains(&id.to_string()), "{}", listing.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_serve_as_a_node() {
    let pki = tempfile::tempdir().unwrap();
    issue_all(pki.path());
    certs(pki.path(), &["client", "other"]).ok();
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // A node presenting a client's certificate (no serverAuth, no DNS name).
    let node = node(pki.path(), "worker", addr, data.path()).await;
    let client = client(pki.path(), "other", addr).await;

    let accounts = client.namespace::<Account>();
    let call = accounts.stub(&accounts.id_from_name("remote")).put("k".into(), vec![1]);
    // Refused at the handshake, so at once; in any case before the runtime's
    // own call deadline (30 s by default) has passed twice.
    let result = tokio::time::timeout(Duration::from_secs(60), call).await.expect("refused in time");
    assert!(result.is_err(), "the caller must refuse a server with a client certificate: {result:?}");
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
}

#[test]
fn certs_refuse_bad_names_existing_files_and_a_missing_or_mismatched_ca() {
    let pki = tempfile::tempdir().unwrap();
    let pki = pki.path();
    issue_all(pki);

    for (kind, name) in [
        ("node", "oh.io"),
        ("node", "-ohio"),
        ("node", "123"),
        ("node", "oh io"),
        ("client", "w_1"),
        ("node", ""),
    ] {
        let run = certs(pki, &[kind, "--", name]);
        assert!(run.failed().contains(&format!("`{name}` cannot name a {kind}: ")), "{}", run.stderr);
    }

    // Nothing is overwritten: not the CA, not a node's files.
    let ca_before = std::fs::read(pki.join("ca.key.pem")).unwrap();
    let run = certs(pki, &["ca"]);
    assert!(run.failed().contains("already exists"), "{}", run.stderr);
    assert_eq!(std::fs::read(pki.join("ca.key.pem")).unwrap(), ca_before);
    let node_before = std::fs::read(pki.join("ohio.pem")).unwrap();
    let run = certs(pki, &["node", "ohio"]);
    assert_eq!(
        run.failed(),
        format!(
            "stead: error: {} already exists; move it away or choose another `--out` directory (files are \
             never overwritten)",
            pki.join("ohio.pem").display()
        )
    );
    assert_eq!(std::fs::read(pki.join("ohio.pem")).unwrap(), node_before);
    // A key alone is enough to refuse, and then no certificate is written.
    std::fs::write(pki.join("lone.key.pem"), "mine").unwrap();
    assert!(certs(pki, &["client", "lone"]).failed().contains("lone.key.pem already exists"));
    assert!(!pki.join("lone.pem").exists());
    assert_eq!(std::fs::read_to_string(pki.join("lone.key.pem")).unwrap(), "mine");

    let empty = tempfile::tempdir().unwrap();
    let run = stead([
        "certs".as_ref(),
        "node".as_ref(),
        "seoul".as_ref(),
        "--ca-dir".as_ref(),
        empty.path().as_os_str(),
    ]);
    assert!(run.failed().contains("there is no CA in"), "{}", run.stderr);

    // A CA certificate with another key than its own.
    let wrong = tempfile::tempdir().unwrap();
    std::fs::copy(pki.join("ca.pem"), wrong.path().join("ca.pem")).unwrap();
    std::fs::copy(pki.join("ohio.key.pem"), wrong.path().join("ca.key.pem")).unwrap();
    let run = certs(wrong.path(), &["node", "seoul"]);
    assert!(run.failed().contains("is not the private key of"), "{}", run.stderr);
    assert!(!wrong.path().join("seoul.pem").exists());

    // A validity of zero days is a usage error.
    assert_eq!(certs(pki, &["node", "seoul", "--days", "0"]).code, Some(2));
}
