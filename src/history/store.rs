//! The SQLite database that keeps topic history: one row per topic (its epoch and last
//! offset) and one per kept publication. Created and migrated when opened (the schema's
//! version is `PRAGMA user_version`), in WAL mode. Used by the history thread only.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;

use crate::config::Store as StoreSetting;

/// The schema this build writes; a database from a newer build is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;

/// Each step takes the database from the version before it to its own (index + 1).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE topics (
        topic TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        last_offset INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        topic TEXT NOT NULL,
        offset INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        sender TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (topic, offset)
    ) WITHOUT ROWID;
"];

/// One kept publication.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub topic: Arc<str>,
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as in the `message` frame.
    pub ts: u64,
    pub from: Arc<str>,
    pub data: Box<RawValue>,
}

/// A topic's history as stored: the name it got when it started and its last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TopicRow {
    pub epoch: Arc<str>,
    pub last: u64,
}

/// How to trim one topic when a batch is committed.
pub(super) struct Trim<'a> {
    pub topic: &'a str,
    /// Delete offsets up to and including this one (keeps the last N).
    pub through: Option<u64>,
    /// Delete publications older than this (ms since the Unix epoch).
    pub before_ts: Option<u64>,
}

pub(crate) struct Store {
    db: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the store. The error names what failed.
    pub fn open(setting: &StoreSetting) -> Result<Store, String> {
        let (db, what) = match setting {
            StoreSetting::File(path) => (Connection::open(path), path.display().to_string()),
            StoreSetting::Memory => (Connection::open_in_memory(), "memory".to_string()),
        };
        let fail = |e: rusqlite::Error| format!("history store {what}: {e}");
        let mut db = db.map_err(fail)?;
        // WAL: readers never block the writer; FULL: a commit is on disk (fsync of the
        // log) before the publications it holds are delivered and acknowledged.
        if matches!(setting, StoreSetting::File(_)) {
            db.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).map_err(fail)?;
        }
        db.execute_batch("PRAGMA synchronous = FULL").map_err(fail)?;
        migrate(&mut db).map_err(|e| format!("history store {what}: {e}"))?;
        Ok(Store { db })
    }

    /// The topic's stored epoch and last offset, if its history has started.
    pub(super) fn topic(&self, topic: &str) -> rusqlite::Result<Option<TopicRow>> {
        self.db
            .query_row("SELECT epoch, last_offset FROM topics WHERE topic = ?1", [topic], |row| {
                Ok(TopicRow { epoch: row.get::<_, String>(0)?.into(), last: row.get::<_, i64>(1)? as u64 })
            })
            .optional()
    }

    /// Stores `rows` and the topics' new state, and trims, in one transaction.
    pub(super) fn commit(
        &mut self,
        topics: &[(&str, &TopicRow)],
        rows: &[Row],
        trims: &[Trim<'_>],
    ) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO topics (topic, epoch, last_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic) DO UPDATE SET epoch = excluded.epoch, last_offset = excluded.last_offset",
            )?;
            for (topic, state) in topics {
                upsert.execute(params![topic, &*state.epoch, state.last as i64])?;
            }
            let mut insert = tx
                .prepare_cached("INSERT INTO messages (topic, offset, ts, sender, data) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for row in rows {
                insert.execute(params![&*row.topic, row.offset as i64, row.ts as i64, &*row.from, row.data.get()])?;
            }
            let mut by_count = tx.prepare_cached("DELETE FROM messages WHERE topic = ?1 AND offset <= ?2")?;
            let mut by_age = tx.prepare_cached("DELETE FROM messages WHERE topic = ?1 AND ts < ?2")?;
            for trim in trims {
                if let Some(through) = trim.through {
                    by_count.execute(params![trim.topic, through as i64])?;
                }
                if let Some(before) = trim.before_ts {
                    by_age.execute(params![trim.topic, before as i64])?;
                }
            }
        }
        tx.commit()
    }

    /// Up to `limit` publications of `topic` after offset `after` and not older than
    /// `min_ts`, in offset order.
    pub(super) fn read(&self, topic: &Arc<str>, after: u64, min_ts: u64, limit: usize) -> rusqlite::Result<Vec<Row>> {
        let mut query = self.db.prepare_cached(
            "SELECT offset, ts, sender, data FROM messages
             WHERE topic = ?1 AND offset > ?2 AND ts >= ?3 ORDER BY offset LIMIT ?4",
        )?;
        let rows = query.query_map(params![&**topic, after as i64, min_ts as i64, limit as i64], |row| {
            let data: String = row.get(3)?;
            let data = RawValue::from_string(data)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?;
            Ok(Row {
                topic: topic.clone(),
                offset: row.get::<_, i64>(0)? as u64,
                ts: row.get::<_, i64>(1)? as u64,
                from: row.get::<_, String>(2)?.into(),
                data,
            })
        })?;
        rows.collect()
    }

    /// Every topic whose history has started (for the sweep of expired publications).
    pub(super) fn topic_names(&self) -> rusqlite::Result<Vec<String>> {
        let mut query = self.db.prepare_cached("SELECT topic FROM topics")?;
        let names = query.query_map([], |row| row.get(0))?;
        names.collect()
    }
}

#[cfg(test)]
impl Store {
    /// Makes every later commit fail, as a full disk or a read-only file would.
    pub(super) fn break_writes(&self) {
        self.db.execute_batch("DROP TABLE messages").expect("drop");
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], each step in its own transaction.
fn migrate(db: &mut Connection) -> Result<(), String> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "its schema is version {version}, newer than this wshub's {SCHEMA_VERSION}: run a newer wshub, \
             or point --store at another file"
        ));
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = db.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql).map_err(|e| e.to_string())?;
        tx.pragma_update(None, "user_version", step as i64 + 1).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &Arc<str>, offset: u64, ts: u64) -> Row {
        let data = RawValue::from_string(format!("{{\"n\":{offset}}}")).unwrap();
        Row { topic: topic.clone(), offset, ts, from: "ann".into(), data }
    }

    #[test]
    fn a_file_store_is_versioned_and_keeps_what_was_committed() {
        let dir = std::env::temp_dir().join(format!("wshub-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.db");
        let _ = std::fs::remove_file(&path);
        let setting = StoreSetting::File(path.clone());
        let topic: Arc<str> = "room".into();
        let state = TopicRow { epoch: "e1".into(), last: 3 };
        {
            let mut store = Store::open(&setting).unwrap();
            assert_eq!(store.topic("room").unwrap(), None);
            let rows: Vec<Row> = (1..=3).map(|n| row(&topic, n, 100 + n)).collect();
            store.commit(&[("room", &state)], &rows, &[]).unwrap();
        }
        let mut store = Store::open(&setting).unwrap();
        let version: i64 = store.db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.topic("room").unwrap(), Some(state.clone()));
        let offsets = |rows: Vec<Row>| rows.iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!(offsets(store.read(&topic, 1, 0, 10).unwrap()), [2, 3]);
        assert_eq!(offsets(store.read(&topic, 0, 103, 10).unwrap()), [3], "older ones are not served");
        assert_eq!(store.read(&topic, 0, 0, 10).unwrap()[0].data.get(), r#"{"n":1}"#);
        let trim = Trim { topic: "room", through: Some(1), before_ts: Some(103) };
        store.commit(&[], &[], &[trim]).unwrap();
        assert_eq!(offsets(store.read(&topic, 0, 0, 10).unwrap()), [3]);
        store.db.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(store);
        let refused = Store::open(&setting).err().expect("a newer schema is refused");
        assert!(refused.contains("newer"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
