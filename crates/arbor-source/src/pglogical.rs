//! PostgreSQL logical replication (`pgoutput`) as change capture: every
//! committed insert, update and delete of a table, in commit order, within
//! moments of the commit.
//!
//! arbor reads the slot through the SQL interface:
//!
//! ```text
//!   pg_logical_slot_peek_binary_changes(slot, NULL, n, proto_version 1, publication_names p)
//!        │ whole transactions, not consumed
//!        ▼
//!   decode pgoutput ─▶ Upsert / Delete / Refetch / Truncate per transaction
//!        │
//!        ▼ (the agent) index apply + LSN watermark in one synced WriteBatch
//!   pg_replication_slot_advance(slot, end LSN of the last applied commit)
//! ```
//!
//! Peeking leaves the changes in the slot until they are in the index, so a
//! crash between the two loses nothing: the next peek returns them again, and
//! the watermark in the index tells which of them are already applied. The
//! slot is created *before* the first full build, so every change the build
//! may have missed is still in the slot.
//!
//! Requirements (checked, with errors that name the fix): `wal_level =
//! logical`, a role with `REPLICATION` (or superuser), a publication that
//! includes the table, and a replica identity that carries the dataset's key
//! columns (the primary key, an index, or `FULL`). Slot and publication are
//! created only when the dataset asks for it (`create = true`).
//!
//! Slot hygiene: a slot holds back WAL until it is advanced. An agent that
//! stops for long makes the server keep WAL for it; set
//! `max_slot_wal_keep_size` so a forgotten slot cannot fill the disk, and
//! drop the slot (`arbor capture drop`) when a dataset is removed.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use arbor_record::{Record, Value};
use postgres::Client;
use tracing::{debug, instrument};

use crate::mapping::Mapping;
use crate::postgres::{db_message, ident, is_connection_error, open_session, redact_url};
use crate::{SourceError, text};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    /// Parses PostgreSQL's `XXXXXXXX/XXXXXXXX` form.
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (expected X/Y in hex)"))?;
        let part = |p: &str| {
            u32::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not an LSN (bad hex {p:?})"))
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// Where the capture reads from.
#[derive(Debug, Clone)]
pub struct LogicalOptions {
    /// The replication slot (pgoutput).
    pub slot: String,
    /// The publication that includes the table.
    pub publication: String,
    /// Create the slot and publication when they are missing.
    pub create: bool,
    /// Statement timeout for the capture's own statements.
    pub statement_timeout: Duration,
}

/// One change of the dataset's table, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Captured {
    /// A row inserted or updated: its record, as the mapping reads it.
    Upsert(Record),
    /// A row deleted: its record's key (after the mapping's key transforms).
    Delete(Vec<Value>),
    /// A row whose values must be read again from the table (by its
    /// record's key, as for [`Captured::Delete`]): an update that
    /// left a TOASTed column out, or any change when the dataset has a row
    /// filter (the filter is SQL, evaluated by the database).
    Refetch(Vec<Value>),
    /// The table was truncated: every record is gone.
    Truncate,
}

/// A committed transaction's changes to the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The end of its commit record: advancing the slot here confirms it.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (server clock).
    pub commit_time_us: i64,
    /// Its changes to the dataset's table, in order.
    pub changes: Vec<Captured>,
}

/// The slot as [`LogicalCapture::prepare`] found or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Whether this call created the slot.
    pub created: bool,
    /// Everything before this position is confirmed (consumed).
    pub confirmed_flush: Lsn,
}

/// A relation as pgoutput described it: where each mapped column sits.
#[derive(Debug, Clone)]
struct RelationInfo {
    /// Per mapped column (keys, then values), its index in the tuple.
    positions: Vec<usize>,
    /// Per column of the tuple, whether it is `char(n)`, whose blank
    /// padding is dropped as the scans drop it (see [`crate::postgres`]).
    padded: Vec<bool>,
}

/// The type OID of `char(n)` (`bpchar`).
const BPCHAR_OID: u32 = 1042;

/// Column `at`'s text without the blank padding of a `char(n)` column.
fn unpad<'t>(rel: &RelationInfo, at: usize, text: &'t str) -> &'t str {
    if rel.padded.get(at) == Some(&true) {
        text.trim_end_matches(' ')
    } else {
        text
    }
}

/// A table's changes read from a logical replication slot.
pub struct LogicalCapture {
    url: String,
    table: String,
    has_filter: bool,
    mapping: Mapping,
    options: LogicalOptions,
    client: Option<crate::postgres::PgClient>,
    pub(crate) relid: Option<u32>,
    relations: HashMap<u32, RelationInfo>,
    /// The last peek returned everything committed when it began.
    drained: bool,
}

impl LogicalCapture {
    /// A capture of `table` (optionally schema-qualified). With
    /// `has_filter`, inserts and updates are read again through the
    /// dataset's filter rather than taken from the WAL.
    pub fn new(
        url: impl Into<String>,
        table: impl Into<String>,
        has_filter: bool,
        mapping: Mapping,
        options: LogicalOptions,
    ) -> LogicalCapture {
        LogicalCapture {
            url: url.into(),
            table: table.into(),
            has_filter,
            mapping,
            options,
            client: None,
            relid: None,
            relations: HashMap::new(),
            drained: false,
        }
    }

    /// Whether the last [`LogicalCapture::peek`] returned every transaction
    /// committed before it began (it stopped short of `max_changes`), so a
    /// consumer that applied them was current as of that moment.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        &self.options.slot
    }

    fn what(&self) -> String {
        format!(
            "{}:{} (slot {:?})",
            redact_url(&self.url),
            self.table,
            self.options.slot
        )
    }

    fn read_err(&self, e: &postgres::Error) -> SourceError {
        SourceError::Read {
            dataset: self.what(),
            reason: db_message(e),
        }
    }

    fn schema_err(&self, problem: String) -> SourceError {
        SourceError::Schema {
            dataset: self.what(),
            problem,
        }
    }

    fn client(&mut self) -> Result<&mut Client, SourceError> {
        if self
            .client
            .as_ref()
            .is_none_or(crate::postgres::PgClient::is_closed)
        {
            self.client = Some(open_session(
                &self.url,
                self.options.statement_timeout,
                false,
            )?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Drops the connection, so the next call reconnects (after an error).
    pub fn disconnect(&mut self) {
        self.client = None;
    }

    /// Checks the server and the table, creates the publication and slot if
    /// asked to, and returns the slot's state. Call it before the first full
    /// build, so the slot holds every change the build might miss.
    #[instrument(skip_all, fields(slot = %self.options.slot))]
    pub fn prepare(&mut self) -> Result<SlotState, SourceError> {
        let table_text = crate::postgres::table_ident(&self.table);
        let (slot, publication, create) = (
            self.options.slot.clone(),
            self.options.publication.clone(),
            self.options.create,
        );
        self.check_wal_level()?;
        let oid = self.check_replica_identity(&table_text)?;
        self.ensure_publication(oid, &table_text, &publication, create)?;
        self.ensure_slot(&slot, create)
    }

    /// Refuses a server without `wal_level = logical`.
    fn check_wal_level(&mut self) -> Result<(), SourceError> {
        let client = self.client()?;
        let wal_level: String = client
            .query("SHOW wal_level", &[])
            .map_err(|e| self.read_err(&e))?
            .first()
            .map(|r| r.get(0))
            .unwrap_or_default();
        if wal_level != "logical" {
            return Err(self.schema_err(format!(
                "logical capture needs wal_level = logical (the server has {wal_level:?}); \
                 set it in postgresql.conf and restart the server"
            )));
        }

        Ok(())
    }

    /// The table's oid, once its replica identity is known to carry the
    /// dataset's key (deletes must say which record went).
    fn check_replica_identity(&mut self, table_text: &str) -> Result<u32, SourceError> {
        let client = self.client()?;
        // The table, its replica identity and the columns that identity carries.
        let rows = client.query(
            "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&table_text],
        );
        let rows = match rows {
            Ok(r) => r,
            Err(e) => return Err(self.schema_err(db_message(&e))),
        };
        let Some(row) = rows.first() else {
            return Err(self.schema_err(format!("table {} not found", self.table)));
        };
        let oid: u32 = row.get(0);
        let identity: String = row.get(1);
        let client = self.client()?;
        let identity_cols: Vec<String> = match identity.as_str() {
            "f" => Vec::new(), // FULL: every column
            "n" => {
                return Err(self.schema_err(format!(
                    "table {} has REPLICA IDENTITY NOTHING, so its deletes carry no key; \
                     use ALTER TABLE … REPLICA IDENTITY DEFAULT (with a primary key), USING INDEX or FULL",
                    self.table
                )));
            }
            kind => {
                // d: the primary key; i: the chosen index.
                let which = if kind == "i" {
                    "i.indisreplident"
                } else {
                    "i.indisprimary"
                };
                client
                    .query(
                        &format!(
                            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                         ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                         WHERE i.indrelid = $1 AND {which}"
                        ),
                        &[&oid],
                    )
                    .map_err(|e| self.read_err(&e))?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        };
        if identity != "f" {
            if identity_cols.is_empty() {
                return Err(self.schema_err(format!(
                    "table {} has no primary key for its replica identity, so deletes carry no key; \
                     add one, or use REPLICA IDENTITY USING INDEX or FULL",
                    self.table
                )));
            }
            if let Some(k) = self
                .mapping
                .key()
                .iter()
                .find(|k| !identity_cols.contains(&k.source))
            {
                return Err(self.schema_err(format!(
                    "key column {:?} is not in table {}'s replica identity ({}), so a delete \
                     would not say which record went; make the replica identity match the key \
                     or use REPLICA IDENTITY FULL",
                    k.source,
                    self.table,
                    identity_cols.join(", ")
                )));
            }
        }
        self.relid = Some(oid);
        Ok(oid)
    }

    /// The publication, created when missing and `create` allows it.
    fn ensure_publication(
        &mut self,
        oid: u32,
        table_text: &str,
        publication: &str,
        create: bool,
    ) -> Result<(), SourceError> {
        // The publication.
        let client = self.client()?;
        let published = client.query("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
                    EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                            WHERE p.pubname = $1 AND r.prrelid = $2) \
                    OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1 AND puballtables)",
            &[&publication, &oid],
        )
        .map_err(|e| self.read_err(&e))?;
        let (pub_exists, pub_has_table): (bool, bool) = published
            .first()
            .map_or((false, false), |r| (r.get(0), r.get(1)));
        match (pub_exists, pub_has_table, create) {
            (true, true, _) => {}
            (false, _, true) => {
                let sql = format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    ident(publication),
                    table_text
                );
                self.client()?
                    .batch_execute(&sql)
                    .map_err(|e| self.read_err(&e))?;
                debug!(%publication, "publication created");
            }
            (true, false, _) => {
                return Err(self.schema_err(format!(
                    "publication {publication:?} does not include table {}; \
                     ALTER PUBLICATION {} ADD TABLE {}",
                    self.table,
                    ident(publication),
                    table_text
                )));
            }
            (false, _, false) => {
                return Err(self.schema_err(format!(
                    "publication {publication:?} does not exist; create it \
                     (CREATE PUBLICATION {} FOR TABLE {}) or set create = true",
                    ident(publication),
                    table_text
                )));
            }
        }

        Ok(())
    }

    /// The slot: an existing pgoutput slot of this database, or a new one
    /// when `create` allows it (a lost slot is replaced).
    fn ensure_slot(&mut self, slot: &str, create: bool) -> Result<SlotState, SourceError> {
        // The slot.
        let client = self.client()?;
        let slot_rows = client.query("SELECT plugin::text, confirmed_flush_lsn::text, database::text = current_database(), \
                    to_jsonb(s) ->> 'wal_status' \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(|e| self.read_err(&e))?;
        let lost = slot_rows
            .first()
            .is_some_and(|r| r.get::<_, Option<String>>(3).as_deref() == Some("lost"));
        if lost {
            // max_slot_wal_keep_size invalidated it: the WAL it needed is
            // gone, so only a new slot and a full build can continue.
            if !create {
                return Err(self.schema_err(format!(
                    "replication slot {slot:?} was invalidated (its WAL was removed, see \
                     max_slot_wal_keep_size); drop it (arbor capture drop) and restart, or set \
                     create = true to have it replaced"
                )));
            }
            tracing::warn!(%slot, "replication slot was invalidated; replacing it (a full build follows)");
            self.client()?
                .query("SELECT pg_drop_replication_slot($1)", &[&slot])
                .map_err(|e| self.read_err(&e))?;
        } else if let Some(r) = slot_rows.first() {
            let plugin: Option<String> = r.get(0);
            let confirmed: Option<String> = r.get(1);
            let same_db: Option<bool> = r.get(2);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(self.schema_err(format!(
                    "slot {slot:?} exists but is not a pgoutput slot of this database \
                     (plugin {plugin:?}); choose another slot name"
                )));
            }
            let confirmed = confirmed
                .unwrap_or_default()
                .parse::<Lsn>()
                .map_err(|p| self.schema_err(p))?;
            return Ok(SlotState {
                created: false,
                confirmed_flush: confirmed,
            });
        }
        if !create {
            return Err(self.schema_err(format!(
                "replication slot {slot:?} does not exist; create it \
                 (SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')) or set create = true"
            )));
        }
        let client = self.client()?;
        let made = client
            .query(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .map_err(|e| self.read_err(&e))?;
        let lsn: String = made.first().map(|r| r.get(0)).unwrap_or_default();
        let confirmed = lsn.parse::<Lsn>().map_err(|p| self.schema_err(p))?;
        debug!(%slot, %confirmed, "replication slot created");
        Ok(SlotState {
            created: true,
            confirmed_flush: confirmed,
        })
    }
    /// Reads (without consuming) the next committed transactions, stopping
    /// after about `max_changes` changes (whole transactions only). Those
    /// that touch other tables come back with no changes, so the slot can
    /// still be advanced past them.
    #[instrument(skip_all, fields(slot = %self.options.slot))]
    pub fn peek(&mut self, max_changes: u32) -> Result<Vec<Transaction>, SourceError> {
        if self.relid.is_none() {
            self.prepare()?;
        }
        let (slot, publication) = (self.options.slot.clone(), self.options.publication.clone());
        let n = i32::try_from(max_changes.max(1)).unwrap_or(i32::MAX);
        let rows = self
            .client()?
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
                 'proto_version', '1', 'publication_names', $3)",
                &[&slot, &n, &publication],
            )
            .map_err(|e| {
                if is_connection_error(&e) {
                    SourceError::Open {
                        what: self.what(),
                        reason: db_message(&e),
                    }
                } else {
                    self.read_err(&e)
                }
            })?;
        // The server counts every message it decodes against the limit;
        // fewer rows than the limit means it reached the end of the WAL.
        self.drained = rows.len() < n as usize;
        let mut out = Vec::new();
        let mut open: Option<Transaction> = None;
        for row in rows {
            let data: &[u8] = row.get(0);
            self.decode(data, &mut open, &mut out)
                .map_err(|problem| SourceError::Read {
                    dataset: self.what(),
                    reason: format!("undecodable pgoutput message: {problem}"),
                })?;
        }
        // A transaction without its commit is not handed out (peek returns
        // whole transactions; this only guards against a cut-short stream).
        Ok(out)
    }

    /// Confirms everything up to `lsn` (an applied transaction's end), so
    /// the server can recycle the WAL behind it.
    pub fn advance(&mut self, lsn: Lsn) -> Result<(), SourceError> {
        let slot = self.options.slot.clone();
        let text = lsn.to_string();
        self.client()?
            .query(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &text],
            )
            .map_err(|e| self.read_err(&e))?;
        Ok(())
    }

    /// Drops the slot (and the publication too, when `publication` is set);
    /// returns whether the slot existed.
    pub fn drop_slot(&mut self, publication: bool) -> Result<bool, SourceError> {
        let (slot, publ) = (self.options.slot.clone(), self.options.publication.clone());
        let dropped = self
            .client()?
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .map_err(|e| self.read_err(&e))?;
        if publication {
            self.client()?
                .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&publ)))
                .map_err(|e| self.read_err(&e))?;
        }
        Ok(!dropped.is_empty())
    }

    /// Decodes one pgoutput message into the transaction being read.
    /// (Long on purpose: one arm per message type, in the protocol's order.)
    pub(crate) fn decode(
        &mut self,
        data: &[u8],
        open: &mut Option<Transaction>,
        out: &mut Vec<Transaction>,
    ) -> Result<(), PgoutputError> {
        let mut m = Reader::new(data);
        match m.u8()? {
            b'B' => {
                let _final_lsn = m.u64()?;
                let ts = m.i64()?;
                let _xid = m.u32()?;
                *open = Some(Transaction {
                    end_lsn: Lsn(0),
                    commit_time_us: ts.saturating_add(PG_EPOCH_OFFSET_US),
                    changes: Vec::new(),
                });
            }
            b'C' => {
                let _flags = m.u8()?;
                let _commit_lsn = m.u64()?;
                let end_lsn = m.u64()?;
                let ts = m.i64()?;
                let mut txn = open
                    .take()
                    .ok_or(PgoutputError::Malformed("a commit without a begin".into()))?;
                txn.end_lsn = Lsn(end_lsn);
                txn.commit_time_us = ts.saturating_add(PG_EPOCH_OFFSET_US);
                out.push(txn);
            }
            b'R' => {
                let relid = m.u32()?;
                let _namespace = m.cstr()?;
                let _name = m.cstr()?;
                let _identity = m.u8()?;
                let ncols = m.u16()?;
                let mut names = Vec::with_capacity(usize::from(ncols));
                let mut padded = Vec::with_capacity(usize::from(ncols));
                for _ in 0..ncols {
                    let _flags = m.u8()?;
                    names.push(m.cstr()?.to_owned());
                    padded.push(m.u32()? == BPCHAR_OID);
                    let _typmod = m.i32()?;
                }
                if Some(relid) == self.relid {
                    let mut positions = Vec::new();
                    for c in self.mapping.all_columns() {
                        let at = names.iter().position(|n| *n == c.source).ok_or_else(|| {
                            PgoutputError::Identity(format!(
                                "table {} no longer has mapped column {:?}",
                                self.table, c.source
                            ))
                        })?;
                        positions.push(at);
                    }
                    self.relations
                        .insert(relid, RelationInfo { positions, padded });
                }
            }
            b'I' => {
                let relid = m.u32()?;
                let marker = m.u8()?;
                if marker != b'N' {
                    return Err(PgoutputError::Malformed(format!(
                        "insert tuple marker {marker:?}"
                    )));
                }
                let tuple = m.tuple()?;
                if let Some(change) = self.row_change(relid, &tuple)? {
                    push(open, change)?;
                }
            }
            b'U' => {
                let relid = m.u32()?;
                let mut marker = m.u8()?;
                let mut old = None;
                if marker == b'K' || marker == b'O' {
                    old = Some(m.tuple()?);
                    marker = m.u8()?;
                }
                if marker != b'N' {
                    return Err(PgoutputError::Malformed(format!(
                        "update tuple marker {marker:?}"
                    )));
                }
                let tuple = m.tuple()?;
                // A key change arrives as an update with the old key: the
                // record under the old key is gone.
                if let Some(old) = old
                    && let Some(old_key) = self.key_of(relid, &old)?
                    && let Some(new_key) = self.key_of(relid, &tuple)?
                    && self.mapping.key_of(old_key.clone()) != self.mapping.key_of(new_key)
                {
                    push(open, Captured::Delete(self.mapping.key_of(old_key)))?;
                }
                if let Some(change) = self.row_change(relid, &tuple)? {
                    push(open, change)?;
                }
            }
            b'D' => {
                let relid = m.u32()?;
                let marker = m.u8()?;
                if marker != b'K' && marker != b'O' {
                    return Err(PgoutputError::Malformed(format!(
                        "delete tuple marker {marker:?}"
                    )));
                }
                let tuple = m.tuple()?;
                if let Some(key) = self.key_of(relid, &tuple)? {
                    push(open, Captured::Delete(self.mapping.key_of(key)))?;
                }
            }
            b'T' => {
                let n = m.u32()?;
                let _options = m.u8()?;
                for _ in 0..n {
                    if Some(m.u32()?) == self.relid {
                        push(open, Captured::Truncate)?;
                    }
                }
            }
            // Type, origin and logical messages say nothing about rows.
            b'Y' | b'O' | b'M' => {}
            other => {
                return Err(PgoutputError::Unsupported(format!(
                    "message type {:?}",
                    other as char
                )));
            }
        }
        Ok(())
    }

    /// The key of a tuple of the dataset's table (`None` for other tables).
    /// The key of a tuple as stored (before the mapping's key transforms:
    /// what a change carries outward goes through [`Mapping::key_of`]).
    fn key_of(&self, relid: u32, tuple: &[Field<'_>]) -> Result<Option<Vec<Value>>, PgoutputError> {
        let Some(rel) = self.relation(relid)? else {
            return Ok(None);
        };
        let mut key = Vec::with_capacity(self.mapping.key().len());
        for (c, &at) in self.mapping.key().iter().zip(&rel.positions) {
            match tuple.get(at) {
                Some(Field::Text(t)) => key.push(self.parse(c, unpad(rel, at, t))?),
                _ => {
                    return Err(PgoutputError::Identity(format!(
                        "key column {:?} is missing from a change (check the replica identity)",
                        c.source
                    )));
                }
            }
        }
        Ok(Some(key))
    }

    /// The change an inserted or updated tuple makes.
    fn row_change(
        &self,
        relid: u32,
        tuple: &[Field<'_>],
    ) -> Result<Option<Captured>, PgoutputError> {
        let Some(rel) = self.relation(relid)? else {
            return Ok(None);
        };
        let Some(key) = self.key_of(relid, tuple)? else {
            return Ok(None);
        };
        if self.has_filter {
            return Ok(Some(Captured::Refetch(self.mapping.key_of(key))));
        }
        let mut row = key;
        for (c, &at) in self
            .mapping
            .columns()
            .iter()
            .zip(&rel.positions[row.len()..])
        {
            match tuple.get(at) {
                Some(Field::Null) => row.push(Value::Null),
                Some(Field::Text(t)) => row.push(self.parse(c, unpad(rel, at, t))?),
                // An unchanged TOASTed value is not in the WAL: read the row.
                Some(Field::Unchanged) => {
                    row.truncate(self.mapping.key().len());
                    return Ok(Some(Captured::Refetch(self.mapping.key_of(row))));
                }
                None => {
                    return Err(PgoutputError::Malformed(format!(
                        "tuple has no column {at}"
                    )));
                }
            }
        }
        let record = self.mapping.record(row).map_err(|c| PgoutputError::Value {
            column: c.to_owned(),
            problem: "NULL in a key column".into(),
        })?;
        Ok(Some(Captured::Upsert(record)))
    }

    fn relation(&self, relid: u32) -> Result<Option<&RelationInfo>, PgoutputError> {
        if Some(relid) != self.relid {
            return Ok(None);
        }
        self.relations.get(&relid).map(Some).ok_or_else(|| {
            PgoutputError::Malformed(format!(
                "a change to relation {relid} before its description"
            ))
        })
    }

    fn parse(&self, c: &crate::ColumnMapping, t: &str) -> Result<Value, PgoutputError> {
        text::parse(c.kind, t).map_err(|p| {
            let p = if c.redact {
                crate::WITHHELD.to_owned()
            } else {
                p
            };
            PgoutputError::Value {
                column: c.source.clone(),
                problem: p,
            }
        })
    }
}

fn push(open: &mut Option<Transaction>, change: Captured) -> Result<(), PgoutputError> {
    open.as_mut()
        .ok_or(PgoutputError::Malformed(
            "a change outside a transaction".into(),
        ))?
        .changes
        .push(change);
    Ok(())
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgoutputError {
    /// The message ends before a field it announces.
    #[error("message cut short at byte {at}")]
    CutShort {
        /// Where the read ran out.
        at: usize,
    },
    /// The bytes do not follow the pgoutput protocol.
    #[error("{0}")]
    Malformed(String),
    /// Valid pgoutput that arbor does not read.
    #[error("unsupported {0}")]
    Unsupported(String),
    /// The table's replica identity does not carry the key.
    #[error("{0}")]
    Identity(String),
    /// A column's text is not a value of its kind.
    #[error("column {column:?}: {problem}")]
    Value {
        /// The column.
        column: String,
        /// What is wrong (withheld for a redacted column).
        problem: String,
    },
}

/// One column of a pgoutput tuple.
#[derive(Debug)]
enum Field<'a> {
    Null,
    /// An unchanged TOASTed value, not sent.
    Unchanged,
    Text(&'a str),
}

/// A bounds-checked reader over one message: every read says what was cut
/// short instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PgoutputError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(PgoutputError::CutShort { at: self.at })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PgoutputError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, PgoutputError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, PgoutputError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, PgoutputError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, PgoutputError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PgoutputError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, PgoutputError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn cstr(&mut self) -> Result<&'a str, PgoutputError> {
        let rest = &self.buf[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(PgoutputError::Malformed("unterminated string".into()))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| PgoutputError::Malformed("string is not UTF-8".into()))?;
        self.at += len + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Field<'a>>, PgoutputError> {
        let n = self.u16()?;
        let mut fields = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            fields.push(match self.u8()? {
                b'n' => Field::Null,
                b'u' => Field::Unchanged,
                b't' => {
                    let len = usize::try_from(self.u32()?)
                        .map_err(|_| PgoutputError::Malformed("length overflow".into()))?;
                    let bytes = self.take(len)?;
                    Field::Text(
                        std::str::from_utf8(bytes)
                            .map_err(|_| PgoutputError::Malformed("value is not UTF-8".into()))?,
                    )
                }
                b'b' => {
                    return Err(PgoutputError::Unsupported(
                        "binary tuple values (arbor asks for text)".into(),
                    ));
                }
                other => {
                    return Err(PgoutputError::Unsupported(format!(
                        "tuple field kind {:?}",
                        other as char
                    )));
                }
            });
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnMapping;
    use arbor_record::ValueKind;
    use proptest::prelude::*;

    fn capture() -> LogicalCapture {
        let mapping = Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![ColumnMapping::new("name", "name", ValueKind::Text)],
        )
        .unwrap();
        let mut c = LogicalCapture::new(
            "postgres://x@localhost/db",
            "t",
            false,
            mapping,
            LogicalOptions {
                slot: "s".into(),
                publication: "p".into(),
                create: false,
                statement_timeout: Duration::from_secs(1),
            },
        );
        c.relid = Some(42);
        c
    }

    fn relation(relid: u32, cols: &[&str]) -> Vec<u8> {
        let typed: Vec<(&str, u32)> = cols.iter().map(|&c| (c, TEXT_OID)).collect();
        relation_typed(relid, &typed)
    }

    const TEXT_OID: u32 = 25;

    fn relation_typed(relid: u32, cols: &[(&str, u32)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(relid.to_be_bytes());
        m.extend(b"public\0t\0");
        m.push(b'd');
        m.extend((cols.len() as u16).to_be_bytes());
        for (c, oid) in cols {
            m.push(0);
            m.extend(c.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    #[test]
    fn char_padding_is_dropped_as_scans_drop_it() {
        for (oid, want) in [(BPCHAR_OID, "ann"), (TEXT_OID, "ann  ")] {
            let mut c = capture();
            let mut ins = vec![b'I'];
            ins.extend(42u32.to_be_bytes());
            ins.push(b'N');
            ins.extend(tuple(&[Some("1"), Some("x"), Some("ann  ")]));
            let cols = [("id", TEXT_OID), ("extra", TEXT_OID), ("name", oid)];
            let txns = run(
                &mut c,
                &[relation_typed(42, &cols), begin(), ins, commit(0x10)],
            )
            .unwrap();
            assert_eq!(
                txns[0].changes,
                vec![Captured::Upsert(Record::new(
                    vec![Value::Integer(1)],
                    vec![Value::text(want)]
                ))]
            );
        }
    }

    fn tuple(fields: &[Option<&str>]) -> Vec<u8> {
        let mut m = (fields.len() as u16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => m.push(b'n'),
                Some("\u{0}u") => m.push(b'u'),
                Some(t) => {
                    m.push(b't');
                    m.extend((t.len() as u32).to_be_bytes());
                    m.extend(t.as_bytes());
                }
            }
        }
        m
    }

    fn begin() -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend(7u64.to_be_bytes());
        m.extend(1_000_000i64.to_be_bytes());
        m.extend(9u32.to_be_bytes());
        m
    }

    fn commit(end: u64) -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend(5u64.to_be_bytes());
        m.extend(end.to_be_bytes());
        m.extend(2_000_000i64.to_be_bytes());
        m
    }

    fn run(c: &mut LogicalCapture, msgs: &[Vec<u8>]) -> Result<Vec<Transaction>, PgoutputError> {
        let (mut open, mut out) = (None, Vec::new());
        for m in msgs {
            c.decode(m, &mut open, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn lsns_print_and_parse_like_postgres() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn inserts_updates_deletes_of_the_table_decode_in_order() {
        let mut c = capture();
        let mut ins = vec![b'I'];
        ins.extend(42u32.to_be_bytes());
        ins.push(b'N');
        // The table has an extra, unmapped column between the mapped ones.
        ins.extend(tuple(&[Some("1"), Some("x"), Some("ann")]));
        let mut upd_key = vec![b'U'];
        upd_key.extend(42u32.to_be_bytes());
        upd_key.push(b'K');
        upd_key.extend(tuple(&[Some("1"), None, None]));
        upd_key.push(b'N');
        upd_key.extend(tuple(&[Some("2"), Some("x"), None]));
        let mut toast = vec![b'U'];
        toast.extend(42u32.to_be_bytes());
        toast.push(b'N');
        toast.extend(tuple(&[Some("3"), Some("x"), Some("\u{0}u")]));
        let mut del = vec![b'D'];
        del.extend(42u32.to_be_bytes());
        del.push(b'K');
        del.extend(tuple(&[Some("2"), None, None]));
        let mut other = vec![b'I'];
        other.extend(7u32.to_be_bytes());
        other.push(b'N');
        other.extend(tuple(&[Some("1")]));
        let mut trunc = vec![b'T'];
        trunc.extend(2u32.to_be_bytes());
        trunc.push(0);
        trunc.extend(7u32.to_be_bytes());
        trunc.extend(42u32.to_be_bytes());

        let txns = run(
            &mut c,
            &[
                relation(42, &["id", "extra", "name"]),
                begin(),
                ins,
                upd_key,
                toast,
                del,
                other,
                trunc,
                commit(0x1_0000_0010),
                begin(),
                commit(0x1_0000_0020),
            ],
        )
        .unwrap();
        assert_eq!(txns.len(), 2);
        assert_eq!(txns[0].end_lsn, Lsn(0x1_0000_0010));
        assert_eq!(txns[0].commit_time_us, 2_000_000 + PG_EPOCH_OFFSET_US);
        let rec = |k: i128, v: Value| Record::new(vec![Value::Integer(k)], vec![v]);
        assert_eq!(
            txns[0].changes,
            vec![
                Captured::Upsert(rec(1, Value::text("ann"))),
                Captured::Delete(vec![Value::Integer(1)]),
                Captured::Upsert(rec(2, Value::Null)),
                Captured::Refetch(vec![Value::Integer(3)]),
                Captured::Delete(vec![Value::Integer(2)]),
                Captured::Truncate,
            ]
        );
        assert!(txns[1].changes.is_empty());
    }

    #[test]
    fn changes_carry_normalised_keys_and_a_respelling_deletes_nothing() {
        let mut key = ColumnMapping::new("id", "id", ValueKind::Text);
        key.transforms = crate::transform::Transforms {
            trim_end: true,
            case: Some(crate::transform::Case::Lower),
            ..Default::default()
        };
        let mut c = capture();
        c.mapping = Mapping::new(
            vec![key],
            vec![ColumnMapping::new("name", "name", ValueKind::Text)],
        )
        .unwrap();
        let change = |kind: u8, old: Option<&str>, new: &[Option<&str>]| {
            let mut m = vec![kind];
            m.extend(42u32.to_be_bytes());
            if let Some(old) = old {
                m.push(b'K');
                m.extend(tuple(&[Some(old), None]));
            }
            m.push(if kind == b'D' { b'K' } else { b'N' });
            m.extend(tuple(new));
            m
        };
        let txns = run(
            &mut c,
            &[
                relation(42, &["id", "name"]),
                begin(),
                change(b'I', None, &[Some("Bob "), Some("x")]),
                // `Bob ` → `BOB`: one key, respelled; nothing is deleted.
                change(b'U', Some("Bob "), &[Some("BOB"), Some("y")]),
                change(b'U', Some("BOB"), &[Some("Ann"), Some("\u{0}u")]),
                change(b'D', None, &[Some("ANN  "), None]),
                commit(0x10),
            ],
        )
        .unwrap();
        let key = |k: &str| vec![Value::text(k)];
        assert_eq!(
            txns[0].changes,
            vec![
                Captured::Upsert(Record::new(key("bob"), vec![Value::text("x")])),
                Captured::Upsert(Record::new(key("bob"), vec![Value::text("y")])),
                Captured::Delete(key("bob")),
                Captured::Refetch(key("ann")),
                Captured::Delete(key("ann")),
            ]
        );
    }

    #[test]
    fn a_relation_without_a_mapped_column_is_a_clear_error() {
        let mut c = capture();
        let err = run(&mut c, &[relation(42, &["id"])]).unwrap_err();
        assert!(err.to_string().contains("\"name\""), "{err}");
        // Other tables may look like anything.
        run(&mut c, &[relation(7, &["zzz"])]).unwrap();
    }

    #[test]
    fn every_cut_short_message_is_an_error() {
        let mut ins = vec![b'I'];
        ins.extend(42u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("1"), Some("x"), Some("ann")]));
        for full in [relation(42, &["id", "x", "name"]), begin(), commit(9), ins] {
            for cut in 1..full.len() {
                let mut c = capture();
                let (mut open, mut out) = (
                    Some(Transaction {
                        end_lsn: Lsn(0),
                        commit_time_us: 0,
                        changes: vec![],
                    }),
                    Vec::new(),
                );
                let _ = c.decode(
                    &relation(42, &["id", "x", "name"]),
                    &mut None,
                    &mut Vec::new(),
                );
                assert!(
                    c.decode(&full[..cut], &mut open, &mut out).is_err(),
                    "{full:?} cut at {cut}"
                );
            }
        }
    }

    proptest! {
        /// Bytes off the server never panic the decoder.
        #[test]
        fn arbitrary_messages_never_panic(msgs in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut c = capture();
            let (mut open, mut out) = (None, Vec::new());
            for m in &msgs {
                let _ = c.decode(m, &mut open, &mut out);
            }
        }
    }
}
