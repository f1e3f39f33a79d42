//! The Redis channels of one cluster and what each publication on them is for. Free of
//! I/O.
//!
//! Channels (`P` is `--cluster-prefix`): `P:all` for broadcasts and named filters (every
//! instance runs a filter over its own connections), `P:t:TOPIC` for a topic's
//! publications, `P:u:USER` for sends to a user, and `P:n:N` for the connections of the
//! instance whose node number is `N` (sends to a connection id). Every instance holds
//! `P:all` and its own `P:n:N`; a topic's or a user's channel only while a local
//! connection wants it.

use std::sync::Arc;

use super::envelope::{Addressee, Received};
use crate::hub::{ConnId, Target, Want};

/// The channel names of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    /// `P:`.
    prefix: String,
}

/// What a publication received on one of the channels is for.
#[derive(Debug)]
pub(crate) enum Arrival<'a> {
    /// A target the local shards resolve as it is.
    Target(Target),
    /// A named filter, bound on arrival to this instance's registration.
    Filter { name: &'a str, arg: &'a str },
}

impl Channels {
    pub fn new(prefix: &str) -> Self {
        Channels { prefix: format!("{prefix}:") }
    }

    pub fn everyone(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// The channel of the instance whose node number is `number`.
    pub fn node(&self, number: u16) -> String {
        format!("{}n:{number}", self.prefix)
    }

    pub fn of_want(&self, want: &Want) -> String {
        match want {
            Want::Topic(topic) => format!("{}t:{topic}", self.prefix),
            Want::User(user) => format!("{}u:{user}", self.prefix),
        }
    }

    /// Where a delivery goes in Redis so that every other instance that may hold one of
    /// its receivers gets it once: each channel with the envelope's addressee. None for
    /// what only this instance (node number `own`) holds: its own connection ids and
    /// closure filters.
    pub fn routes<'a>(&self, target: &'a Target, own: u16) -> Vec<(String, Addressee<'a>)> {
        let channel = Addressee::Channel { payload: &[] };
        match target {
            Target::Topic { topic, data } => {
                let payload = Addressee::Channel { payload: data.as_bytes() };
                vec![(self.of_want(&Want::Topic(topic.clone())), payload)]
            }
            Target::Everyone => vec![(self.everyone(), channel)],
            // A connection without a user goes by its id, which names its instance (no
            // user name is all digits, so no user's channel is wanted for it).
            Target::User(user) => match ConnId::parse(user) {
                Some(id) if id.node() != own => vec![(self.node(id.node()), Addressee::Anonymous(id))],
                Some(_) => Vec::new(),
                None => vec![(self.of_want(&Want::User(user.clone())), channel)],
            },
            Target::Conn(id) if id.node() != own => vec![(self.node(id.node()), Addressee::Conn(*id))],
            Target::Conn(_) => Vec::new(),
            Target::Filtered(filter) => match filter.wire() {
                Some((name, arg)) => vec![(self.everyone(), Addressee::Filter { name, arg })],
                None => Vec::new(),
            },
        }
    }

    /// What a publication on `channel` is for; `None` if the channel is not this
    /// cluster's or does not carry that addressee (a topic's payload must be text).
    pub fn arrival<'a>(&self, channel: &str, received: &Received<'a>) -> Option<Arrival<'a>> {
        let name = channel.strip_prefix(&self.prefix)?;
        match received.addressee {
            Addressee::Channel { .. } => {
                if name == "all" {
                    return Some(Arrival::Target(Target::Everyone));
                }
                if let Some(topic) = name.strip_prefix("t:") {
                    let data = received.payload()?;
                    return Some(Arrival::Target(Target::Topic { topic: topic.into(), data }));
                }
                name.strip_prefix("u:").map(|user| Arrival::Target(Target::User(Arc::from(user))))
            }
            Addressee::Conn(id) if name.starts_with("n:") => Some(Arrival::Target(Target::Conn(id))),
            Addressee::Anonymous(id) if name.starts_with("n:") => {
                Some(Arrival::Target(Target::User(id.to_string().into())))
            }
            Addressee::Filter { name: filter, arg } if name == "all" => Some(Arrival::Filter { name: filter, arg }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::envelope::{decode, encode};
    use super::*;
    use crate::frame::SharedFrame;
    use crate::hub::Filter;

    fn topic(data: &str) -> Target {
        Target::Topic { topic: "room".into(), data: data.into() }
    }

    /// The channels a delivery from node 4 goes to.
    fn channels_of(target: &Target) -> Vec<String> {
        Channels::new("eu").routes(target, 4).into_iter().map(|(channel, _)| channel).collect()
    }

    #[test]
    fn each_target_goes_to_the_channels_of_the_instances_that_may_hold_it() {
        assert_eq!(channels_of(&topic("1")), ["eu:t:room"]);
        assert_eq!(channels_of(&Target::User("ann".into())), ["eu:u:ann"]);
        assert_eq!(channels_of(&Target::Everyone), ["eu:all"]);
        let (here, there) = (ConnId::new(4, 1, 2, 3), ConnId::new(9, 1, 2, 3));
        assert_eq!(channels_of(&Target::Conn(here)), Vec::<String>::new(), "this instance's own");
        assert_eq!(channels_of(&Target::Conn(there)), ["eu:n:9"]);
        assert_eq!(channels_of(&Target::User(there.to_string().into())), ["eu:n:9"], "a user-less connection's id");
        assert_eq!(channels_of(&Target::User(here.to_string().into())), Vec::<String>::new());
        assert_eq!(channels_of(&Target::User((1u64 << 53).to_string().into())), ["eu:u:9007199254740992"], "no id");
        assert_eq!(channels_of(&Target::Filtered(Filter::local(|_| true))), Vec::<String>::new(), "a closure");
    }

    #[test]
    fn what_arrives_is_for_what_its_channel_and_envelope_say() {
        let channels = Channels::new("eu");
        let frame = SharedFrame::text("f");
        let arrive = |channel: &str, addressee: Addressee<'_>| {
            let bytes = encode(1, &addressee, &frame);
            format!("{:?}", channels.arrival(channel, &decode(&bytes).unwrap()))
        };
        let everyone = Addressee::Channel { payload: b"" };
        assert_eq!(
            arrive("eu:t:a:b", Addressee::Channel { payload: b"1" }),
            r#"Some(Target(Topic { topic: "a:b", data: "1" }))"#
        );
        assert!(arrive("eu:u:ann", everyone).contains(r#"User("ann")"#));
        assert!(arrive("eu:all", everyone).contains("Everyone"));
        assert_eq!(arrive("us:all", everyone), "None", "another cluster's");
        assert_eq!(arrive("eu:t:room", Addressee::Channel { payload: &[0xff] }), "None", "a payload that is not text");
        let id = ConnId::new(9, 1, 2, 3);
        assert_eq!(arrive("eu:n:9", Addressee::Conn(id)), format!("Some(Target(Conn({id:?})))"));
        assert_eq!(arrive("eu:n:9", Addressee::Anonymous(id)), format!("Some(Target(User({:?})))", id.to_string()));
        assert_eq!(arrive("eu:all", Addressee::Conn(id)), "None", "an id off a node channel");
        let filter = Addressee::Filter { name: "lang", arg: "\"fr\"" };
        assert_eq!(arrive("eu:all", filter), r#"Some(Filter { name: "lang", arg: "\"fr\"" })"#);
        assert_eq!(arrive("eu:t:room", filter), "None");
    }
}
