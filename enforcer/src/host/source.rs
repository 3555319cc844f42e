//! The source address a process's network namespace would route from, asked of the kernel's
//! routing table (`RTM_GETROUTE`) by one long-lived worker thread.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    net::IpAddr,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::{
    HostError, netlink,
    netns::{NetNs, socket_in},
};

const OP_ROUTE: &str = "RTM_GETROUTE";
const THREAD: &str = "source resolver";

/// Tuning of a [`SourceResolver`]; the defaults suit an event pipeline.
#[derive(Clone, Copy, Debug)]
pub struct ResolverConfig {
    /// How long [`SourceResolver::resolve`] waits for an answer. A later answer still fills the
    /// cache for the next caller.
    pub timeout: Duration,
    /// Requests that may wait for the worker; beyond that `resolve` answers `None` at once.
    pub queue: usize,
    /// How long an answer (also "no source") is reused: a route change shows after at most this.
    pub ttl: Duration,
    /// Answers kept, by (namespace, destination).
    pub cache_entries: usize,
    /// Namespaces the worker keeps a socket open for. Each socket keeps its namespace alive, so
    /// this also bounds how many exited containers' namespaces the worker can pin.
    pub namespaces: usize,
    /// A namespace socket unused this long is closed, releasing the namespace.
    pub namespace_idle: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            queue: 256,
            ttl: Duration::from_secs(5),
            cache_entries: 4096,
            namespaces: 64,
            namespace_idle: Duration::from_secs(30),
        }
    }
}

/// Answers "which local address would process `pid` send from to reach `dst`" from the routing
/// table of the process's own network namespace, without opening an inet socket (which the
/// daemon's own programs would judge) and without a thread per question.
///
/// Cheap to call from a hot path: a cached answer costs an `open` of `/proc/PID/ns/net` and a map
/// lookup; a miss waits at most [`ResolverConfig::timeout`] for the worker.
#[derive(Debug)]
pub struct SourceResolver {
    requests: SyncSender<Request>,
    answers: Arc<Mutex<AnswerCache>>,
    timeout: Duration,
}

/// A question for the worker; `reply` has room for the one answer, so the worker never blocks
/// on a caller that gave up.
struct Request {
    ns: NetNs,
    dst: IpAddr,
    reply: SyncSender<Option<IpAddr>>,
}

/// An answer is valid for one destination as seen from one namespace.
type Key = (u64, IpAddr);

impl SourceResolver {
    /// Starts the worker with the default [`ResolverConfig`].
    pub fn spawn() -> Result<Self, HostError> {
        Self::with_config(ResolverConfig::default())
    }

    /// Starts the worker thread. Failing to start it (task limits) is an error for the caller to
    /// report; it never panics.
    pub fn with_config(config: ResolverConfig) -> Result<Self, HostError> {
        let (requests, queue) = sync_channel(config.queue.max(1));
        let answers = Arc::new(Mutex::new(AnswerCache::new(config)));
        let worker = Worker {
            answers: Arc::clone(&answers),
            sockets: NamespaceSockets::new(config),
        };
        std::thread::Builder::new()
            .name("enforcer-source".to_owned())
            .spawn(move || worker.run(&queue))
            .map_err(|source| HostError::SpawnThread {
                thread: THREAD,
                source,
            })?;
        Ok(Self {
            requests,
            answers,
            timeout: config.timeout,
        })
    }

    /// The preferred source address (`RTA_PREFSRC`) the network namespace of process `pid` would
    /// use to reach `dst`. `None` when the process is gone, no route (or no source) exists, the
    /// worker's queue is full, or no answer came within the timeout.
    ///
    /// An IPv4-mapped IPv6 `dst` is looked up as the IPv4 address it carries (that is how the kernel
    /// sends to it) and the answer is mapped back, to match `dst`'s form.
    pub fn resolve(&self, pid: u32, dst: IpAddr) -> Option<IpAddr> {
        // Opened here, not in the worker: the open handle pins the namespace the process is in now,
        // even if the pid is reused before the worker gets to it.
        let ns = NetNs::of_pid(pid).ok()?;
        let key = (ns.inode(), dst);
        if let Some(answer) = lock(&self.answers).get(&key, Instant::now()) {
            return answer;
        }
        let (reply, answer) = sync_channel(1);
        self.requests.try_send(Request { ns, dst, reply }).ok()?;
        answer.recv_timeout(self.timeout).ok().flatten()
    }
}

/// The cache holds plain values that every write leaves consistent, so a panic elsewhere while
/// holding the lock does not make it wrong.
fn lock(answers: &Mutex<AnswerCache>) -> std::sync::MutexGuard<'_, AnswerCache> {
    answers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker thread's state.
struct Worker {
    answers: Arc<Mutex<AnswerCache>>,
    sockets: NamespaceSockets,
}

impl Worker {
    /// Answers requests until the resolver is dropped.
    fn run(mut self, queue: &Receiver<Request>) {
        while let Ok(Request { ns, dst, reply }) = queue.recv() {
            let key = (ns.inode(), dst);
            let now = Instant::now();
            // Requests for one key pile up while the first is looked up: answer them from the cache.
            let cached = lock(&self.answers).get(&key, now);
            let answer = cached.unwrap_or_else(|| {
                // A panic (a codec bug on an odd answer) costs this one answer, not the worker:
                // the caches hold plain values and the namespace's socket is dropped.
                let answer = panic::catch_unwind(AssertUnwindSafe(|| self.lookup(&ns, dst, now)))
                    .unwrap_or_else(|_| {
                        self.sockets.forget(ns.inode());
                        None
                    });
                lock(&self.answers).insert(key, answer, now);
                answer
            });
            // The caller may have timed out and gone; the answer is cached for the next one.
            let _ = reply.try_send(answer);
        }
    }

    /// Asks the kernel; errors become "no answer" (and are cached as such, so a namespace that
    /// cannot be entered is not retried on every event).
    fn lookup(&mut self, ns: &NetNs, dst: IpAddr, now: Instant) -> Option<IpAddr> {
        let mapped = match dst {
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            IpAddr::V4(_) => None,
        };
        let query = mapped.map_or(dst, IpAddr::V4);
        let result = self
            .sockets
            .socket(ns, now)
            .and_then(|socket| netlink::request(socket, route_request(query), OP_ROUTE));
        let source = match result {
            Ok(answer) => answer.and_then(preferred_source),
            // ENETUNREACH, EHOSTUNREACH, EACCES (prohibit routes): no route, a plain answer.
            Err(HostError::Kernel { .. }) => None,
            Err(error) => {
                tracing::debug!(error = %error, netns = %ns.path().display(), %dst,
                    "route source lookup failed");
                // A socket that failed may be broken: the next lookup makes a fresh one.
                self.sockets.forget(ns.inode());
                None
            }
        };
        match (mapped, source) {
            (Some(_), Some(IpAddr::V4(v4))) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            (_, source) => source,
        }
    }
}

/// `ip route get DST`: a route lookup for one destination, answered with the route the kernel
/// would use, including the source address it would pick.
fn route_request(dst: IpAddr) -> RouteNetlinkMessage {
    let mut message = RouteMessage::default();
    (
        message.header.address_family,
        message.header.destination_prefix_length,
    ) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    RouteNetlinkMessage::GetRoute(message)
}

/// `RTA_PREFSRC` of a route answer.
fn preferred_source(answer: RouteNetlinkMessage) -> Option<IpAddr> {
    let RouteNetlinkMessage::NewRoute(route) = answer else {
        return None;
    };
    route
        .attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => Some(IpAddr::V4(v4)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        })
}

/// Answers by (namespace inode, destination), each valid for a TTL. Eviction is first in, first
/// out: entries are inserted in time order, so the oldest is also the first to expire, and with a
/// TTL of seconds recency of use adds little.
#[derive(Debug)]
struct AnswerCache {
    entries: HashMap<Key, (Option<IpAddr>, Instant)>,
    order: VecDeque<(Key, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl AnswerCache {
    fn new(config: ResolverConfig) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl: config.ttl,
            capacity: config.cache_entries,
        }
    }

    /// `Some(answer)` for a fresh entry (the answer itself may be "no source").
    fn get(&self, key: &Key, now: Instant) -> Option<Option<IpAddr>> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(answer, _)| *answer)
    }

    fn insert(&mut self, key: Key, answer: Option<IpAddr>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.entries.insert(key, (answer, now));
        self.order.push_back((key, now));
        while let Some(&(oldest, at)) = self.order.front() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            if !expired && self.entries.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            // Only if the entry is still the one this slot recorded, not a later re-insert.
            if self.entries.get(&oldest).is_some_and(|(_, t)| *t == at) {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// One route socket per namespace seen, so repeated lookups do not `setns` each time. Keyed by
/// inode, which is safe because the open socket keeps its namespace (and so the inode) alive.
struct NamespaceSockets {
    sockets: HashMap<u64, (Socket, Instant)>,
    capacity: usize,
    idle: Duration,
}

impl NamespaceSockets {
    fn new(config: ResolverConfig) -> Self {
        Self {
            sockets: HashMap::new(),
            capacity: config.namespaces.max(1),
            idle: config.namespace_idle,
        }
    }

    /// The socket for `ns`, created (in a scratch thread inside `ns`) on first use.
    fn socket(&mut self, ns: &NetNs, now: Instant) -> Result<&Socket, HostError> {
        let idle = self.idle;
        self.sockets
            .retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
        if !self.sockets.contains_key(&ns.inode()) && self.sockets.len() >= self.capacity {
            let least_recent = self
                .sockets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(inode, _)| *inode);
            if let Some(inode) = least_recent {
                self.sockets.remove(&inode);
            }
        }
        let (socket, used) = match self.sockets.entry(ns.inode()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let mut socket = socket_in(ns, NETLINK_ROUTE)?;
                netlink::bind(&mut socket, 0)?;
                // The kernel answers a route lookup while handling the request; this bound only
                // keeps a lost answer from stalling the worker.
                netlink::set_receive_timeout(&socket, Duration::from_secs(1))?;
                entry.insert((socket, now))
            }
        };
        *used = now;
        Ok(socket)
    }

    fn forget(&mut self, inode: u64) {
        self.sockets.remove(&inode);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn config(ttl: Duration, cache_entries: usize) -> ResolverConfig {
        ResolverConfig {
            ttl,
            cache_entries,
            ..ResolverConfig::default()
        }
    }

    #[test]
    fn answers_expire_and_the_oldest_goes_first() {
        let mut cache = AnswerCache::new(config(Duration::from_secs(5), 2));
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        cache.insert((1, a), Some(a), t0);
        cache.insert((2, a), None, t0 + Duration::from_secs(1));
        assert_eq!(cache.get(&(1, a), t0), Some(Some(a)));
        assert_eq!(
            cache.get(&(2, a), t0),
            Some(None),
            "no source is an answer too"
        );
        cache.insert((3, a), Some(a), t0 + Duration::from_secs(2));
        assert_eq!(
            cache.get(&(1, a), t0),
            None,
            "over capacity: the oldest went"
        );
        assert_eq!(
            cache.get(&(3, a), t0 + Duration::from_secs(7)),
            None,
            "expired"
        );
        cache.insert((1, a), Some(a), t0 + Duration::from_secs(10));
        assert_eq!(
            cache.entries.len(),
            1,
            "expired entries are dropped on insert"
        );
        assert_eq!(cache.order.len(), 1);
    }
}
