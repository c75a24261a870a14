//! Destinations and their dead letters, in the control store. A destination's spec is stored
//! as JSON (validated by the pipeline before it gets here); its cursor lives in the event
//! log (`destination:{id}`). A dead letter keeps the event as logged, so a replay renders it
//! again with the destination's current config.

use rusqlite::{params, OptionalExtension, Row};

use crate::control::{ControlError, ControlStore};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredDestination {
    pub id: i64,
    pub project_id: i64,
    /// The spec's JSON, secrets included.
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
}

/// An event a destination gave up on.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The event's position in the log (one dead letter per destination and position).
    pub seq: i64,
    pub event_id: String,
    /// The event as logged (JSON).
    pub event: String,
    pub reason: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_response: Option<String>,
    pub first_attempt_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub destination_id: i64,
    pub letter: NewDeadLetter,
    pub created_at: String,
    pub replay_requested: bool,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

const DESTINATION_COLUMNS: &str = "id, project_id, spec, created_at, updated_at";

fn destination(r: &Row<'_>) -> rusqlite::Result<StoredDestination> {
    Ok(StoredDestination { id: r.get(0)?, project_id: r.get(1)?, spec: r.get(2)?, created_at: r.get(3)?, updated_at: r.get(4)? })
}

const LETTER_COLUMNS: &str =
    "id, destination_id, seq, event_id, event, reason, attempts, last_status, last_response, first_attempt_at, created_at, replay_requested";

fn dead_letter(r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        destination_id: r.get(1)?,
        letter: NewDeadLetter {
            seq: r.get(2)?,
            event_id: r.get(3)?,
            event: r.get(4)?,
            reason: r.get(5)?,
            attempts: r.get(6)?,
            last_status: r.get(7)?,
            last_response: r.get(8)?,
            first_attempt_at: r.get(9)?,
        },
        created_at: r.get(10)?,
        replay_requested: r.get(11)?,
    })
}

impl ControlStore {
    pub fn create_destination(&self, project_id: i64, spec: &str) -> Result<StoredDestination, ControlError> {
        let conn = self.conn.lock().unwrap();
        let at = now();
        conn.execute(
            "INSERT INTO destinations (project_id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            params![project_id, spec, at],
        )?;
        Ok(StoredDestination { id: conn.last_insert_rowid(), project_id, spec: spec.to_owned(), created_at: at.clone(), updated_at: at })
    }

    /// Live destinations: of `project_id`, or of every project.
    pub fn list_destinations(&self, project_id: Option<i64>) -> Result<Vec<StoredDestination>, ControlError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE deleted_at IS NULL AND (?1 IS NULL OR project_id = ?1) ORDER BY id"
        ))?;
        let rows = stmt.query_map([project_id], destination)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn get_destination(&self, project_id: i64, id: i64) -> Result<Option<StoredDestination>, ControlError> {
        let conn = self.reader.lock().unwrap();
        Ok(conn
            .query_row(
                &format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2"),
                params![project_id, id],
                destination,
            )
            .optional()?)
    }

    /// Replaces a live destination's spec; `None` when there is no such destination.
    pub fn update_destination(&self, project_id: i64, id: i64, spec: &str) -> Result<Option<StoredDestination>, ControlError> {
        let changed = {
            let conn = self.conn.lock().unwrap();
            conn.execute(
                "UPDATE destinations SET spec = ?3, updated_at = ?4 WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2",
                params![project_id, id, spec, now()],
            )?
        };
        if changed == 0 {
            return Ok(None);
        }
        self.get_destination(project_id, id)
    }

    /// Marks a destination deleted and discards its dead letters; `false` when there was none.
    pub fn delete_destination(&self, project_id: i64, id: i64) -> Result<bool, ControlError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE destinations SET deleted_at = ?3 WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2",
            params![project_id, id, now()],
        )?;
        if changed > 0 {
            tx.execute("DELETE FROM dead_letters WHERE destination_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    /// Stores dead letters in one transaction. A letter for a position already dead-lettered
    /// (a replay that failed again, or a batch re-read after a crash) replaces the old one.
    pub fn add_dead_letters(&self, destination_id: i64, letters: &[NewDeadLetter]) -> Result<(), ControlError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            // A letter again for the same position takes a new id (it is the newest), its
            // attempts added to the earlier ones'.
            let mut take = tx.prepare_cached("DELETE FROM dead_letters WHERE destination_id = ?1 AND seq = ?2 RETURNING attempts")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO dead_letters (destination_id, seq, event_id, event, reason, attempts, last_status, last_response, first_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let at = now();
            for l in letters {
                let earlier: u32 = take.query_row(params![destination_id, l.seq], |r| r.get(0)).optional()?.unwrap_or(0);
                insert.execute(params![
                    destination_id,
                    l.seq,
                    l.event_id,
                    l.event,
                    l.reason,
                    earlier + l.attempts,
                    l.last_status,
                    l.last_response,
                    l.first_attempt_at,
                    at
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A page of a destination's dead letters, newest first, before id `before` when given.
    pub fn dead_letters(&self, destination_id: i64, before: Option<i64>, limit: usize) -> Result<Vec<DeadLetter>, ControlError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LETTER_COLUMNS} FROM dead_letters WHERE destination_id = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![destination_id, before, limit as i64], dead_letter)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn count_dead_letters(&self, destination_id: i64) -> Result<u64, ControlError> {
        let conn = self.reader.lock().unwrap();
        Ok(conn.query_row("SELECT count(*) FROM dead_letters WHERE destination_id = ?1", [destination_id], |r| r.get(0))?)
    }

    /// Marks dead letters for replay (all, or those of `ids`); answers how many.
    pub fn request_replay(&self, destination_id: i64, ids: Option<&[i64]>) -> Result<usize, ControlError> {
        let conn = self.conn.lock().unwrap();
        match ids {
            None => Ok(conn.execute("UPDATE dead_letters SET replay_requested = 1 WHERE destination_id = ?1", [destination_id])?),
            Some(ids) => {
                let mut stmt = conn.prepare_cached("UPDATE dead_letters SET replay_requested = 1 WHERE destination_id = ?1 AND id = ?2")?;
                let mut n = 0;
                for id in ids {
                    n += stmt.execute(params![destination_id, id])?;
                }
                Ok(n)
            }
        }
    }

    /// Up to `limit` dead letters marked for replay, oldest first.
    pub fn replay_requested(&self, destination_id: i64, limit: usize) -> Result<Vec<DeadLetter>, ControlError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LETTER_COLUMNS} FROM dead_letters WHERE destination_id = ?1 AND replay_requested = 1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![destination_id, limit as i64], dead_letter)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Discards dead letters (all, or those of `ids`); answers how many.
    pub fn discard_dead_letters(&self, destination_id: i64, ids: Option<&[i64]>) -> Result<usize, ControlError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        let n = match ids {
            None => tx.execute("DELETE FROM dead_letters WHERE destination_id = ?1", [destination_id])?,
            Some(ids) => {
                let mut n = 0;
                {
                    let mut stmt = tx.prepare_cached("DELETE FROM dead_letters WHERE destination_id = ?1 AND id = ?2")?;
                    for id in ids {
                        n += stmt.execute(params![destination_id, id])?;
                    }
                }
                n
            }
        };
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seq: i64, reason: &str) -> NewDeadLetter {
        NewDeadLetter {
            seq,
            event_id: format!("e{seq}"),
            event: format!("{{\"id\":\"e{seq}\"}}"),
            reason: reason.into(),
            attempts: 3,
            last_status: Some(400),
            last_response: Some("bad".into()),
            first_attempt_at: now(),
        }
    }

    #[test]
    fn destinations_and_dead_letters_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(&dir.path().join("control.db")).unwrap();
        let d = store.create_destination(1, "{\"name\":\"a\"}").unwrap();
        let other = store.create_destination(2, "{}").unwrap();
        assert_eq!(store.list_destinations(Some(1)).unwrap().len(), 1);
        assert_eq!(store.list_destinations(None).unwrap().len(), 2);
        assert!(store.get_destination(2, d.id).unwrap().is_none(), "another project's destination is not found");
        assert_eq!(store.update_destination(1, d.id, "{\"name\":\"b\"}").unwrap().unwrap().spec, "{\"name\":\"b\"}");

        store.add_dead_letters(d.id, &[letter(5, "first"), letter(7, "second")]).unwrap();
        store.add_dead_letters(d.id, &[letter(5, "again")]).unwrap();
        let page = store.dead_letters(d.id, None, 10).unwrap();
        assert_eq!(page.len(), 2, "one letter per position");
        assert_eq!(page[0].letter.reason, "again", "newest first");
        assert_eq!(page[0].letter.attempts, 6, "attempts add up");
        assert_eq!(store.dead_letters(d.id, Some(page[0].id), 10).unwrap().len(), 1);

        assert_eq!(store.request_replay(d.id, Some(&[page[1].id])).unwrap(), 1);
        assert_eq!(store.replay_requested(d.id, 10).unwrap().len(), 1);
        assert_eq!(store.discard_dead_letters(d.id, Some(&[page[1].id])).unwrap(), 1);
        assert_eq!(store.count_dead_letters(d.id).unwrap(), 1);

        assert!(store.delete_destination(1, d.id).unwrap());
        assert!(!store.delete_destination(1, d.id).unwrap());
        assert_eq!(store.count_dead_letters(d.id).unwrap(), 0);
        assert_eq!(store.list_destinations(None).unwrap(), vec![other]);
    }
}
