//! Namespaces: topic prefixes (`chat:`, `prices:`) with their own rules,
//! set once per hub with [`Hub::set_namespaces`]: who may publish
//! ([`PublishRule`]), whether presence events are sent, and whether a new
//! subscriber gets the newest message at once ("latest value on
//! subscribe", like Pusher's cache channels). A topic belongs to the
//! namespace with the longest matching prefix; a topic in none follows the
//! defaults (publish as the token allows, presence on, no latest value).

use crate::auth::Grants;
use crate::hub::Hub;
use std::sync::Arc;

/// Who may publish to a namespace's topics from a client connection. The
/// server (its API, [`Hub::publish_json`]) always may.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PublishRule {
    /// Any connection whose token allows it (`publish` patterns); an
    /// anonymous connection (no tokens configured) always. The default.
    #[default]
    Token,
    /// Connections subscribed to the topic (whatever their token's
    /// `publish` patterns say).
    Subscribers,
    /// No client: only the server API.
    ServerOnly,
}

/// The rules of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The topic prefix, e.g. `chat:`.
    pub prefix: String,
    /// Who may publish.
    pub publish: PublishRule,
    /// Whether presence events (join, leave) are sent to subscribers.
    pub presence: bool,
    /// Whether a new subscriber (not resuming) gets the newest kept message
    /// at once, before live ones.
    pub latest_on_subscribe: bool,
    /// Subscriptions need the backend's yes (the hub's [`Hooks`](crate::hooks::Hooks)).
    pub subscribe_hook: bool,
    /// Client publishes need the backend's yes, which may rewrite the content.
    pub publish_hook: bool,
}

impl Namespace {
    /// A namespace with the default rules.
    pub fn new(prefix: impl Into<String>) -> Namespace {
        Namespace { prefix: prefix.into(), publish: PublishRule::Token, presence: true, latest_on_subscribe: false, subscribe_hook: false, publish_hook: false }
    }
}

/// The namespaces of a hub (longest prefix wins).
#[derive(Clone, Debug, Default)]
pub struct Namespaces(Vec<Namespace>);

impl Namespaces {
    /// From a list (order does not matter).
    pub fn new(mut list: Vec<Namespace>) -> Namespaces {
        list.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
        Namespaces(list)
    }

    /// The namespace of `topic`, if any.
    pub fn find(&self, topic: &str) -> Option<&Namespace> {
        self.0.iter().find(|n| topic.starts_with(&n.prefix))
    }
}

/// The epoch marker of a subscription that asks for the latest message
/// only (never a real epoch: those are 12 hex digits).
pub(crate) const LATEST: &str = "$latest";

impl Hub {
    /// Set the namespaces, once per hub: `false` if already set.
    pub fn set_namespaces(&self, namespaces: Namespaces) -> bool {
        self.namespaces.set(namespaces).is_ok()
    }

    /// The namespace of `topic`, if any.
    pub fn namespace(&self, topic: &str) -> Option<&Namespace> {
        self.namespaces.get().and_then(|n| n.find(topic))
    }

    /// Who may publish to `topic` from a client ([`PublishRule::Token`]
    /// outside any namespace). The server API checks nothing (it may
    /// publish everywhere); it may use this to say so in its answers.
    pub fn publish_rule(&self, topic: &str) -> PublishRule {
        self.namespace(topic).map_or(PublishRule::Token, |n| n.publish)
    }

    /// Whether a client connection with `grants` (`None`: anonymous),
    /// subscribed to `topic` or not, may publish to it; why not otherwise.
    pub fn client_may_publish(&self, topic: &str, grants: Option<&Arc<Grants>>, subscribed: bool) -> Result<(), String> {
        match self.publish_rule(topic) {
            PublishRule::ServerOnly => Err(format!("{topic:?} is published by the server API only")),
            PublishRule::Subscribers if !subscribed => Err(format!("subscribe to {topic:?} before publishing to it")),
            PublishRule::Subscribers => Ok(()),
            PublishRule::Token => match grants {
                Some(g) if !g.may_publish(topic) => Err(format!("this token may not publish to {topic:?}")),
                _ => Ok(()),
            },
        }
    }

    /// Whether subscribing to `topic` asks the backend first.
    pub(crate) fn subscribe_hooked(&self, topic: &str) -> bool {
        self.hooks.get().is_some() && self.namespace(topic).is_some_and(|n| n.subscribe_hook)
    }

    /// Whether a client's publish to `topic` asks the backend first.
    pub(crate) fn publish_hooked(&self, topic: &str) -> bool {
        self.hooks.get().is_some() && self.namespace(topic).is_some_and(|n| n.publish_hook)
    }

    /// Whether subscribers of `topic` get presence events.
    pub(crate) fn presence_on(&self, topic: &str) -> bool {
        self.namespace(topic).is_none_or(|n| n.presence)
    }

    /// Whether a new subscriber of `topic` gets its latest message at once.
    pub(crate) fn latest_on_subscribe(&self, topic: &str) -> bool {
        self.namespace(topic).is_some_and(|n| n.latest_on_subscribe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins() {
        let ns = Namespaces::new(vec![Namespace::new("chat:"), Namespace { publish: PublishRule::ServerOnly, ..Namespace::new("chat:announce:") }]);
        assert_eq!(ns.find("chat:lobby").unwrap().prefix, "chat:");
        assert_eq!(ns.find("chat:announce:x").unwrap().publish, PublishRule::ServerOnly);
        assert!(ns.find("prices:x").is_none());
    }
}
