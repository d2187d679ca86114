//! Name lookup for outgoing requests. A name is looked up once, every address it has is
//! checked against the rules, and the connection goes to those addresses only (reqwest
//! connects to what this resolver returns; there is no second lookup to rebind).
//!
//! The lookup itself is injectable: the system's resolver in the service, a fixed table in
//! tests (which have no public DNS).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::guard::Rules;
use super::FetchError;

/// Looks names up.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (getaddrinfo, on the blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed table of names, for tests and development: names not in it do not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticLookup(pub HashMap<String, Vec<IpAddr>>);

impl Lookup for StaticLookup {
    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let found = self.0.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
        })
    }
}

/// The resolver reqwest is built with: looks up, then refuses the name if any of its
/// addresses is refused (a name pointing at a private address is not a public host, even
/// if it also has a public one).
pub(super) struct Guarded {
    pub lookup: Arc<dyn Lookup>,
    pub rules: Arc<Rules>,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.lookup.lookup(host.clone());
        let rules = self.rules.clone();
        Box::pin(async move {
            let ips = lookup.await.map_err(|e| FetchError::Resolve {
                host: host.clone(),
                detail: e.to_string(),
            })?;
            if ips.is_empty() {
                return Err(FetchError::Resolve {
                    host,
                    detail: "no addresses".into(),
                }
                .into());
            }
            for ip in &ips {
                rules.check_addr(&host, *ip)?;
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
