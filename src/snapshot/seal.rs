//! Manifest seals: a digest of the manifest's own content (corruption is detected) and an
//! Ed25519 signature over that digest (forgery is detected), and the trust decision of
//! whether a sealed or unsealed snapshot may be restored, verified or pruned.
//!
//! Threat model (BACKUP_POLICY.md "Threat model"): anyone who can write to the bucket can
//! encrypt to the public age recipient and write a manifest with correct sha256 sums, so
//! neither proves who made a snapshot. The signing key lives only on the hosts that back
//! up (0600, like the age identity, never in the bucket); its public half is listed in the
//! policy as `signing.trusted_keys`, which is all restore needs besides the age identity.
//!
//! The digest is sha256 over a canonical JSON form of the manifest without `digest` and
//! `signature`: object keys sorted at every level, no white space. Keys this build does not
//! know are covered too, so a later version's additions are protected and an older reader
//! still checks them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Manifest;

/// What the signature signs: a fixed context, then the digest string.
const CONTEXT: &[u8] = b"backupd manifest signature v1\n";
pub const PUBLIC_PREFIX: &str = "backupd-sign-";
pub const SECRET_PREFIX: &str = "BACKUPD-SIGN-SECRET-";

/// `[signing]`: how this host signs the manifests it commits and whose it trusts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningPolicy {
    /// The secret signing key (mode 0600); each manifest this host commits is signed with it.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Create `key_file` on first use if it does not exist.
    #[serde(default)]
    pub generate_key: bool,
    /// The key `wal-push` signs WAL receipts with, when it runs as a user who cannot read
    /// `key_file` (PostgreSQL's `archive_command` runs as the database's user): a key of
    /// that user's own, whose public half is in `trusted_keys`. Default: `key_file`.
    #[serde(default)]
    pub wal_key_file: Option<PathBuf>,
    /// Public keys (`backupd-sign-…`) whose snapshots restore, verify, list and prune
    /// accept; `key_file`'s own public key is trusted too.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Unsigned snapshots that started before this time are accepted: the ones made before
    /// signing was turned on. Later unsigned ones are refused as possible forgeries.
    #[serde(default)]
    pub accept_unsigned_before: Option<DateTime<Utc>>,
}

impl SigningPolicy {
    /// Pure checks for the policy loader.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for k in &self.trusted_keys {
            if let Err(e) = parse_public(k) {
                problems.push(format!("signing.trusted_keys: {e}"));
            }
        }
        if self.generate_key && self.key_file.is_none() {
            problems.push("signing.generate_key needs signing.key_file (where to write it)".into());
        }
        problems
    }
}

/// The signature stored in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signature {
    /// The signer's public key, `backupd-sign-<hex>`.
    pub key: String,
    /// Ed25519 over `CONTEXT || digest`, hex.
    pub ed25519: String,
}

/// What parsing found; never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seal {
    /// No signature (made before signing existed, without `[signing]`, or forged).
    #[default]
    Unsigned,
    /// A signature that verifies, by this key. Whether the key is trusted is [`Trust`]'s call.
    Signed { key: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "{0:?} is not a backupd signing public key (expected backupd-sign- and 64 hex digits, as printed by `backupd keygen --signing`)"
    )]
    BadPublic(String),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    // What `open` finds wrong with a manifest read from storage; "it" is the manifest.
    #[error("it has a signature but no digest: forged or corrupt")]
    SignedWithoutDigest,
    #[error(
        "its content does not match its digest ({stored}, content is {actual}): corrupt or edited"
    )]
    DigestMismatch { stored: String, actual: String },
    #[error("its signature key: {0}")]
    SignatureKey(Box<SealError>),
    #[error("its signature is not 64 hex-encoded bytes: forged or corrupt")]
    SignatureBytes,
    #[error("its signature is not written in canonical lower-case hex: edited")]
    NotCanonical,
    #[error("its signature by {key} does not verify: forged or corrupt")]
    DoesNotVerify { key: String },
}

pub fn parse_public(s: &str) -> Result<ed25519_dalek::VerifyingKey, SealError> {
    let bad = || SealError::BadPublic(s.to_string());
    let hex_part = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
    let bytes: [u8; 32] = hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

pub fn public_string(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", hex::encode(key.as_bytes()))
}

/// Reads a signing key file (`BACKUPD-SIGN-SECRET-<hex>`), refusing one others can read.
pub fn load_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey, crate::crypto::KeyError> {
    let text = crate::crypto::read_private(path)?;
    let seed: [u8; 32] = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(SECRET_PREFIX))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| crate::crypto::KeyError::IdentityUnreadable {
            path: path.into(),
            reason: format!("it holds no signing key ({SECRET_PREFIX}…, as written by `backupd keygen --signing`)"),
        })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Writes a new signing key to `path` (mode 0600, never overwriting) and returns its
/// public key as `backupd-sign-<hex>`.
pub fn generate_signing_key(path: &Path) -> Result<String, crate::crypto::KeyError> {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = public_string(&key.verifying_key());
    let body = format!(
        "# backupd manifest signing key, created {}\n# public key (put it in signing.trusted_keys): {public}\n{SECRET_PREFIX}{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        hex::encode(seed)
    );
    crate::crypto::write_new_private(path, &body)?;
    Ok(public)
}

/// The key this host signs its manifests with, created first when the policy asks.
pub fn signing_key(
    policy: &SigningPolicy,
) -> Result<Option<ed25519_dalek::SigningKey>, crate::crypto::KeyError> {
    let Some(path) = &policy.key_file else {
        return Ok(None);
    };
    if policy.generate_key && !path.exists() {
        let public = generate_signing_key(path)?;
        tracing::warn!(
            path = %path.display(),
            public_key = %public,
            "generated a new manifest signing key because signing.generate_key is set; \
             put its public key in signing.trusted_keys so restore on another machine trusts it"
        );
    }
    load_signing_key(path).map(Some)
}

/// Canonical JSON: keys sorted at every level, compact. Written here rather than relying
/// on serde_json's map order, which a dependency's feature flag could change.
fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            out.push(b'{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("a string serializes"));
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serializes")),
    }
}

/// `sha256:<hex>` of the manifest JSON `v` without its seal.
fn digest_of(v: &serde_json::Value) -> String {
    let mut body = v.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("digest");
        map.remove("signature");
    }
    let mut bytes = Vec::new();
    canonical(&body, &mut bytes);
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// Ed25519 over `context || digest`.
fn sign(context: &[u8], digest: &str, key: &ed25519_dalek::SigningKey) -> Signature {
    let mut message = context.to_vec();
    message.extend_from_slice(digest.as_bytes());
    Signature {
        key: public_string(&key.verifying_key()),
        ed25519: hex::encode(key.sign(&message).to_bytes()),
    }
}

/// Checks a stored signature over `context || digest`.
fn check(context: &[u8], digest: &str, sig: &Signature) -> Result<Seal, SealError> {
    let key = parse_public(&sig.key).map_err(|e| SealError::SignatureKey(Box::new(e)))?;
    let bytes: [u8; 64] = hex::decode(&sig.ed25519)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SealError::SignatureBytes)?;
    // One spelling only (lower-case hex), so a key string compares equal to the policy's.
    if public_string(&key) != sig.key || hex::encode(bytes) != sig.ed25519 {
        return Err(SealError::NotCanonical);
    }
    let mut message = context.to_vec();
    message.extend_from_slice(digest.as_bytes());
    key.verify(&message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .map_err(|_| SealError::DoesNotVerify {
            key: sig.key.clone(),
        })?;
    Ok(Seal::Signed {
        key: sig.key.clone(),
    })
}

/// Adds `digest`, and `signature` when a key is given, to a manifest about to be committed.
pub fn seal(manifest: &mut Manifest, key: Option<&ed25519_dalek::SigningKey>) {
    manifest.digest = None;
    manifest.signature = None;
    manifest.seal = Seal::Unsigned;
    let value = serde_json::to_value(&*manifest).expect("a manifest serializes");
    let digest = digest_of(&value);
    if let Some(key) = key {
        let signature = sign(CONTEXT, &digest, key);
        manifest.seal = Seal::Signed {
            key: signature.key.clone(),
        };
        manifest.signature = Some(signature);
    }
    manifest.digest = Some(digest);
}

/// Signs another JSON document backupd stores (a WAL receipt) under its own `context`, so
/// a signature over one kind of document never passes for another: over the canonical
/// form of `doc` without its `signature` key.
pub fn sign_document(
    doc: &serde_json::Value,
    context: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> Signature {
    sign(context, &digest_of(doc), key)
}

/// Checks the `signature` of a document read from storage (`doc` as stored): `Unsigned`
/// without one, an error when it does not verify over the document's content.
pub fn open_document(doc: &serde_json::Value, context: &[u8]) -> Result<Seal, SealError> {
    match doc.get("signature") {
        None | Some(serde_json::Value::Null) => Ok(Seal::Unsigned),
        Some(v) => {
            let sig: Signature =
                serde_json::from_value(v.clone()).map_err(|_| SealError::SignatureBytes)?;
            check(context, &digest_of(doc), &sig)
        }
    }
}

/// Checks the seal of a manifest read from storage (`raw` is its JSON as stored).
pub fn open(raw: &serde_json::Value, manifest: &Manifest) -> Result<Seal, SealError> {
    let Some(stored) = &manifest.digest else {
        if manifest.signature.is_some() {
            return Err(SealError::SignedWithoutDigest);
        }
        // Written before digests existed: nothing to check.
        return Ok(Seal::Unsigned);
    };
    let actual = digest_of(raw);
    if *stored != actual {
        return Err(SealError::DigestMismatch {
            stored: stored.clone(),
            actual,
        });
    }
    match &manifest.signature {
        None => Ok(Seal::Unsigned),
        Some(sig) => check(CONTEXT, stored, sig),
    }
}

/// Whose snapshots this process accepts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: BTreeSet<String>,
    accept_unsigned_before: Option<DateTime<Utc>>,
    /// `--allow-unsigned`: the operator vouches for unsigned snapshots this once.
    pub allow_unsigned: bool,
}

/// The trust decision about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgment {
    /// Signed by a trusted key.
    Trusted,
    /// Accepted, but the operator should know why it is not simply trusted.
    Accepted(String),
    /// Not to be restored, verified as good, or counted by retention.
    Refused(String),
}

impl Judgment {
    pub fn refused(&self) -> Option<&str> {
        match self {
            Judgment::Refused(why) => Some(why),
            _ => None,
        }
    }

    /// A short word for tables: `✓`, `unsigned`, `✗`.
    pub fn word(&self) -> &'static str {
        match self {
            Judgment::Trusted => "✓",
            Judgment::Accepted(_) => "unchecked",
            Judgment::Refused(_) => "✗",
        }
    }
}

impl Trust {
    /// From the policy: `trusted_keys` plus the public half of `key_file` when readable.
    pub fn new(policy: &SigningPolicy) -> Result<Self, SealError> {
        let mut trust = Self::listed(policy)?;
        if let Some(path) = &policy.key_file
            && path.exists()
        {
            trust = trust.with_key(&load_signing_key(path)?);
        }
        // The database user's key may be closed to this user: its public half belongs in
        // trusted_keys anyway, so reading it here is only a convenience.
        Ok(trust.with_readable(policy.wal_key_file.as_deref()))
    }

    /// From the policy's `trusted_keys` alone, without reading `key_file`: for commands
    /// run as a user who may not read it (`wal-push`, `wal-fetch` under PostgreSQL).
    pub fn listed(policy: &SigningPolicy) -> Result<Self, SealError> {
        let mut keys = BTreeSet::new();
        for k in &policy.trusted_keys {
            keys.insert(public_string(&parse_public(k)?));
        }
        Ok(Self {
            keys,
            accept_unsigned_before: policy.accept_unsigned_before,
            allow_unsigned: false,
        })
    }

    /// Trusts what `key` signs too (this process's own signatures).
    pub fn with_key(mut self, key: &ed25519_dalek::SigningKey) -> Self {
        self.keys.insert(public_string(&key.verifying_key()));
        self
    }

    /// Trusts the key at `path` too, when this user can read it.
    pub fn with_readable(self, path: Option<&Path>) -> Self {
        match path.map(load_signing_key) {
            Some(Ok(key)) => self.with_key(&key),
            _ => self,
        }
    }

    /// Whether any key is trusted: without one, nothing can be told from a forgery.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn judge(&self, m: &Manifest) -> Judgment {
        self.judge_seal(&m.seal, m.started_at)
    }

    /// The same decision for any sealed document made at `made_at` (a WAL receipt).
    pub fn judge_seal(&self, seal: &Seal, made_at: DateTime<Utc>) -> Judgment {
        match seal {
            Seal::Signed { key } if self.keys.contains(key) => Judgment::Trusted,
            Seal::Signed { key } if self.keys.is_empty() => Judgment::Accepted(format!(
                "signed by {key}, but the policy trusts no key ([signing] trusted_keys), so that proves nothing"
            )),
            Seal::Signed { key } => Judgment::Refused(format!(
                "signed by {key}, which signing.trusted_keys does not list: possibly forged by someone who can write to the bucket"
            )),
            Seal::Unsigned if self.keys.is_empty() => Judgment::Accepted(
                "unsigned, and the policy has no [signing]: anyone who can write to the bucket could have made it".into(),
            ),
            Seal::Unsigned if self.allow_unsigned => {
                Judgment::Accepted("unsigned, accepted by --allow-unsigned".into())
            }
            Seal::Unsigned
                if self
                    .accept_unsigned_before
                    .is_some_and(|t| made_at < t) =>
            {
                Judgment::Accepted(
                    "unsigned, made before signing.accept_unsigned_before".into(),
                )
            }
            Seal::Unsigned => Judgment::Refused(
                "unsigned: made before signing was configured, or forged by someone who can write to the bucket; if it is yours, pass --allow-unsigned or set signing.accept_unsigned_before".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    fn key(n: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[n; 32])
    }

    fn stored(m: &Manifest) -> Vec<u8> {
        serde_json::to_vec_pretty(m).unwrap()
    }

    fn trust(keys: &[&ed25519_dalek::SigningKey]) -> Trust {
        Trust {
            keys: keys
                .iter()
                .map(|k| public_string(&k.verifying_key()))
                .collect(),
            ..Trust::default()
        }
    }

    #[test]
    fn a_document_signature_covers_its_content_and_only_its_own_context() {
        let doc = serde_json::json!({"file": "000000010000000000000001", "plain": {"bytes": 1}});
        let mut signed = doc.clone();
        signed["signature"] = serde_json::to_value(sign_document(&doc, b"one\n", &key(1))).unwrap();
        assert_eq!(
            open_document(&signed, b"one\n").unwrap(),
            Seal::Signed {
                key: public_string(&key(1).verifying_key())
            }
        );
        assert_eq!(open_document(&doc, b"one\n").unwrap(), Seal::Unsigned);
        // Another kind of document's signature, or an edit under the signature: refused.
        assert!(open_document(&signed, b"two\n").is_err());
        let mut edited = signed.clone();
        edited["plain"]["bytes"] = 2.into();
        assert!(open_document(&edited, b"one\n").is_err());
        let mut manifest_sig = doc.clone();
        manifest_sig["signature"] =
            serde_json::to_value(sign_document(&doc, CONTEXT, &key(1))).unwrap();
        assert!(open_document(&manifest_sig, b"one\n").is_err());
    }

    #[test]
    fn a_signed_manifest_reads_back_signed_and_trusted() {
        let mut m = sample();
        seal(&mut m, Some(&key(1)));
        let back = crate::snapshot::parse_manifest(&stored(&m)).unwrap();
        assert_eq!(back.seal, m.seal);
        assert_eq!(trust(&[&key(1)]).judge(&back), Judgment::Trusted);
        assert!(trust(&[&key(2)]).judge(&back).refused().is_some());
    }

    /// Every single-bit flip anywhere in the stored manifest is caught: it no longer parses,
    /// its digest fails, its signature fails, or (in white space) nothing changed at all.
    #[test]
    fn every_bit_flip_is_detected() {
        let mut m = sample();
        seal(&mut m, Some(&key(1)));
        let good = stored(&m);
        let mut caught = 0;
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                match crate::snapshot::parse_manifest(&bad) {
                    Err(_) => caught += 1,
                    Ok(parsed) => {
                        let v: serde_json::Value = serde_json::from_slice(&bad).unwrap();
                        let g: serde_json::Value = serde_json::from_slice(&good).unwrap();
                        assert_eq!(v, g, "flip at byte {i} bit {bit} went unnoticed");
                        assert_eq!(parsed.seal, m.seal);
                    }
                }
            }
        }
        assert!(caught > good.len() * 7, "{caught}");
    }

    #[test]
    fn a_forgery_with_a_valid_digest_but_no_signature_is_refused_once_signing_is_on() {
        let mut m = sample();
        seal(&mut m, None);
        let back = crate::snapshot::parse_manifest(&stored(&m)).unwrap();
        assert_eq!(back.seal, Seal::Unsigned);
        let mut t = trust(&[&key(1)]);
        assert!(t.judge(&back).refused().is_some());
        t.accept_unsigned_before = Some(back.started_at + chrono::Duration::seconds(1));
        assert!(matches!(t.judge(&back), Judgment::Accepted(_)));
        // Without [signing] it is accepted, with the reason that this proves nothing.
        assert!(matches!(
            Trust::default().judge(&back),
            Judgment::Accepted(_)
        ));
    }

    #[test]
    fn a_signature_moved_to_another_manifest_fails() {
        let mut a = sample();
        seal(&mut a, Some(&key(1)));
        let mut b = sample();
        b.host = "elsewhere".into();
        seal(&mut b, None);
        b.signature = a.signature.clone();
        let err = crate::snapshot::parse_manifest(&stored(&b)).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn canonical_form_ignores_key_order_and_white_space() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#).unwrap();
        let mut out = Vec::new();
        canonical(&a, &mut out);
        assert_eq!(out, br#"{"a":null,"b":[1,{"x":"s","y":2}]}"#);
    }
}
