//! Session tickets sealed with a key from `tls.ticket_key_file`, shared by every collector
//! behind one balancer so a browser resumes on whichever one it reaches next. The file is
//! nginx's `ssl_session_ticket_key` format (48 or 80 random bytes: the first 16 name the key);
//! on SIGHUP a new file becomes the sealing key and the previous one still opens tickets, so
//! rotating it across a fleet does not force every browser into a full handshake.

use crate::config::ConfigError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// How long a browser may keep a ticket (a hint: the key's rotation is what ends it).
const LIFETIME_SECONDS: u32 = 12 * 3600;
const NAME_LEN: usize = 16;

/// One key: its name (written in front of every ticket) and the AEAD key.
struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                "tls.ticket_key_file",
                format!("cannot read {}: {e}", path.display()),
                "give a readable file of 80 random bytes (openssl rand 80 > ticket.key)",
            )
        })?;
        if bytes.len() != 48 && bytes.len() != 80 {
            return Err(ConfigError::new(
                "tls.ticket_key_file",
                format!("{} holds {} bytes", path.display(), bytes.len()),
                "use 80 random bytes (or nginx's 48): openssl rand 80 > ticket.key",
            ));
        }
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        // The rest is key material of nginx's layout (HMAC and AES keys); one AES-256-GCM key
        // is derived from all of it, so 48- and 80-byte files are equally good.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"beacon-collector session ticket key\0");
        ctx.update(&bytes[NAME_LEN..]);
        let digest = ctx.finish();
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref()).map_err(|_| {
            ConfigError::new(
                "tls.ticket_key_file",
                "the key could not be set up",
                "use 80 random bytes",
            )
        })?;
        Ok(Self {
            name,
            aead: LessSafeKey::new(key),
        })
    }
}

/// Seals tickets with the current key; opens them with the current or the previous one.
pub(crate) struct FileTicketer {
    keys: RwLock<(Arc<Key>, Option<Arc<Key>>)>,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileTicketer")
    }
}

impl FileTicketer {
    /// Reads the key file.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self {
            keys: RwLock::new((Arc::new(Key::from_file(path)?), None)),
        })
    }

    /// Takes a new key from `path` (a SIGHUP): the current one keeps opening tickets.
    /// The same key again changes nothing.
    pub(crate) fn rotate(&self, path: &Path) -> Result<(), ConfigError> {
        let new = Arc::new(Key::from_file(path)?);
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.0.name != new.name {
            let old = std::mem::replace(&mut keys.0, new);
            keys.1 = Some(old);
        }
        Ok(())
    }

    fn current(&self) -> (Arc<Key>, Option<Arc<Key>>) {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECONDS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (key, _) = self.current();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (cur, prev) = self.current();
        let key = [Some(cur), prev]
            .into_iter()
            .flatten()
            .find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn key_file(dir: &Path, name: &str, fill: u8) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, [fill; 80]).unwrap();
        p
    }

    #[test]
    fn two_collectors_with_one_file_open_each_others_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let f = key_file(dir.path(), "k", 7);
        let (a, b) = (
            FileTicketer::load(&f).unwrap(),
            FileTicketer::load(&f).unwrap(),
        );
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        let mut forged = t.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(b.decrypt(&forged), None, "a tampered ticket is refused");
        let other = FileTicketer::load(&key_file(dir.path(), "o", 8)).unwrap();
        assert_eq!(
            other.decrypt(&t),
            None,
            "another fleet's key does not open it"
        );
    }

    #[test]
    fn after_rotation_old_tickets_still_open_and_new_ones_use_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTicketer::load(&key_file(dir.path(), "k1", 1)).unwrap();
        let old = t.encrypt(b"before").unwrap();
        t.rotate(&key_file(dir.path(), "k2", 2)).unwrap();
        assert_eq!(t.decrypt(&old).as_deref(), Some(&b"before"[..]));
        let new = t.encrypt(b"after").unwrap();
        assert_eq!(&new[..NAME_LEN], &[2u8; NAME_LEN]);
        t.rotate(&key_file(dir.path(), "k3", 3)).unwrap();
        assert_eq!(t.decrypt(&old), None, "two rotations later it is gone");
    }

    #[test]
    fn a_short_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, [0u8; 32]).unwrap();
        let e = FileTicketer::load(&p).unwrap_err();
        assert_eq!(e.key, "tls.ticket_key_file");
        assert!(e.fix.contains("openssl rand 80"), "{e}");
    }
}
