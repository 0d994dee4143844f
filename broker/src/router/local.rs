//! This node's subscriptions: the trie, plus the count of subscriptions per filter (and of
//! members per shared group) that decides what the node announces to its peers
//! ([`super::routes`]). Every change of
//! subscriptions goes through here, under the router's write lock, so the announcements are
//! sent in the order the changes happen.

use std::ops::Deref;
use std::sync::Arc;

use super::routes::FilterCounts;
use super::trie::{SessionId, Subscription, SubscriptionTrie};
use crate::cluster::Cluster;
use crate::cluster::frame::Frame;
use crate::session::Session;

/// The subscription trie of this node and the routes it announces.
#[derive(Default)]
pub struct LocalRouter {
    trie: SubscriptionTrie<Arc<Session>>,
    routes: FilterCounts,
    cluster: Option<Arc<Cluster>>,
}

impl Deref for LocalRouter {
    type Target = SubscriptionTrie<Arc<Session>>;

    fn deref(&self) -> &Self::Target {
        &self.trie
    }
}

impl LocalRouter {
    /// Announces route changes to the peers of `cluster` from now on.
    pub fn set_cluster(&mut self, cluster: Arc<Cluster>) {
        self.cluster = Some(cluster);
    }

    /// The filters this node announces (a snapshot for a new link).
    pub fn announced(&self) -> Vec<String> {
        self.routes.filters()
    }

    /// [`SubscriptionTrie::subscribe`], announcing a filter's first subscriber.
    pub fn subscribe(
        &mut self,
        handle: &Arc<Session>,
        filter: &str,
        group: Option<&str>,
        sub: Subscription,
    ) -> bool {
        let new = self.trie.subscribe(handle, filter, group, sub);
        if new {
            let announced = announced_as(filter, group);
            if self.routes.add(&announced) {
                self.announce(Frame::RouteAdd(announced));
            }
        }
        new
    }

    /// [`SubscriptionTrie::unsubscribe`], withdrawing a filter's last subscriber.
    pub fn unsubscribe(&mut self, id: SessionId, filter: &str, group: Option<&str>) -> bool {
        let removed = self.trie.unsubscribe(id, filter, group);
        if removed {
            let announced = announced_as(filter, group);
            if self.routes.remove(&announced) {
                self.announce(Frame::RouteRemove(announced));
            }
        }
        removed
    }

    /// [`SubscriptionTrie::retain`], withdrawing filters left without subscribers.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&Arc<Session>, &str, Option<&str>, &mut Subscription) -> bool,
    ) {
        let mut removed: Vec<String> = Vec::new();
        self.trie.retain(|s, filter, group, sub| {
            let kept = keep(s, filter, group, sub);
            if !kept {
                removed.push(announced_as(filter, group));
            }
            kept
        });
        for filter in removed {
            if self.routes.remove(&filter) {
                self.announce(Frame::RouteRemove(filter));
            }
        }
    }

    fn announce(&self, frame: Frame) {
        if let Some(c) = &self.cluster {
            c.broadcast(&frame);
        }
    }
}

/// How a subscription is announced to the peers: its filter, or `$share/{group}/{filter}`.
fn announced_as(filter: &str, group: Option<&str>) -> String {
    match group {
        None => filter.to_owned(),
        Some(g) => format!("$share/{g}/{filter}"),
    }
}
