//! Who holds a claim: a worker names itself `host:pid` in the task row's lease, and the
//! attempt history and the local executor read that name back. One place writes and parses it
//! so the two sides cannot drift. See `docs/architecture.md` ("Failure handling").

/// This machine's name as far as it can be found without `unsafe` (no `gethostname`):
/// `HOSTNAME`, the kernel's name on Linux, `/etc/hostname`, else `unknown-host`. Reduced to the
/// characters of a host name, so it cannot break a `host:pid` owner or a message.
pub fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let found = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_default();
        clean_host(&found)
    })
}

fn clean_host(found: &str) -> String {
    let clean: String = found
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "unknown-host".to_string()
    } else {
        clean
    }
}

/// The lease owner this process claims tasks as: `host:pid`.
pub fn this_process() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

/// The process id in `owner` when the owner is a process on this machine (same host name);
/// `None` for another host or a name that is not `host:pid`.
pub fn pid_on_this_host(owner: &str) -> Option<u32> {
    let (host, pid) = owner.rsplit_once(':')?;
    (host == hostname()).then(|| pid.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_back_as_a_local_pid() {
        assert_eq!(pid_on_this_host(&this_process()), Some(std::process::id()));
    }

    #[test]
    fn other_hosts_and_malformed_owners_are_not_local() {
        assert_eq!(pid_on_this_host(&format!("not-{}:42", hostname())), None);
        assert_eq!(pid_on_this_host(&format!("{}:x", hostname())), None);
        assert_eq!(pid_on_this_host("42"), None);
    }

    #[test]
    fn host_names_are_reduced_to_host_name_characters() {
        assert_eq!(clean_host(" node-1.cluster:7\n"), "node-1.cluster7");
        assert_eq!(clean_host("::"), "unknown-host");
    }
}
