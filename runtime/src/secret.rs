//! The cluster secret from which every namespace's id keys are derived.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::id::decode_hex;

const FILE_NAME: &str = "secret";
const MIN_LEN: usize = 16;

/// The 32-byte key for this runtime: derived from the configured secret, or
/// read from (or created in) `data_dir/secret`, or random for an in-memory
/// runtime without a configured secret.
pub(crate) fn resolve(configured: Option<&[u8]>, data_dir: Option<&Path>) -> Result<[u8; 32]> {
    if let Some(secret) = configured {
        if secret.len() < MIN_LEN {
            return Err(Error::Config(format!(
                "the cluster secret must be at least {MIN_LEN} bytes, it has {}",
                secret.len()
            )));
        }
        return Ok(blake3::derive_key("stead 2026 cluster secret", secret));
    }
    let Some(dir) = data_dir else {
        return Ok(blake3::derive_key("stead 2026 cluster secret", &random_bytes()));
    };
    let path = dir.join(FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(e) => {
            return Err(Error::Config(format!("cannot read the secret file {}: {e}", path.display())));
        }
    };
    let bytes = decode_hex(text.trim()).ok_or_else(|| {
        Error::Config(format!(
            "the secret file {} is not 64 hex digits; restore it from a backup (ids minted with \
             another secret are refused)",
            path.display()
        ))
    })?;
    Ok(blake3::derive_key("stead 2026 cluster secret", &bytes))
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// Writes a new random secret to `path`, readable by its owner only.
fn create(path: &Path) -> Result<String> {
    let text: String = random_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(text),
        // Another runtime on the same directory won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read the secret file {}: {e}", path.display()))),
        Err(e) => Err(Error::Config(format!("cannot create the secret file {}: {e}", path.display()))),
    }
}
