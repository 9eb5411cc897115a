//! Links, addresses and routes through rtnetlink, in the host namespace or in
//! a sandbox's (a netlink socket acts in the namespace it was opened in).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{HOST_NETNS, NetError, is_not_found, netlink_io};
use crate::namespace::run_in_netns;

/// A route as listed: destination/prefix and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route4 {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// An rtnetlink connection bound to one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Netlink {
    handle: Handle,
    netns: String,
}

impl Netlink {
    /// A connection in the caller's (host) namespace.
    pub(crate) fn host() -> Result<Self, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetError::Netlink {
                netns: HOST_NETNS.into(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            netns: HOST_NETNS.into(),
        })
    }

    /// A connection inside the namespace at `path`, labelled `netns` in errors.
    pub(crate) async fn in_netns(path: &Path, netns: &str) -> Result<Self, NetError> {
        let rt = tokio::runtime::Handle::current();
        let opened = run_in_netns(path, move || {
            // The socket registers with the runtime's reactor, so enter it.
            let _enter = rt.enter();
            rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
        })
        .await?;
        let (conn, handle) = opened.map_err(|source| NetError::Netlink {
            netns: netns.into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            netns: netns.into(),
        })
    }

    fn link_err(&self, link: &str, op: &'static str, source: io::Error) -> NetError {
        NetError::Link {
            link: link.into(),
            netns: self.netns.clone(),
            op,
            source,
        }
    }

    /// The index of link `name`, or `None` if there is none.
    pub(crate) async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = netlink_io(e);
                if is_not_found(&e) {
                    Ok(None)
                } else {
                    Err(self.link_err(name, "look up", e))
                }
            }
        }
    }

    async fn require_index(&self, name: &str) -> Result<u32, NetError> {
        self.index(name).await?.ok_or_else(|| {
            self.link_err(name, "look up", io::Error::from_raw_os_error(libc::ENODEV))
        })
    }

    /// Names of every link.
    pub(crate) async fn link_names(&self) -> Result<Vec<String>, NetError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| self.link_err("*", "list", netlink_io(e)))?
        {
            names.extend(msg.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }));
        }
        Ok(names)
    }

    /// Creates veth `local` here with its peer `peer` created directly in the
    /// namespace `peer_netns` (one atomic request, like
    /// `ip link add L type veth peer name P netns NS`).
    pub(crate) async fn add_veth_into(
        &self,
        local: &str,
        peer: &str,
        peer_netns: RawFd,
    ) -> Result<(), NetError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_netns)
            .build();
        let msg = LinkVeth::new(local, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.link_err(local, "create veth", netlink_io(e)))
    }

    /// Brings link `name` up.
    pub(crate) async fn set_up(&self, name: &str) -> Result<(), NetError> {
        let index = self.require_index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| self.link_err(name, "set up", netlink_io(e)))
    }

    /// Sets link `name`'s MAC address.
    pub(crate) async fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        let index = self.require_index(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| self.link_err(name, "set MAC address", netlink_io(e)))
    }

    /// Deletes link `name`; `Ok(false)` if it did not exist.
    pub(crate) async fn del_link(&self, name: &str) -> Result<bool, NetError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = netlink_io(e);
                if is_not_found(&e) {
                    Ok(false)
                } else {
                    Err(self.link_err(name, "delete", e))
                }
            }
        }
    }

    /// Adds `addr/prefix` on link `link`.
    pub(crate) async fn add_address(
        &self,
        link: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let index = self.require_index(link).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(|e| NetError::Address {
                addr,
                prefix,
                link: link.into(),
                netns: self.netns.clone(),
                source: netlink_io(e),
            })
    }

    fn route_msg(dest: Ipv4Addr, prefix: u8, gateway: Ipv4Addr, dev: Option<u32>) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .gateway(gateway);
        if let Some(index) = dev {
            b = b.output_interface(index);
        }
        b.build()
    }

    fn route_err(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        op: &'static str,
        source: io::Error,
    ) -> NetError {
        NetError::Route {
            dest,
            prefix,
            netns: self.netns.clone(),
            op,
            source,
        }
    }

    /// Adds a route to `dest/prefix` via `gateway` (out of `dev` if given).
    pub(crate) async fn add_route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        dev: Option<&str>,
    ) -> Result<(), NetError> {
        let index = match dev {
            Some(name) => Some(self.require_index(name).await?),
            None => None,
        };
        self.handle
            .route()
            .add(Self::route_msg(dest, prefix, gateway, index))
            .execute()
            .await
            .map_err(|e| self.route_err(dest, prefix, "add", netlink_io(e)))
    }

    /// Deletes the route to `dest/prefix` via `gateway`; `Ok(false)` if there
    /// was none.
    pub(crate) async fn del_route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<bool, NetError> {
        // Like `ip route del`: match any protocol and scope.
        let mut msg = Self::route_msg(dest, prefix, gateway, None);
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = netlink_io(e);
                if is_not_found(&e) {
                    Ok(false)
                } else {
                    Err(self.route_err(dest, prefix, "delete", e))
                }
            }
        }
    }

    /// IPv4 routes of the main table.
    pub(crate) async fn routes_v4(&self) -> Result<Vec<Route4>, NetError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(filter).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.route_err(Ipv4Addr::UNSPECIFIED, 0, "list", netlink_io(e)))?
        {
            if msg.header.address_family != AddressFamily::Inet {
                continue;
            }
            let mut route = Route4 {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: msg.header.destination_prefix_length,
                gateway: None,
            };
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dest = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                    _ => {}
                }
            }
            routes.push(route);
        }
        Ok(routes)
    }
}
