//! A use case behind a request: `create_user {name, email}` validates its input, stores
//! the user in a database and returns the created record, with the id the database gave
//! it. The database's calls block, which is why request handlers run on the worker pool:
//! its connections are only ever used there, never on a shard thread.
//!
//! SQLite by default (a file, `use_case.db` in the working directory or the path in
//! `USE_CASE_DB`), so it runs with no setup; PostgreSQL when `DATABASE_URL=postgres://...`
//! is set. The table is created at start, and the database itself keeps emails unique: a
//! second user with the same email is refused with `conflict` even when both requests
//! race on two workers.
//!
//! Run: `cargo run --example use_case -- 127.0.0.1:8080`, or on PostgreSQL
//! `DATABASE_URL=postgres://user:password@localhost/db cargo run --example use_case`, then
//! send `{"type":"request","id":1,"method":"create_user","params":{"name":"Ann","email":"ann@example.com"}}`.

use std::error::Error;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wshub::{App, AppError, Config};

#[derive(Deserialize)]
struct CreateUser {
    name: String,
    email: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

impl CreateUser {
    fn validate(self) -> Result<CreateUser, AppError> {
        let name = self.name.trim().to_string();
        if !(2..=40).contains(&name.chars().count()) {
            return Err(AppError::invalid("name must be 2 to 40 characters"));
        }
        let email = self.email.trim().to_ascii_lowercase();
        let valid_email = email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.starts_with('.'));
        if !valid_email || email.len() > 254 {
            return Err(AppError::invalid("email must look like name@example.com"));
        }
        Ok(CreateUser { name, email })
    }
}

/// Where the users are kept.
#[derive(Clone)]
pub enum Database {
    /// A SQLite file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string, `postgres://user:password@host:port/database`.
    Postgres(String),
}

impl Database {
    /// PostgreSQL when `DATABASE_URL` names one, else SQLite at `USE_CASE_DB` (default
    /// `use_case.db`). Any other `DATABASE_URL` is refused rather than silently ignored.
    pub fn from_env() -> Result<Database, String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url))
            }
            Ok(url) if !url.is_empty() => {
                Err("DATABASE_URL must start with postgres:// or postgresql:// (unset it for SQLite)".into())
            }
            _ => Ok(Database::Sqlite(std::env::var_os("USE_CASE_DB").map_or("use_case.db".into(), PathBuf::from))),
        }
    }
}

/// The users' store. `create` blocks on the database, so it is only called from request
/// handlers (the worker pool).
pub trait Users: Send + Sync {
    /// Inserts a user; an email already taken is `conflict`, decided by the database's
    /// unique constraint (no read-then-write race between workers).
    fn create(&self, name: &str, email: &str) -> Result<User, AppError>;
}

/// Opens `database` (a first connection, on the calling thread, not a shard) and creates
/// the schema, so a wrong address or credentials fail the start, not the first request.
pub fn open(database: &Database) -> Result<Arc<dyn Users>, Box<dyn Error>> {
    Ok(match database {
        Database::Sqlite(path) => Arc::new(SqliteUsers::open(path.clone())?),
        Database::Postgres(url) => Arc::new(PostgresUsers::open(url)?),
    })
}

/// The application on `database`; `main` runs it, the tests start it on port 0.
pub fn app(database: &Database) -> Result<App, Box<dyn Error>> {
    let users = open(database)?;
    Ok(App::new().on_request("create_user", move |_ctx, params| {
        let input: CreateUser = serde_json::from_value(params)?;
        let CreateUser { name, email } = input.validate()?;
        let user = users.create(&name, &email)?;
        Ok(serde_json::to_value(user)?)
    }))
}

/// Connections opened by the worker that needs one and kept for the next request. A
/// worker runs one handler at a time, so there are at most as many as workers, and a
/// request never waits for another's connection.
struct Pool<C> {
    idle: Mutex<Vec<C>>,
    connect: Box<dyn Fn() -> Result<C, AppError> + Send + Sync>,
    /// Whether a kept connection still works, asked before it is used again: one whose
    /// server went away (a restart) is dropped instead of failing a request.
    alive: fn(&mut C) -> bool,
}

impl<C> Pool<C> {
    fn new(first: C, connect: Box<dyn Fn() -> Result<C, AppError> + Send + Sync>, alive: fn(&mut C) -> bool) -> Self {
        Pool { idle: Mutex::new(vec![first]), connect, alive }
    }

    fn with<T>(&self, work: impl FnOnce(&mut C) -> Result<T, AppError>) -> Result<T, AppError> {
        let mut connection = loop {
            // The list is consistent whatever a panicking holder was doing: no poisoning.
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            match idle {
                Some(mut connection) => {
                    if (self.alive)(&mut connection) {
                        break connection;
                    }
                }
                None => break (self.connect)()?,
            }
        };
        let result = work(&mut connection);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(connection);
        result
    }
}

/// A database failure that is not the client's: logged in full, answered in general terms
/// (the client learns nothing of the schema or the server).
fn unavailable(what: &str, error: &dyn Error) -> AppError {
    log::error!("use case: {what}: {}", causes(error));
    AppError::new("unavailable", "the user store is unavailable, try again later")
}

/// An error with its causes: the postgres client's says "error connecting to server" and
/// keeps the reason (refused, timed out, authentication) in its source.
fn causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn conflict(email: &str) -> AppError {
    AppError::new("conflict", format!("a user with email {email} exists"))
}

struct SqliteUsers {
    pool: Pool<rusqlite::Connection>,
}

impl SqliteUsers {
    fn open(path: PathBuf) -> Result<Self, Box<dyn Error>> {
        let first = Self::connect(&path).map_err(|e| format!("SQLite database {}: {}", path.display(), causes(&e)))?;
        first.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 email TEXT NOT NULL UNIQUE
             )",
        )?;
        let connect = move || Self::connect(&path).map_err(|e| unavailable("opening the SQLite database", &e));
        Ok(SqliteUsers { pool: Pool::new(first, Box::new(connect), |_| true) })
    }

    fn connect(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
        let connection = rusqlite::Connection::open(path)?;
        // WAL: readers do not block the writer, and a commit is one append. Writers still
        // take turns: one waits for another's transaction up to the busy timeout.
        let mode: String = connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("use case: SQLite kept journal mode {mode} for {}", path.display());
        }
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        Ok(connection)
    }
}

impl Users for SqliteUsers {
    fn create(&self, name: &str, email: &str) -> Result<User, AppError> {
        self.pool.with(|connection| {
            let inserted = connection
                .prepare_cached("INSERT INTO users (name, email) VALUES (?1, ?2) RETURNING id")
                .and_then(|mut insert| insert.query_row((name, email), |row| row.get(0)));
            match inserted {
                Ok(id) => Ok(User { id, name: name.into(), email: email.into() }),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                {
                    Err(conflict(email))
                }
                Err(e) => Err(unavailable("inserting a user into SQLite", &e)),
            }
        })
    }
}

struct PostgresUsers {
    pool: Pool<postgres::Client>,
}

impl PostgresUsers {
    fn open(url: &str) -> Result<Self, Box<dyn Error>> {
        let mut config: postgres::Config = url.parse().map_err(|e| format!("DATABASE_URL: {}", causes(&e)))?;
        // Without a bound, a request could wait on an unreachable server for as long as
        // the OS keeps trying to connect.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let mut first =
            config.connect(postgres::NoTls).map_err(|e| format!("PostgreSQL at DATABASE_URL: {}", causes(&e)))?;
        first.batch_execute(
            "CREATE TABLE IF NOT EXISTS users (
                 id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 name TEXT NOT NULL,
                 email TEXT NOT NULL UNIQUE
             )",
        )?;
        let connect = move || config.connect(postgres::NoTls).map_err(|e| unavailable("connecting to PostgreSQL", &e));
        // A round trip before each reuse (as r2d2 does by default): the synchronous client
        // only learns that its server closed the connection when it next talks to it.
        let alive = |client: &mut postgres::Client| client.is_valid(Duration::from_secs(2)).is_ok();
        Ok(PostgresUsers { pool: Pool::new(first, Box::new(connect), alive) })
    }
}

impl Users for PostgresUsers {
    fn create(&self, name: &str, email: &str) -> Result<User, AppError> {
        self.pool.with(|client| {
            let inserted = client
                .query_one("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", &[&name, &email])
                // try_get: a table of another shape is an error to report, not a panic.
                .and_then(|row| row.try_get(0));
            match inserted {
                Ok(id) => Ok(User { id, name: name.into(), email: email.into() }),
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => Err(conflict(email)),
                Err(e) => Err(unavailable("inserting a user into PostgreSQL", &e)),
            }
        })
    }
}

#[allow(dead_code)] // the tests include this file for `app()`
fn main() -> std::process::ExitCode {
    let _ = simple_logger::init_with_level(log::Level::Info);
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("use case: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(dead_code)]
fn run() -> Result<(), Box<dyn Error>> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen.parse().map_err(|e| format!("listen address {listen:?} (like 127.0.0.1:8080): {e}"))?;
    let database = Database::from_env()?;
    match &database {
        Database::Sqlite(path) => log::info!("use case: users in SQLite file {}", path.display()),
        // Not the URL itself: it may hold a password.
        Database::Postgres(_) => log::info!("use case: users in PostgreSQL (DATABASE_URL)"),
    }
    app(&database)?.run(Config { listen, ..Config::default() })?;
    Ok(())
}
