//! Kubernetes' name rules, for the places that must agree with the API server before they
//! send it something: the job spec's rules (`orch validate`), the CLI's `OrchJob` names and the
//! operator's labels.

/// A DNS-1123 subdomain (most object names): at most 253 characters, dot-separated parts of
/// lowercase letters, digits and `-`, each starting and ending with a letter or digit.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A non-empty label value, or the name part of a label key: at most 63 letters, digits, `-`,
/// `_` and `.`, starting and ending with a letter or digit.
pub fn is_label_name(name: &str) -> bool {
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && alnum(name.bytes().next())
        && alnum(name.bytes().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for ok in ["a", "orch-worker", "node.kubernetes.io", "a1.b2"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", "a.-b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn label_names() {
        for ok in ["a", "g5.xlarge", "Pool_1", &"a".repeat(63)] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a.", "not ok!", &"a".repeat(64)] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
