//! The cluster token and the proofs built from it. The token never crosses the wire: in a
//! session's Hello/Open exchange each side sends an HMAC-SHA256, keyed by the token, of both
//! sides' random nonces and its role, and checks the other side's in constant time.

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The environment variable that may hold the token instead of a file.
pub const TOKEN_ENV: &str = "ADCNN_TOKEN";
/// Longest token file read.
pub const MAX_TOKEN_BYTES: u64 = 4096;
/// Shortest token accepted (bytes after trimming).
pub const MIN_TOKEN_BYTES: usize = 16;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 32;

/// Who proves: the roles are part of what is signed, so a worker's proof cannot be replayed
/// as a coordinator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Worker,
    Coordinator,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Worker => b"adcnn worker",
            Role::Coordinator => b"adcnn coordinator",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no cluster token: pass --token-file FILE or set {TOKEN_ENV} (the same token on the coordinator and every worker)"
    )]
    Missing,
    #[error("cannot read the token file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "the token in {0} is too short: use at least {MIN_TOKEN_BYTES} bytes (e.g. `head -c 32 /dev/urandom | base64 > token`)"
    )]
    Short(String),
}

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Token(hmac::Key);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    pub fn new(secret: &[u8]) -> Token {
        Token(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// From `--token-file` when given, else from [`TOKEN_ENV`].
    pub fn load(file: Option<&Path>) -> Result<Token, TokenError> {
        let (text, from) = match file {
            Some(path) => {
                let shown = path.display().to_string();
                let read = |reason: String| TokenError::Read {
                    path: shown.clone(),
                    reason,
                };
                let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
                if meta.len() > MAX_TOKEN_BYTES {
                    return Err(read(format!("larger than {MAX_TOKEN_BYTES} bytes")));
                }
                let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
                (bytes, shown)
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(v) => (v.into_bytes(), TOKEN_ENV.to_string()),
                Err(_) => return Err(TokenError::Missing),
            },
        };
        let trimmed = text.trim_ascii();
        if trimmed.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::Short(from));
        }
        Ok(Token::new(trimmed))
    }

    /// The proof `role` sends: HMAC of its label and both nonces, coordinator's first.
    pub fn prove(&self, role: Role, coordinator_nonce: &[u8], worker_nonce: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(role.label());
        ctx.update(coordinator_nonce);
        ctx.update(worker_nonce);
        ctx.sign().as_ref().to_vec()
    }

    /// Whether `proof` is `role`'s proof for these nonces (constant time).
    pub fn verify(
        &self,
        role: Role,
        coordinator_nonce: &[u8],
        worker_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        let mut msg = Vec::with_capacity(32 + 2 * NONCE_BYTES);
        msg.extend_from_slice(role.label());
        msg.extend_from_slice(coordinator_nonce);
        msg.extend_from_slice(worker_nonce);
        hmac::verify(&self.0, &msg, proof).is_ok()
    }
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The system generator fails only if the OS cannot provide randomness at all; a zero
    // nonce then still gives a working (if predictable) session rather than a panic.
    let _ = SystemRandom::new().fill(&mut b);
    b
}

/// A fresh nonce.
pub fn nonce() -> Vec<u8> {
    random_bytes(NONCE_BYTES)
}

/// A fresh session id (hex).
pub fn session_id() -> String {
    random_bytes(16)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_token_role_and_nonces() {
        let t = Token::new(b"0123456789abcdef0123");
        let (c, w) = (nonce(), nonce());
        let p = t.prove(Role::Coordinator, &c, &w);
        assert!(t.verify(Role::Coordinator, &c, &w, &p));
        assert!(!t.verify(Role::Worker, &c, &w, &p), "roles differ");
        assert!(!t.verify(Role::Coordinator, &w, &c, &p), "nonces swapped");
        let other = Token::new(b"0123456789abcdef0124");
        assert!(
            !other.verify(Role::Coordinator, &c, &w, &p),
            "another token"
        );
        assert!(!t.verify(Role::Coordinator, &c, &w, &p[..16]), "truncated");
    }

    #[test]
    fn tokens_load_from_a_file_and_refuse_short_or_missing_ones() {
        let dir = std::env::temp_dir().join(format!("adcnn-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("token");
        std::fs::write(&f, "  a-long-enough-secret-token\n").expect("write");
        let t = Token::load(Some(&f)).expect("loads");
        let (c, w) = (nonce(), nonce());
        // Whitespace around the token does not count.
        let same = Token::new(b"a-long-enough-secret-token");
        assert!(same.verify(Role::Worker, &c, &w, &t.prove(Role::Worker, &c, &w)));
        std::fs::write(&f, "short").expect("write");
        assert!(matches!(Token::load(Some(&f)), Err(TokenError::Short(_))));
        assert!(matches!(
            Token::load(Some(&dir.join("missing"))),
            Err(TokenError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
