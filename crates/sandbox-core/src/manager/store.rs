//! SQLite persistence of sandbox, snapshot and template records.
//!
//! Each record is one row holding JSON: the schema stays trivial and the
//! Rust types stay the single definition of the data.
//!
//! Durable: WAL with `synchronous = FULL`, so a write that returned (a
//! state transition the API then acknowledges) survives a power loss, not
//! only a crash of the agent.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::ManagerError;

/// The tables, one per kind of record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Sandboxes,
    Snapshots,
    Templates,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Sandboxes => "sandboxes",
            Table::Snapshots => "snapshots",
            Table::Templates => "templates",
        }
    }
}

/// The manager's database (`data_dir/petrel.db`).
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    conn: Connection,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, ManagerError> {
        let err = |e: rusqlite::Error| ManagerError::Store {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS sandboxes (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS templates (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> ManagerError {
        ManagerError::Store {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    pub(crate) fn put<T: Serialize>(
        &self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), ManagerError> {
        let json = serde_json::to_string(value).map_err(|e| self.err(e))?;
        self.conn
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO {} (key, value) VALUES (?1, ?2)",
                    table.name()
                ),
                params![key, json],
            )
            .map_err(|e| self.err(format!("write {} {key}: {e}", table.name())))?;
        Ok(())
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, ManagerError> {
        let json: Option<String> = self
            .conn
            .query_row(
                &format!("SELECT value FROM {} WHERE key = ?1", table.name()),
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err(format!("read {} {key}: {e}", table.name())))?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| self.err(format!("decode {} {key}: {e}", table.name())))
        })
        .transpose()
    }

    pub(crate) fn delete(&self, table: Table, key: &str) -> Result<(), ManagerError> {
        self.conn
            .execute(
                &format!("DELETE FROM {} WHERE key = ?1", table.name()),
                params![key],
            )
            .map_err(|e| self.err(format!("delete {} {key}: {e}", table.name())))?;
        Ok(())
    }

    pub(crate) fn all<T: DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, T)>, ManagerError> {
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT key, value FROM {} ORDER BY key",
                table.name()
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, json) = row.map_err(|e| self.err(e))?;
            let value = serde_json::from_str(&json)
                .map_err(|e| self.err(format!("decode {} {key}: {e}", table.name())))?;
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_syncs_every_commit_to_stable_storage() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();

        // Act
        let store = Store::open(&dir.path().join("petrel.db")).unwrap();

        // Assert: FULL (2): the WAL is synced at every commit.
        let synchronous: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        let journal: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
        assert_eq!(journal, "wal");
    }
}
