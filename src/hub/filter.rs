//! Filtered sends: a predicate over each connection's session data, run by every shard
//! over its own connections. A closure cannot cross to another instance, so filters that
//! must reach a whole cluster are named: registered under a name on every instance (each
//! runs the same application) and sent as that name plus a JSON argument, which the
//! receiving instance binds to its own registration ([`Filters`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::Session;

/// A registered filter: session data and the argument it was sent with.
pub(crate) type NamedPredicate = Arc<dyn Fn(&Session, &Value) -> bool + Send + Sync>;

/// A predicate over session data, for `send_filtered`; runs on each shard's thread.
#[derive(Clone)]
pub struct Filter {
    predicate: Arc<dyn Fn(&Session) -> bool + Send + Sync>,
    /// A named filter's name and argument, what another instance binds it again from;
    /// `None` for a closure, which reaches this instance's connections only.
    named: Option<Arc<Named>>,
}

struct Named {
    name: Arc<str>,
    /// The argument as JSON text, serialized once when the filter was bound.
    arg: String,
}

impl Filter {
    /// A closure over session data. It runs on this instance only: in a cluster, the
    /// other instances' connections are not reached (use a named filter, [`Hub::filter`]).
    ///
    /// [`Hub::filter`]: super::Hub::filter
    pub fn local(predicate: impl Fn(&Session) -> bool + Send + Sync + 'static) -> Self {
        Filter { predicate: Arc::new(predicate), named: None }
    }

    pub(crate) fn matches(&self, session: &Session) -> bool {
        (self.predicate)(session)
    }

    /// The name it was registered under, for a named filter.
    pub fn name(&self) -> Option<&str> {
        self.named.as_ref().map(|named| &*named.name)
    }

    /// What crosses to the other instances: the name and the argument's JSON; `None` for
    /// a closure.
    pub(crate) fn wire(&self) -> Option<(&str, &str)> {
        self.named.as_ref().map(|named| (&*named.name, named.arg.as_str()))
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wire() {
            Some((name, arg)) => write!(f, "Filter({name}, {arg})"),
            None => f.write_str("Filter(closure)"),
        }
    }
}

/// The named filters an application registered (`App::filter`); the same on every
/// instance of a cluster, since each runs the same application. Fixed once the server
/// starts.
#[derive(Clone, Default)]
pub(crate) struct Filters {
    by_name: HashMap<String, NamedPredicate>,
}

/// A filter name no registration answers to: register it with `App::filter` (on every
/// instance) before sending through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFilter(pub String);

impl fmt::Display for UnknownFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no filter is registered as \"{}\" (App::filter)", self.0)
    }
}

impl std::error::Error for UnknownFilter {}

impl Filters {
    pub(crate) fn insert(&mut self, name: &str, predicate: NamedPredicate) {
        self.by_name.insert(name.to_string(), predicate);
    }

    /// The filter `name` with its argument.
    pub fn bind(&self, name: &str, arg: Value) -> Result<Filter, UnknownFilter> {
        let text = arg.to_string();
        self.bind_parsed(name, arg, text)
    }

    /// The filter `name` with an argument that arrived as JSON text (from another
    /// instance); `Err` if the name is not registered here or the text is not JSON.
    pub(crate) fn bind_json(&self, name: &str, arg: &str) -> Result<Filter, UnknownFilter> {
        let parsed = serde_json::from_str(arg).map_err(|_| UnknownFilter(name.to_string()))?;
        self.bind_parsed(name, parsed, arg.to_string())
    }

    fn bind_parsed(&self, name: &str, arg: Value, text: String) -> Result<Filter, UnknownFilter> {
        let (name, registered) = self.by_name.get_key_value(name).ok_or_else(|| UnknownFilter(name.to_string()))?;
        let registered = registered.clone();
        let named = Named { name: name.as_str().into(), arg: text };
        Ok(Filter { predicate: Arc::new(move |session| registered(session, &arg)), named: Some(Arc::new(named)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filters() -> Filters {
        let mut filters = Filters::default();
        filters.insert("lang", Arc::new(|session, arg| session.get("lang") == Some(arg)));
        filters
    }

    #[test]
    fn a_named_filter_binds_its_argument_and_carries_it_as_json() {
        let filter = filters().bind("lang", json!("fr")).unwrap();
        let mut session = Session::new();
        session.insert("lang".into(), json!("fr"));
        assert!(filter.matches(&session));
        session.insert("lang".into(), json!("de"));
        assert!(!filter.matches(&session));
        assert_eq!(filter.wire(), Some(("lang", r#""fr""#)));
        let again = filters().bind_json("lang", r#""de""#).unwrap();
        assert!(again.matches(&session), "bound again from the wire");
    }

    #[test]
    fn unknown_names_and_bad_arguments_are_refused_and_closures_stay_local() {
        assert_eq!(filters().bind("nope", json!(1)).unwrap_err(), UnknownFilter("nope".into()));
        assert!(filters().bind_json("lang", "{not json").is_err());
        let closure = Filter::local(|_| true);
        assert_eq!((closure.wire(), closure.name()), (None, None));
    }
}
