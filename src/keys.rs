//! Signing keys on disk: `wsfs keygen` writes an Ed25519 secret key (mode 0600) and its public
//! key beside it (`KEY.pub`); `persist --sign-key` reads the first, `--trust-key` the second.
//!
//! Formats (text, one line): `wsfs-ed25519-secret-key <64 hex>` and
//! `wsfs-ed25519-public-key <64 hex> <key id>`.

use crate::error::WsfsError;
use crate::manifest::signature::key_id;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const SECRET_TAG: &str = "wsfs-ed25519-secret-key";
const PUBLIC_TAG: &str = "wsfs-ed25519-public-key";

fn pub_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_os_string();
    p.push(".pub");
    PathBuf::from(p)
}

/// Writes a new key pair: `out` (secret, 0600) and `out.pub`. Never overwrites.
pub fn keygen(out: &Path) -> Result<(PathBuf, String), WsfsError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| WsfsError::Failed(format!("no randomness from the OS: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    let public = pub_path(out);
    for p in [out, public.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(WsfsError::Usage(format!(
                "{} exists; wsfs keygen never overwrites a key (remove it first or pick another --out)",
                p.display()
            )));
        }
    }
    let write = |p: &Path, mode: u32, text: String| -> Result<(), WsfsError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| WsfsError::Failed(format!("cannot create {}: {e}", p.display())))?;
        f.write_all(text.as_bytes())
            .map_err(|e| WsfsError::Failed(format!("cannot write {}: {e}", p.display())))
    };
    write(out, 0o600, format!("{SECRET_TAG} {}\n", hex::encode(seed)))?;
    let id = key_id(&key.verifying_key());
    write(
        &public,
        0o644,
        format!(
            "{PUBLIC_TAG} {} {id}\n",
            hex::encode(key.verifying_key().as_bytes())
        ),
    )?;
    Ok((public, id))
}

fn field(path: &Path, tag: &str) -> Result<[u8; 32], WsfsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| WsfsError::Usage(format!("key file {}: {e}", path.display())))?;
    let mut words = text.split_whitespace();
    let bad = || {
        WsfsError::Usage(format!(
            "{} is not a {tag} file (made by wsfs keygen)",
            path.display()
        ))
    };
    if words.next() != Some(tag) {
        return Err(bad());
    }
    hex::decode(words.next().ok_or_else(bad)?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)
}

/// Reads a secret key written by [`keygen`]. Refuses one that others may read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, WsfsError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| WsfsError::Usage(format!("--sign-key {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(WsfsError::Usage(format!(
            "--sign-key {}: readable by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(SigningKey::from_bytes(&field(path, SECRET_TAG)?))
}

/// Reads a public key written by [`keygen`] (`KEY.pub`).
pub fn load_trusted_key(path: &Path) -> Result<VerifyingKey, WsfsError> {
    VerifyingKey::from_bytes(&field(path, PUBLIC_TAG)?)
        .map_err(|e| WsfsError::Usage(format!("{}: not a valid public key: {e}", path.display())))
}

/// Every trusted key: `--trust-key` files and `trust_keys` of the config file.
pub fn load_trusted(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, WsfsError> {
    paths.iter().map(|p| load_trusted_key(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_and_its_public_half() {
        let t = tempfile::tempdir().expect("tempdir");
        let k = t.path().join("ci.key");
        let (public, id) = keygen(&k).expect("keygen");
        assert_eq!(
            std::fs::metadata(&k).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let sk = load_signing_key(&k).expect("secret");
        let pk = load_trusted_key(&public).expect("public");
        assert_eq!(sk.verifying_key(), pk);
        assert_eq!(key_id(&pk), id);
        assert!(
            matches!(keygen(&k), Err(WsfsError::Usage(_))),
            "never overwrites"
        );
        assert!(
            load_trusted_key(&k).is_err(),
            "a secret key is not a public key"
        );
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            load_signing_key(&k).is_err(),
            "a readable secret key is refused"
        );
    }
}
