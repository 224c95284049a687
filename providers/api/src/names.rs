//! Deterministic cloud object names, so a balancer can always be found again
//! from its key (a crash between create and status write never makes two).

use sha2::{Digest, Sha256};

/// The first `len` hex digits of SHA-256 over `parts` joined by `/`.
pub fn short_hash(parts: &[&str], len: usize) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b"/");
        }
        hasher.update(part.as_bytes());
    }
    let mut digest = hex::encode(hasher.finalize());
    digest.truncate(len.min(64));
    digest
}

/// `prefix-<hash>` where the hash covers cluster, namespace, name and uid,
/// trimmed to at most `max_len` characters (AWS allows 32 for NLB names).
/// The name carries no readable Service name on purpose: tags carry that, and
/// names cannot be renamed when a Service is.
pub fn owned_name(prefix: &str, parts: &[&str], max_len: usize) -> String {
    let hash_len = max_len.saturating_sub(prefix.len() + 1).clamp(8, 32);
    let name = format!("{prefix}-{}", short_hash(parts, hash_len));
    name.chars().take(max_len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_bounded() {
        let cases = [
            ("aws limit", "k8s", 32usize),
            ("long prefix still hashes 8+", "portico-cluster-x", 26),
            ("slb", "portico", 80),
        ];
        for (desc, prefix, max) in cases {
            let a = owned_name(prefix, &["c1", "default", "web", "uid-1"], max);
            let b = owned_name(prefix, &["c1", "default", "web", "uid-1"], max);
            let other = owned_name(prefix, &["c1", "default", "web", "uid-2"], max);
            assert_eq!(a, b, "{desc}: deterministic");
            assert_ne!(a, other, "{desc}: uid changes the name");
            assert!(a.len() <= max, "{desc}: {a} fits {max}");
            assert!(a.starts_with(prefix), "{desc}: {a} keeps its prefix");
        }
    }

    #[test]
    fn separator_prevents_ambiguity() {
        assert_ne!(short_hash(&["ab", "c"], 16), short_hash(&["a", "bc"], 16));
    }
}
