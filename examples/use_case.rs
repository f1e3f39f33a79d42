//! A use case behind a request: `create_user {name, email}` validates its input, stores
//! the user in a repository (here in memory, standing in for a database whose calls block,
//! which is why request handlers run on the worker pool) and returns the created record.
//!
//! Run: `cargo run --example use_case -- 127.0.0.1:8080`, then send
//! `{"type":"request","id":1,"method":"create_user","params":{"name":"Ann","email":"ann@example.com"}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wshub::{App, AppError, Config};

#[derive(Deserialize)]
struct CreateUser {
    name: String,
    email: String,
}

#[derive(Clone, Serialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

/// Users by email; a real application would hold a database pool here.
#[derive(Default)]
struct Repository {
    users: HashMap<String, User>,
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
        if !valid_email {
            return Err(AppError::invalid("email must look like name@example.com"));
        }
        Ok(CreateUser { name, email })
    }
}

/// The application; `main` runs it, the tests start it on port 0.
pub fn app() -> App {
    let repository = Arc::new(Mutex::new(Repository::default()));
    App::new().on_request("create_user", move |_ctx, params| {
        let input: CreateUser = serde_json::from_value(params)?;
        let CreateUser { name, email } = input.validate()?;
        let mut repository = repository.lock().map_err(|_| AppError::new("unavailable", "repository failed"))?;
        if repository.users.contains_key(&email) {
            return Err(AppError::new("conflict", format!("a user with email {email} exists")));
        }
        let user = User { id: repository.users.len() as u64 + 1, name, email: email.clone() };
        repository.users.insert(email, user.clone());
        Ok(serde_json::to_value(user).unwrap_or(Value::Null))
    })
}

#[allow(dead_code)] // the tests include this file for `app()`
fn main() -> Result<(), wshub::Error> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    app().run(Config { listen: listen.parse().expect("an address like 127.0.0.1:8080"), ..Config::default() })
}
