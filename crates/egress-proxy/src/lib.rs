//! Domain rules for a sandbox's egress: an allowed connection to a name,
//! judged by the HTTP `Host` header or the TLS server name (SNI) the client
//! sends first, is relayed to the address the client connected to.
//!
//! The sandbox's namespace redirects (nft `redirect`) the guest's TCP
//! connections to ports 80 and 443 that its address rules do not accept
//! to a [`Proxy`] listening inside that namespace. The proxy reads the
//! connection's original destination (`SO_ORIGINAL_DST`), refuses
//! special-purpose destinations ([`Route::permit`]), reads the first bytes
//! until they name a server ([`sniff::server_name`]), and relays the
//! connection when a [`DomainRule`] covers the name, through a socket
//! [`Route::connect`] opens in the same namespace. Anything else is reset.
//!
//! What it does not do: resolve names (the client's own DNS answer picks
//! the address, as in E2B; a client may name an allowed server while
//! connecting to another address, so a rule says which names a sandbox
//! may ask for, not which servers it can reach on ports 80 and 443),
//! inspect anything after the first request or ClientHello, or handle
//! UDP (QUIC).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use egress_proxy::{DomainRule, Limits, Proxy, Route};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let route = Route {
//!     connect: Arc::new(|to| Box::pin(tokio::net::TcpStream::connect(to))),
//!     permit: Arc::new(|ip| !ip.is_private()),
//! };
//! let rules = vec!["*.example.test".parse::<DomainRule>().expect("valid rule")];
//! let proxy = Proxy::spawn(listener, rules, route, Limits::default(), "sandbox-1".into());
//! # drop(proxy);
//! # Ok(())
//! # }
//! ```

mod relay;
mod rules;
pub mod sniff;

pub use relay::{Connect, Limits, Permit, Proxy, Route};
pub use rules::{DomainRule, RuleError, allowed};
