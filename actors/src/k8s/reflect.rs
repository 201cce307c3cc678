//! Watches kept in kube-runtime reflector stores, as the actors read them:
//! the store takes each event before the actor sees it, so a handler reads
//! the state the event leads to. Not a cache of our own: the store is
//! kube-runtime's.

use std::fmt::Debug;
use std::hash::Hash;

use futures::{FutureExt as _, Stream};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// The watch of every object of `api`, retried with backoff, applied to
/// `writer`'s store before each event is handed on. The store keeps whole
/// objects but for their managed fields, which nothing reads.
pub fn reflected<K>(
    api: Api<K>,
    writer: Writer<K>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + Hash,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
}

/// Whether `store` holds the watch's initial list (from the first
/// `InitDone` on): only then does an object missing from it not exist.
pub fn is_listed<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Clone + Eq + Hash,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}
