//! The application API: an [`App`] registers handlers for custom event types (`on`),
//! request methods (`on_request`) and named session filters (`filter`), and runs the hub
//! protocol with them. Handlers may block (a database call), so they run on a small
//! worker pool, never on a shard thread; what they send goes back through the shards'
//! inboxes. Sits beside the messaging handler, which decodes frames and submits jobs here.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tungstenite::Message;

mod messaging;

use crate::app::messaging::Messaging;
use crate::config::Config;
use crate::engine::{self, Server};
use crate::error::Error;
use crate::hub::handler::Context;
use crate::hub::{ConnId, Filter, Filters, Hub, InboxFull, Presence, PresenceError, Session};
use crate::protocol::{self, BuiltInMethod, BuiltInType, ErrorCode};

type EventHandler = Arc<dyn Fn(&mut AppContext<'_>, Value) -> Result<(), AppError> + Send + Sync>;
type RequestHandler = Arc<dyn Fn(&mut AppContext<'_>, Value) -> Result<Value, AppError> + Send + Sync>;

/// An application's handlers, to run with the hub protocol.
///
/// ```no_run
/// use wshub::{App, AppError, Config};
/// use serde_json::json;
///
/// App::new()
///     .on("typing", |ctx, data| {
///         ctx.publish("room.typing", &json!({ "user": ctx.user(), "typing": data }))?;
///         Ok(())
///     })
///     .on_request("add", |_ctx, params| {
///         let a = params["a"].as_i64().ok_or_else(|| AppError::invalid("a must be a number"))?;
///         let b = params["b"].as_i64().ok_or_else(|| AppError::invalid("b must be a number"))?;
///         Ok(json!(a + b))
///     })
///     .run(Config::default())
///     .unwrap();
/// ```
pub struct App {
    events: HashMap<String, EventHandler>,
    requests: HashMap<String, RequestHandler>,
    /// Handed to the hub when the server starts, which binds sends through them.
    filters: Filters,
    workers: usize,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    pub fn new() -> Self {
        App { events: HashMap::new(), requests: HashMap::new(), filters: Filters::default(), workers: 4 }
    }

    /// Handles client frames of type `event` (`{"type": event, "data": ...}`). On `Ok` the
    /// client gets an `ack` if the frame had an `id`; on `Err` an `error` frame (with the
    /// `id`, if any).
    ///
    /// # Panics
    /// If `event` is a built-in type such as `subscribe` (see [`BuiltInType`]).
    pub fn on<F>(mut self, event: &str, handler: F) -> Self
    where
        F: Fn(&mut AppContext<'_>, Value) -> Result<(), AppError> + Send + Sync + 'static,
    {
        assert!(BuiltInType::from_name(event).is_none(), "\"{event}\" is a built-in frame type");
        self.events.insert(event.to_string(), Arc::new(handler));
        self
    }

    /// Answers `{"type":"request","method": method, ...}` with the handler's result.
    ///
    /// # Panics
    /// If `method` is built in (`presence`, `stats`: see [`BuiltInMethod`]).
    pub fn on_request<F>(mut self, method: &str, handler: F) -> Self
    where
        F: Fn(&mut AppContext<'_>, Value) -> Result<Value, AppError> + Send + Sync + 'static,
    {
        assert!(BuiltInMethod::from_name(method).is_none(), "\"{method}\" is a built-in request method");
        self.requests.insert(method.to_string(), Arc::new(handler));
        self
    }

    /// Registers a session filter under `name`, for [`AppContext::send_to_filter`] and
    /// [`Hub::filter`]: it gets each connection's session data and the argument the send
    /// names. A send through it crosses to the other instances of a cluster as the name
    /// and the argument, and each runs its own registration over its own connections, so
    /// every instance must register the same filters (they run the same application). A
    /// later registration under the same name replaces the earlier one.
    pub fn filter<F>(mut self, name: &str, filter: F) -> Self
    where
        F: Fn(&Session, &Value) -> bool + Send + Sync + 'static,
    {
        self.filters.insert(name, Arc::new(filter));
        self
    }

    /// Worker threads for the handlers (default 4).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Starts the server in the background (see [`start`](crate::start)).
    pub fn start(mut self, config: Config) -> Result<Server, Error> {
        let filters = std::mem::take(&mut self.filters);
        let core = self.into_core();
        let (rate, burst) = (config.max_messages_per_second, config.message_burst);
        engine::start_with(config, filters, move |_| Messaging::new(core.clone(), rate, burst))
    }

    /// Runs the server until SIGINT or SIGTERM (see [`run`](crate::run)).
    pub fn run(mut self, config: Config) -> Result<(), Error> {
        let filters = std::mem::take(&mut self.filters);
        let core = self.into_core();
        let (rate, burst) = (config.max_messages_per_second, config.message_burst);
        engine::run_with(config, filters, move |_| Messaging::new(core.clone(), rate, burst))
    }

    fn into_core(self) -> Arc<AppCore> {
        let workers = if self.events.is_empty() && self.requests.is_empty() { 0 } else { self.workers };
        let (queues, receivers): (Vec<Sender<Job>>, Vec<Receiver<Job>>) =
            (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
        let core = Arc::new(AppCore { events: self.events, requests: self.requests, queues });
        for (index, queue) in receivers.into_iter().enumerate() {
            let core = core.clone();
            thread::Builder::new()
                .name(format!("wshub-worker-{index}"))
                .spawn(move || work(&core, &queue))
                .expect("worker thread starts");
        }
        core
    }
}

/// The registered handlers and the queues to the workers; shared by every shard.
pub(crate) struct AppCore {
    events: HashMap<String, EventHandler>,
    requests: HashMap<String, RequestHandler>,
    /// One queue per worker. A connection's jobs all go to the same worker, so they run,
    /// and are answered, in the order the client sent them.
    queues: Vec<Sender<Job>>,
}

impl AppCore {
    pub fn has_worker_handlers(&self) -> bool {
        !self.events.is_empty() || !self.requests.is_empty()
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    pub fn has_request(&self, method: &str) -> bool {
        self.requests.contains_key(method)
    }

    pub fn submit(&self, job: Job) {
        let worker = (job.conn.as_u64() % self.queues.len() as u64) as usize;
        // Workers live as long as the core; a send only fails during teardown.
        let _ = self.queues[worker].send(job);
    }
}

pub(crate) enum JobKind {
    Event(String),
    Request(String),
}

/// One handler call for the worker pool, with everything needed to answer.
pub(crate) struct Job {
    kind: JobKind,
    conn: ConnId,
    identity: Arc<str>,
    id: Option<Box<RawValue>>,
    payload: Box<RawValue>,
    hub: Hub,
}

impl Job {
    pub fn new(kind: JobKind, cx: &Context<'_>, id: Option<Box<RawValue>>, payload: Box<RawValue>) -> Self {
        Job { kind, conn: cx.conn(), identity: cx.identity(), id, payload, hub: cx.hub().clone() }
    }
}

/// A worker: runs its queue's jobs until every shard has gone and the queue closes.
fn work(core: &AppCore, queue: &Receiver<Job>) {
    for job in queue.iter() {
        let mut ctx = AppContext { conn: job.conn, user: &job.identity, hub: &job.hub };
        let payload: Value = serde_json::from_str(job.payload.get()).unwrap_or(Value::Null);
        let reply = match &job.kind {
            JobKind::Event(name) => {
                let handler = &core.events[name];
                match guarded(|| handler(&mut ctx, payload)) {
                    Ok(()) => job.id.as_deref().map(protocol::ack),
                    Err(e) => Some(protocol::error(&e.code, &e.message, job.id.as_deref())),
                }
            }
            JobKind::Request(method) => {
                let handler = &core.requests[method];
                let id = job.id.as_deref().expect("requests carry an id");
                Some(match guarded(|| handler(&mut ctx, payload)) {
                    Ok(result) => protocol::response_ok(id, &result),
                    Err(e) => protocol::response_err(id, &e.code, &e.message),
                })
            }
        };
        if let Some(reply) = reply {
            // A full inbox is counted there; the client sees no answer, as for any overload.
            let _ = job.hub.send_to(job.conn, Message::text(reply));
        }
    }
}

/// Runs a handler; a panic becomes an error answer instead of a dead worker.
fn guarded<T>(handler: impl FnOnce() -> Result<T, AppError>) -> Result<T, AppError> {
    catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| {
        log::error!("an application handler panicked");
        Err(AppError::new(ErrorCode::HandlerFailed.as_str(), "the handler failed"))
    })
}

/// What an application handler sees of the connection it runs for, and can do. Sends go
/// through the shards' inboxes, so they may arrive after the handler returns.
pub struct AppContext<'a> {
    conn: ConnId,
    user: &'a str,
    hub: &'a Hub,
}

impl AppContext<'_> {
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The connection's user (in open mode `?user=`, or else its connection id).
    pub fn user(&self) -> &str {
        self.user
    }

    pub fn hub(&self) -> &Hub {
        self.hub
    }

    /// Sends `frame` (any JSON) to this connection as it is.
    pub fn reply(&self, frame: &impl Serialize) -> Result<(), AppError> {
        Ok(self.hub.send_to(self.conn, Message::text(serde_json::to_string(frame)?))?)
    }

    /// Publishes `data` to `topic` as this connection's user.
    pub fn publish(&self, topic: &str, data: &impl Serialize) -> Result<(), AppError> {
        protocol::check_topic(topic).map_err(|why| AppError::new(ErrorCode::BadTopic.as_str(), why))?;
        Ok(self.hub.publish(topic, self.user, &raw(data)?)?)
    }

    /// Sends `data` to every connection, as a `message` from this user.
    pub fn broadcast(&self, data: &impl Serialize) -> Result<(), AppError> {
        Ok(self.hub.broadcast(self.delivery(data)?)?)
    }

    /// Sends `data` to every connection of `user`, as a `message` from this user.
    pub fn send_to_user(&self, user: &str, data: &impl Serialize) -> Result<(), AppError> {
        Ok(self.hub.send_to_user(user, self.delivery(data)?)?)
    }

    /// Sends `data` to every connection whose session data satisfies `filter`, a closure.
    /// A closure cannot cross to other instances: in a cluster this fails
    /// (`local_filter`) rather than quietly reach this instance only; register the filter
    /// with [`App::filter`] and use [`send_to_filter`](Self::send_to_filter).
    pub fn send_filtered(
        &self,
        filter: impl Fn(&Session) -> bool + Send + Sync + 'static,
        data: &impl Serialize,
    ) -> Result<(), AppError> {
        if self.hub.is_clustered() {
            let why = "a closure filter cannot reach the cluster's other instances; register it with App::filter \
                       and send with send_to_filter";
            return Err(AppError::new("local_filter", why));
        }
        Ok(self.hub.send_filtered(Filter::local(filter), self.delivery(data)?)?)
    }

    /// Sends `data` to every connection, on every instance of a cluster, whose session
    /// data the filter registered as `filter` ([`App::filter`]) accepts with `arg`. An
    /// unregistered name fails (`unknown_filter`).
    pub fn send_to_filter(&self, filter: &str, arg: &impl Serialize, data: &impl Serialize) -> Result<(), AppError> {
        let filter = self
            .hub
            .filter(filter, serde_json::to_value(arg)?)
            .map_err(|unknown| AppError::new("unknown_filter", unknown.to_string()))?;
        Ok(self.hub.send_filtered(filter, self.delivery(data)?)?)
    }

    /// Who is subscribed to `topic`: in a cluster, on every live instance (this waits
    /// for Redis, a few milliseconds, which a worker may do; errors `unavailable` while
    /// Redis cannot be reached, `overloaded` when too many questions wait); otherwise on
    /// this instance.
    pub fn presence(&self, topic: &str) -> Result<Presence, AppError> {
        protocol::check_topic(topic).map_err(|why| AppError::new(ErrorCode::BadTopic.as_str(), why))?;
        Ok(self.hub.cluster_presence_wait(topic)?)
    }

    /// One value of this connection's session data.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.hub.session_get(self.conn, key)
    }

    /// Stores one value in this connection's session data (ignored once it is gone).
    pub fn set(&self, key: &str, value: Value) {
        self.hub.session_set(self.conn, key, value);
    }

    fn delivery(&self, data: &impl Serialize) -> Result<Message, AppError> {
        Ok(Message::text(protocol::message(None, self.user, &raw(data)?, protocol::now_millis(), None)))
    }
}

fn raw(data: &impl Serialize) -> Result<Box<RawValue>, AppError> {
    Ok(serde_json::value::to_raw_value(data)?)
}

/// A handler's failure, sent to the client as `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub code: String,
    pub message: String,
}

impl AppError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        AppError { code: code.into(), message: message.into() }
    }

    /// The client sent something the handler cannot accept (`invalid_params`).
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::new("invalid_params", message)
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

impl From<InboxFull> for AppError {
    fn from(full: InboxFull) -> Self {
        AppError::new(ErrorCode::Overloaded.as_str(), full.to_string())
    }
}

impl From<PresenceError> for AppError {
    fn from(e: PresenceError) -> Self {
        AppError::new(e.code(), e.to_string())
    }
}

impl From<serde_json::Error> for AppError {
    fn from(e: serde_json::Error) -> Self {
        AppError::invalid(e.to_string())
    }
}
