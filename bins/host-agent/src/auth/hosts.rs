//! Which `Host` header values the API listener answers to.

use std::net::IpAddr;

/// Whether `host` (a `Host` header: `name[:port]`, `a.b.c.d[:port]` or
/// `[v6][:port]`) is allowed: any IP literal (a DNS-rebinding page cannot
/// make a browser send one for its own name), `localhost`, or a name in
/// `allowed` (lowercase, without a trailing dot).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = strip_port(host.trim());
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<IpAddr>().is_ok();
    }
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || allowed.contains(&name)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_localhost_are_allowed() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
        ] {
            assert!(host_allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn other_names_need_allowed_hosts() {
        let allowed = vec!["petrel.example".to_string()];

        assert!(!host_allowed("evil.example:8080", &allowed));
        assert!(!host_allowed("127.0.0.1.evil.example", &allowed));
        assert!(!host_allowed("[::1", &allowed));
        assert!(host_allowed("Petrel.Example.:443", &allowed));
    }
}
