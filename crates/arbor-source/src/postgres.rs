//! PostgreSQL: a table or query streamed with `COPY ... TO STDOUT (FORMAT
//! binary)` in chunks, safe to run beside a production database.
//!
//! * **Chunks**: each is its own short read-only statement, so no snapshot
//!   is held for the whole scan (vacuum is never blocked for long), and a
//!   scan can **resume** after the last chunk it read. A build of a plain
//!   table with planner statistics on PostgreSQL 14 or later walks it in
//!   `ctid` block ranges (`WHERE ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID
//!   range scan that reads the heap in order), over `build_connections`
//!   connections side by side (one server backend produces `COPY` at one
//!   core's pace, which held a build on one connection to ~0.7× the rate
//!   of a plain export; see `docs/scale.md`); everything else (rescans,
//!   queries, views, partitioned or unanalysed tables) walks in key order,
//!   `WHERE (key) > (last) ORDER BY key LIMIT n` (keyset chunks). Rows
//!   changed while a build runs may be read in either version, or (moved
//!   by an update behind a block walk, inserted behind a keyset walk) not
//!   at all: change capture brings those, as it brings every change made
//!   during a build. A rescan walks by key because it takes a key it did
//!   not see for a deleted row: under a block walk, an update could make
//!   a live row look deleted.
//! * **Resilient**: when the connection breaks mid-scan (a restart, a
//!   failover), the source reconnects with backoff and reads the broken
//!   chunk again; nothing is handed out twice or skipped.
//! * **Gentle**: `chunk_rows`, a `max_rows_per_sec` throttle and a
//!   `statement_timeout` bound what each statement costs the server.
//! * **Binary scans, text lookups**: scans read the binary format
//!   (`pgbinary.rs`): nothing to format on the server, nothing to
//!   parse here, and a build hashes fields straight from the wire. Lookups
//!   by key and polling read text through [`crate::text`], with the session
//!   at `TimeZone=UTC`, ISO dates, `extra_float_digits=3` (shortest exact
//!   floats) and hex `bytea`. Both readings give the same values (tested on
//!   edge values of every type). The mapping's kinds are checked against
//!   the column types at start.
//!
//! Key columns must be integer, text or uuid (see [`crate::mapping`]).

use arbor_record::value::format_uuid;
use std::sync::Arc;

use arbor_record::{DatasetKeys, HASH_PART_RECORDS, HashedBatch, Record, Value};
use postgres::{Client, NoTls, SimpleQueryMessage};
use tracing::instrument;

use crate::keyset::{self, ChunkContext, ChunkError, ChunkStats, Fetched, KeysetReader, RowBudget};
use crate::mapping::Mapping;
use crate::pgbinary::{self, BinaryContext, Field};
use crate::relation::Relation;
use crate::{Source, SourceError, text};

pub use crate::keyset::ScanOptions;

/// A dataset in a PostgreSQL database.
pub struct PostgresSource {
    url: String,
    relation: Relation,
    mapping: Mapping,
    options: ScanOptions,
    client: Option<Session>,
    /// How to read the columns in binary; set by [`Source::check`].
    binary: Option<Arc<BinaryContext>>,
    /// The select list [`Source::check`] settled (see `columns_sql`).
    select: Option<String>,
    /// Bytes of the last chunk read, to size the next one's buffer.
    last_chunk_bytes: usize,
    /// Chunk buffers to reuse.
    buffers: BufferPool,
    /// Sizes keyset chunks (and by-key pieces of a block walk) to
    /// `chunk_bytes`.
    budget: RowBudget,
    /// Set when a scan walks the table by block ranges.
    blocks: Option<BlockWalk>,
    /// The chunks read, shared with the lanes.
    stats: Arc<ChunkStats>,
}

/// Names of URL query parameters and connection-string keys whose values
/// are secrets (compared case-insensitively).
const SECRET_PARAMETERS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
];

fn is_secret_parameter(name: &str) -> bool {
    SECRET_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name.trim()))
}

/// The URL (or `key=value` connection string) with every password masked,
/// for messages: the `user:password@` of a URL, secret query parameters
/// (`?password=…`), and `password=…` of a libpq connection string.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_connection_string(url);
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    // The authority ends at the first '/', '?' or '#'; a password may hold
    // '@', so the userinfo ends at the authority's last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(c) => format!("{}:***{host}", &userinfo[..c]),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{head}{authority}{tail}")
}

/// `host=db password='s e c' user=arbor` → `host=db password=*** user=arbor`.
fn redact_connection_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest
            .find('=')
            .filter(|&eq| !rest[..eq].contains(char::is_whitespace))
        else {
            // Not key=value: copy the word.
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        };
        let key = &rest[..eq];
        let value = &rest[eq + 1..];
        // A value is a quoted string (with \' escapes) or runs to white space.
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let mut len = quoted.len() + 1;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        len = i + 2;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            len
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str(key);
        out.push('=');
        if is_secret_parameter(key) {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn every_form_of_password_is_masked() {
        for (url, want) in [
            (
                "postgres://arbor:s3cret@db:5432/crm",
                "postgres://arbor:***@db:5432/crm",
            ),
            (
                "postgres://arbor:p@ss@db/crm?sslmode=require",
                "postgres://arbor:***@db/crm?sslmode=require",
            ),
            (
                "postgres://db/crm?user=arbor&password=s3cret&sslmode=require",
                "postgres://db/crm?user=arbor&password=***&sslmode=require",
            ),
            (
                "postgresql://arbor@db/crm?PASSWORD=x#frag",
                "postgresql://arbor@db/crm?PASSWORD=***#frag",
            ),
            (
                "mysql://root:hunter2@127.0.0.1:3306/erp",
                "mysql://root:***@127.0.0.1:3306/erp",
            ),
            ("postgres://db/crm", "postgres://db/crm"),
            (
                "host=db user=arbor password=s3cret dbname=crm",
                "host=db user=arbor password=*** dbname=crm",
            ),
            (
                "host=db password='a b\\' c' dbname=crm",
                "host=db password=*** dbname=crm",
            ),
            ("host = db", "host = db"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
            assert!(!redact_url(url).contains("s3cret"));
        }
    }
}

pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name, schema-qualified or not: `public.customers` → `"public"."customers"`.
pub(crate) fn table_ident(name: &str) -> String {
    crate::relation::table_ident(name, ident)
}

/// A key value as a SQL literal (key kinds only).
fn literal(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Integer(i) => i.to_string(),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Uuid(u) => format!("'{}'::uuid", format_uuid(u)),
        other => return Err(format!("{other} cannot be a key")),
    })
}

/// Opens a session with the settings every arbor reader relies on: UTC,
/// ISO dates, shortest exact floats and hex `bytea` (so values print in the
/// forms [`crate::text`] reads), and a statement timeout. `read_only` makes
/// every transaction read-only; only slot and publication management (see
/// [`crate::pglogical`]) opens a session without it.
pub(crate) fn open_session(
    url: &str,
    statement_timeout: std::time::Duration,
    read_only: bool,
) -> Result<PgClient, SourceError> {
    let open_err = |e: &dyn std::fmt::Display| SourceError::Open {
        what: format!("postgres {}", redact_url(url)),
        reason: e.to_string(),
    };
    let mut client = Client::connect(url, NoTls).map_err(|e| open_err(&e))?;
    client
        .batch_execute(&session_settings(statement_timeout, read_only))
        .map_err(|e| open_err(&e))?;
    Ok(PgClient(Some(client)))
}

/// A blocking PostgreSQL client that may be dropped anywhere.
///
/// `postgres::Client` drives a runtime of its own and closes by blocking on
/// it, which panics when the last owner lets go on a tokio worker (an agent
/// stopping drops its datasets' sources there). Dropped inside a runtime,
/// the client is closed on a thread of its own instead.
pub(crate) struct PgClient(Option<Client>);

impl PgClient {
    /// Whether the connection is gone (reconnect before the next use).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(Client::is_closed)
    }
}

impl std::ops::Deref for PgClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0
            .as_ref()
            .expect("a PgClient holds its client until dropped")
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.0
            .as_mut()
            .expect("a PgClient holds its client until dropped")
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // Closing blocks; a worker must not. Detached: the process may
            // be exiting, and the server notices a closed socket either way.
            let closer = std::thread::Builder::new()
                .name("arbor-pg-close".into())
                .spawn(move || drop(client));
            if let Err(e) = closer {
                // No thread to close it on: leak the connection rather than
                // panic (the server drops it when the process exits).
                tracing::warn!(error = %e, "cannot close a PostgreSQL connection");
            }
        }
    }
}

/// The `SET` statements of [`open_session`].
fn session_settings(statement_timeout: std::time::Duration, read_only: bool) -> String {
    format!(
        "SET application_name = 'arbor'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD';
         SET extra_float_digits = 3; SET bytea_output = 'hex'; SET standard_conforming_strings = on;
         SET default_transaction_read_only = {}; SET statement_timeout = {};",
        if read_only { "on" } else { "off" },
        statement_timeout.as_millis().max(1)
    )
}

/// A read-only session for a source, with the settings of
/// [`open_session`], driven by a single-threaded runtime of its own. The
/// blocking driver enters its runtime once per message, that is once per
/// row of a `COPY`; this reads a whole chunk in one `block_on` (the
/// per-row entries were a seventh of a build's CPU).
pub(crate) struct Session {
    /// Always `Some` until dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    client: tokio_postgres::Client,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which panics on a
        // tokio worker; this one's only task is the connection, which may
        // simply be abandoned.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Session {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("a Session holds its runtime until dropped")
    }

    /// Connects and applies the session settings.
    fn open(url: &str, statement_timeout: std::time::Duration) -> Result<Session, SourceError> {
        let open_err = |e: &dyn std::fmt::Display| SourceError::Open {
            what: format!("postgres {}", redact_url(url)),
            reason: e.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_err(&e))?;
        let (client, connection) = runtime
            .block_on(tokio_postgres::connect(url, NoTls))
            .map_err(|e| open_err(&e))?;
        // Runs whenever this session blocks on a request.
        runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        let session = Session {
            runtime: Some(runtime),
            client,
        };
        session
            .rt()
            .block_on(
                session
                    .client
                    .batch_execute(&session_settings(statement_timeout, true)),
            )
            .map_err(|e| open_err(&e))?;
        Ok(session)
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, postgres::Error> {
        self.rt().block_on(self.client.prepare(sql))
    }

    fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, postgres::Error> {
        self.rt().block_on(self.client.simple_query(sql))
    }

    /// Runs a `COPY ... TO STDOUT` and appends its output to `out`, up to
    /// the first message that takes `out` to `cap` bytes; returns whether
    /// it stopped there. The rest of a statement stopped early is read off
    /// the connection and dropped before the next statement: a cancel
    /// request is not used, because it is delivered asynchronously and
    /// can cancel the next statement instead. Chunks are sized so that
    /// this is rare (see [`crate::keyset`]).
    fn copy_out(&self, sql: &str, out: &mut Vec<u8>, cap: u64) -> Result<bool, postgres::Error> {
        use futures_util::StreamExt;
        self.rt().block_on(async {
            let stream = self.client.copy_out(sql).await?;
            let mut stream = std::pin::pin!(stream);
            while let Some(data) = stream.next().await {
                out.extend_from_slice(&data?);
                if out.len() as u64 >= cap {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

pub(crate) fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

pub(crate) fn is_connection_error(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|d| {
            // admin_shutdown, crash_shutdown, cannot_connect_now
            matches!(d.code().code(), "57P01" | "57P02" | "57P03")
        })
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Whether a statement was cancelled by a timeout (`statement_timeout`,
/// `lock_timeout`): the server was busy, not wrong.
pub(crate) fn is_timeout(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        // query_canceled, lock_not_available
        matches!(d.code().code(), "57014" | "55P03")
    })
}

impl PostgresSource {
    /// What this source's scans held (see [`ChunkStats`]).
    pub fn chunk_stats(&self) -> &ChunkStats {
        &self.stats
    }

    /// A source that connects on first use (so a config check and an agent
    /// start name the database that cannot be reached).
    pub fn new(
        url: impl Into<String>,
        relation: Relation,
        mapping: Mapping,
        options: ScanOptions,
    ) -> PostgresSource {
        PostgresSource {
            url: url.into(),
            relation,
            mapping,
            options,
            client: None,
            binary: None,
            select: None,
            last_chunk_bytes: 0,
            buffers: BufferPool::default(),
            budget: RowBudget::of_chunks(&options),
            blocks: None,
            stats: Arc::default(),
        }
    }

    /// The rows of a simple (text) query.
    fn query_rows(&mut self, sql: &str) -> Result<Vec<postgres::SimpleQueryRow>, SourceError> {
        let dataset = self.dataset();
        let messages = self
            .client()?
            .simple_query(sql)
            .map_err(|e| SourceError::Read {
                dataset,
                reason: db_message(&e),
            })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }

    /// What turning text rows into records needs.
    fn context(&self) -> ChunkContext {
        ChunkContext {
            mapping: self.mapping.clone(),
            dataset: PostgresSource::dataset(self),
        }
    }

    /// The binary readings [`Source::check`] settled.
    fn binary_context(&self) -> Result<Arc<BinaryContext>, SourceError> {
        self.binary.clone().ok_or_else(|| SourceError::Schema {
            dataset: self.dataset(),
            problem: "the columns were not checked before reading".into(),
        })
    }

    fn dataset(&self) -> String {
        self.relation.dataset_name(&redact_url(&self.url))
    }

    fn from(&self) -> String {
        self.relation.from_item(ident)
    }

    fn connect(&self) -> Result<Session, SourceError> {
        Session::open(&self.url, self.options.statement_timeout)
    }

    fn client(&mut self) -> Result<&Session, SourceError> {
        if self.client.as_ref().is_none_or(Session::is_closed) {
            self.client = Some(self.connect()?);
        }
        self.client.as_ref().ok_or_else(|| SourceError::Open {
            what: format!("postgres {}", redact_url(&self.url)),
            reason: "no session".into(),
        })
    }

    /// The select list: the mapped columns as [`Source::check`] found
    /// them, `char(n)` ones cast to `text`, which drops their blank padding
    /// (MariaDB drops it on read; a `text` column never had it): equal
    /// values compare equal across engines and column types.
    fn columns_sql(&self) -> String {
        match &self.select {
            Some(select) => select.clone(),
            None => keyset::select_list(&self.mapping, ident),
        }
    }

    fn key_sql(&self) -> String {
        keyset::key_list(&self.mapping, ident)
    }

    /// The `COPY` of the keyset chunk after `after` (the first if `None`),
    /// asking for `limit` rows.
    fn keyset_query(&self, after: Option<&[Value]>, limit: u64) -> Result<String, SourceError> {
        let filter = match after {
            Some(last) => format!(" WHERE {}", self.after_condition(last)?),
            None => String::new(),
        };
        Ok(self.copy_query(
            &filter,
            &format!(" ORDER BY {} LIMIT {limit}", self.key_sql()),
        ))
    }

    /// The `COPY` of the piece of a block walk at `at`; in key order,
    /// `limit` rows at a time, when the piece is read by key.
    fn blocks_query(&self, at: &BlockCursor, limit: u64) -> Result<String, SourceError> {
        // The last piece is open-ended: rows the table grew by since the
        // scan began are read too.
        let mut filter = format!(" WHERE ctid >= '({},0)'::tid", at.start);
        if let Some(end) = at.piece_end {
            filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
        }
        let PieceRead::ByKey(after) = &at.read else {
            return Ok(self.copy_query(&filter, ""));
        };
        if let Some(last) = after {
            filter.push_str(&format!(" AND {}", self.after_condition(last)?));
        }
        Ok(self.copy_query(
            &filter,
            &format!(" ORDER BY {} LIMIT {limit}", self.key_sql()),
        ))
    }

    /// `COPY (SELECT <columns> FROM <relation><filter><order>) TO STDOUT`.
    fn copy_query(&self, filter: &str, order: &str) -> String {
        format!(
            "COPY (SELECT {} FROM {}{filter}{order}) TO STDOUT (FORMAT binary)",
            self.columns_sql(),
            self.from(),
        )
    }

    /// `(key) > (last)`, the condition of the rows after key `last`.
    fn after_condition(&self, last: &[Value]) -> Result<String, SourceError> {
        let lits = last
            .iter()
            .map(literal)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| SourceError::Value {
                dataset: self.dataset(),
                column: "(key)".into(),
                problem,
            })?;
        Ok(format!("({}) > ({})", self.key_sql(), lits.join(", ")))
    }

    /// Chooses how a build's scan walks the relation: block ranges of a
    /// plain table on PostgreSQL 14 or later (a TID range scan reads the
    /// heap in order, like a sequential scan: ~10 % less server time than
    /// walking the key's index at 10 M rows), keyset chunks otherwise
    /// (queries, views, partitioned tables, older servers). Only builds
    /// walk by blocks: a row an update moves behind the walk is missed,
    /// which change capture repairs for a build but which a rescan would
    /// take for a deleted row.
    fn choose_walk(&mut self) -> Result<(), SourceError> {
        self.blocks = None;
        let Relation::Table(table) = &self.relation else {
            return Ok(());
        };
        // A block walk may meet a row twice and keeps the last copy; under
        // normalised keys two stored rows may be one key, which must be
        // refused, not resolved by read order. Keyset order tells them apart.
        if self.mapping.normalises_keys() {
            return Ok(());
        }
        let name =
            literal(&Value::text(table_ident(table))).map_err(|problem| SourceError::Schema {
                dataset: self.dataset(),
                problem,
            })?;
        // The key columns, for the unique index a block walk needs.
        let key_names = self
            .mapping
            .key()
            .iter()
            .map(|c| literal(&Value::text(c.source.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| SourceError::Schema {
                dataset: self.dataset(),
                problem,
            })?
            .join(", ");
        let sql = format!(
            "SELECT current_setting('server_version_num')::int >= 140000, c.relkind::text,
                    pg_relation_size(c.oid) / current_setting('block_size')::int8,
                    c.relpages, c.reltuples, pg_table_size(c.oid),
                    EXISTS (SELECT 1 FROM pg_index i
                            WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                              AND i.indexprs IS NULL
                              AND ARRAY(SELECT a.attname::text FROM pg_attribute a
                                        WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey))
                                  <@ ARRAY[{key_names}]::text[])
             FROM pg_class c WHERE c.oid = {name}::regclass"
        );
        let rows = self.query_rows(&sql)?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let field = |i: usize| row.get(i).unwrap_or("");
        // A block walk may meet a row twice (an update moves it ahead of
        // the walk), so a key read twice passes for such a row: only a key
        // a unique index guarantees can be walked so. Without one, the walk
        // by key reads duplicates in the table as such.
        if field(0) != "t" || !matches!(field(1), "r" | "m") || field(6) != "t" {
            return Ok(());
        }
        let table_blocks: u64 = field(2).parse().unwrap_or(0);
        let pages: f64 = field(3).parse().unwrap_or(0.0);
        let tuples: f64 = field(4).parse().unwrap_or(-1.0);
        // Chunks of about `chunk_rows` rows need the planner's rows per
        // block; a table never analysed is walked by key instead.
        if pages <= 0.0 || tuples <= 0.0 {
            return Ok(());
        }
        let per_block = (tuples / pages).max(1.0);
        let max_per_chunk =
            ((self.options.chunk_rows.max(1) as f64 / per_block).ceil() as u64).max(1);
        // And of about `chunk_bytes`, by the bytes the table and its TOAST
        // take on disk per block: a first guess (TOAST is compressed on
        // disk, not in COPY), which the walk corrects as it reads.
        let table_bytes: f64 = field(5).parse().unwrap_or(0.0);
        let bytes_per_block = (table_bytes / table_blocks.max(1) as f64).max(1.0);
        let per_chunk =
            ((self.options.chunk_bytes as f64 / bytes_per_block) as u64).clamp(1, max_per_chunk);
        // A throttled scan keeps to one connection (the throttle is per
        // reader).
        let connections = if self.options.max_rows_per_sec == 0 {
            self.options.build_connections
        } else {
            1
        };
        self.blocks = Some(BlockWalk::new(
            table_blocks,
            per_chunk,
            max_per_chunk,
            connections,
        ));
        Ok(())
    }

    /// A record from a row in select-list order (see [`Mapping::record`]).
    fn record(&self, values: Vec<Value>) -> Result<Record, SourceError> {
        self.mapping
            .record(values)
            .map_err(|c| self.value_error(c, crate::NULL_KEY.into()))
    }

    /// The mapped values of a simple-query (text) row.
    fn text_row(&self, row: &postgres::SimpleQueryRow) -> Result<Vec<Value>, SourceError> {
        let cols = self.mapping.all_columns();
        cols.enumerate()
            .map(|(i, c)| match row.get(i) {
                None => Ok(Value::Null),
                Some(t) => text::parse(c.kind, t).map_err(|p| self.value_error(&c.source, p)),
            })
            .collect()
    }

    fn value_error(&self, column: &str, problem: String) -> SourceError {
        SourceError::Value {
            dataset: self.dataset(),
            column: column.to_owned(),
            problem,
        }
    }
}

/// A chunk of binary COPY output and where each of its rows starts.
pub(crate) struct BinaryChunk {
    raw: Vec<u8>,
    rows: Vec<usize>,
}

/// Chunk buffers handed back after parsing, for the next fetch: a chunk is
/// ~10 MB, and fresh memory of that size costs page faults to zero it.
#[derive(Clone, Default)]
pub(crate) struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Chunks in flight: one parsed, one fetched.
    const KEEP: usize = 2;

    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < Self::KEEP {
            pool.push(buffer);
        }
    }
}

impl BinaryContext {
    /// A chunk's rows as records.
    fn records(
        &self,
        chunk: BinaryChunk,
        parallel: bool,
        pool: &BufferPool,
    ) -> Result<Vec<Record>, SourceError> {
        let record = |&at: &usize| self.chunk.record(self.values(&chunk.raw, at, None)?);
        let records = if parallel {
            use rayon::prelude::*;
            chunk.rows.par_iter().map(record).collect()
        } else {
            chunk.rows.iter().map(record).collect()
        };
        pool.give(chunk.raw);
        records
    }

    /// A chunk's rows hashed, in batches of [`HASH_PART_RECORDS`] hashed
    /// in parallel if `parallel`.
    fn hashed(
        &self,
        keys: &DatasetKeys,
        chunk: BinaryChunk,
        parallel: bool,
        pool: &BufferPool,
    ) -> Result<Vec<HashedBatch>, SourceError> {
        use rayon::prelude::*;
        let parts = if parallel {
            chunk
                .rows
                .par_chunks(HASH_PART_RECORDS)
                .map(|rows| self.hash_rows(keys, &chunk.raw, rows))
                .collect::<Result<Vec<_>, _>>()
        } else {
            self.hash_rows(keys, &chunk.raw, &chunk.rows)
                .map(|b| vec![b])
        };
        pool.give(chunk.raw);
        parts
    }
}

/// Where a chunk of a PostgreSQL scan starts.
#[derive(Debug, Clone)]
pub(crate) enum PgCursor {
    /// After this key (keyset chunks).
    After(Vec<Value>),
    /// At this piece of a block walk.
    Blocks(BlockCursor),
}

/// A piece of a range of blocks a lane of a block walk claimed: blocks
/// `[start, piece_end)` of the range `[start, end)` (`None`: open-ended,
/// to the table's end however far it grew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockCursor {
    start: u64,
    piece_end: Option<u64>,
    end: Option<u64>,
    read: PieceRead,
}

/// How a piece of a block walk is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PieceRead {
    /// In one statement, in the heap's order.
    Whole,
    /// A single block too wide for one chunk: in key order, a budget of
    /// rows at a time, after this key (from its first row if `None`).
    ByKey(Option<Vec<Value>>),
}

impl BlockCursor {
    /// Blocks in the piece; `None` if it is open-ended.
    fn piece_blocks(&self) -> Option<u64> {
        self.piece_end.map(|e| e - self.start)
    }
}

/// Rows a block walk's piece that overflowed `chunk_bytes` is cut down by:
/// an eighth, so that a table of wide rows reaches pieces that fit in a
/// few tries.
const OVERFLOW_SHRINK: u64 = 8;

/// How much a lane's pieces may grow from one to the next: an estimate
/// that overshoots costs a dropped read, so it is approached, not jumped to.
const PIECE_GROWTH: u64 = 2;

/// Blocks a lane's first claim takes at most: a chunk too large is read
/// to its end before it is dropped, so the first guess is a small one.
const FIRST_CLAIM_BLOCKS: u64 = 8;

/// A scan of a table by block ranges. Lanes (one per connection) claim
/// ranges from a shared counter, each sized by the lane's `per_chunk`,
/// which follows the bytes its chunks held: about `chunk_rows` rows and
/// `chunk_bytes` bytes a chunk. A piece whose rows overflow `chunk_bytes`
/// is dropped and read again in smaller pieces, and a single block that
/// overflows is read in key order in budgeted chunks: memory stays bounded
/// however wide the rows (see [`crate::keyset`]).
#[derive(Debug, Clone)]
struct BlockWalk {
    /// The table's size in blocks when the scan began.
    table_blocks: u64,
    /// Blocks this lane's next claim or piece takes.
    per_chunk: u64,
    /// The most blocks a piece takes: about `chunk_rows` rows.
    max_per_chunk: u64,
    /// The first block no lane has claimed yet, shared by the lanes.
    unclaimed: Arc<std::sync::atomic::AtomicU64>,
    /// This lane's first claim, kept so that reading it again after a
    /// broken connection reads the same blocks.
    first: Option<Option<BlockCursor>>,
    /// Set once a single block of this lane overflowed `chunk_bytes`:
    /// single-block pieces are read by key from then on.
    by_key: bool,
    /// Readers walking the table side by side (1: one connection).
    lanes: u64,
}

impl BlockWalk {
    /// The walk of the first lane over up to `connections` lanes: fewer
    /// when the table has few chunks (two chunks a lane at least), so every
    /// lane has chunks to read.
    fn new(table_blocks: u64, per_chunk: u64, max_per_chunk: u64, connections: u32) -> BlockWalk {
        let per_chunk = per_chunk.max(1);
        let chunks = table_blocks / per_chunk + 1;
        BlockWalk {
            table_blocks,
            // The estimate may be far too large (TOAST is compressed on
            // disk): start small and let `observe` double up to it.
            per_chunk: per_chunk.min(FIRST_CLAIM_BLOCKS),
            max_per_chunk: max_per_chunk.max(per_chunk),
            unclaimed: Arc::default(),
            first: None,
            by_key: false,
            lanes: u64::from(connections).min(chunks / 2).max(1),
        }
    }

    /// Another lane of this walk.
    fn lane(&self) -> BlockWalk {
        BlockWalk {
            first: None,
            by_key: false,
            ..self.clone()
        }
    }

    /// Claims the next `per_chunk` blocks; `None` once the table is
    /// claimed. The claim holding block `table_blocks` is open-ended.
    fn claim(&self) -> Option<BlockCursor> {
        use std::sync::atomic::Ordering;
        let start = self.unclaimed.fetch_add(self.per_chunk, Ordering::Relaxed);
        if start > self.table_blocks {
            return None;
        }
        let end = Some(start + self.per_chunk).filter(|&e| e <= self.table_blocks);
        Some(BlockCursor {
            start,
            piece_end: end,
            end,
            read: PieceRead::Whole,
        })
    }

    /// This lane's first claim (the same one every time).
    fn first(&mut self) -> Option<BlockCursor> {
        if self.first.is_none() {
            self.first = Some(self.claim());
        }
        self.first.clone().flatten()
    }

    /// Where this lane reads after the piece `at`: the rest of its range
    /// in pieces of `per_chunk` (the rest of an open range in one open
    /// piece), then a new claim.
    fn after(&self, at: &BlockCursor) -> Option<BlockCursor> {
        match at.piece_end {
            Some(start) if Some(start) != at.end => {
                let piece_end = start + self.per_chunk;
                Some(BlockCursor {
                    start,
                    // The rest of an open range is open from the table's
                    // end only: before it, pieces of `per_chunk`.
                    piece_end: match at.end {
                        Some(end) => Some(end.min(piece_end)),
                        None => Some(piece_end).filter(|&e| e <= self.table_blocks),
                    },
                    end: at.end,
                    read: PieceRead::Whole,
                })
            }
            _ => self.claim(),
        }
    }

    /// A piece that overflowed `chunk_bytes`: the smaller piece to read
    /// instead.
    fn shrink(&mut self, at: &mut BlockCursor) {
        self.per_chunk = (self.per_chunk / OVERFLOW_SHRINK).max(1);
        match at.piece_blocks() {
            Some(1) => {
                self.by_key = true;
                at.read = PieceRead::ByKey(None);
            }
            blocks => {
                let most = blocks.map_or(u64::MAX, |b| b - 1);
                at.piece_end = Some(at.start + self.per_chunk.min(most));
            }
        }
    }

    /// Sizes the next pieces after one of `blocks` blocks held `bytes`.
    fn observe(&mut self, blocks: u64, bytes: u64, chunk_bytes: u64) {
        let fit = (blocks as u128 * u128::from(chunk_bytes) / u128::from(bytes.max(1))) as u64;
        self.per_chunk = fit
            .min(self.per_chunk.saturating_mul(PIECE_GROWTH))
            .clamp(1, self.max_per_chunk);
    }
}

/// A chunk with no rows.
fn empty_chunk() -> Fetched<BinaryChunk, PgCursor> {
    Fetched {
        raw: BinaryChunk {
            raw: Vec::new(),
            rows: Vec::new(),
        },
        rows: 0,
        next: None,
    }
}

impl PostgresSource {
    /// Runs a chunk's `COPY` into a recycled buffer; stops taking rows once
    /// it holds `cap` bytes (a cut chunk: its complete rows, and the
    /// flag).
    fn copy_chunk(&mut self, query: &str, cap: u64) -> Result<(BinaryChunk, bool), ChunkError> {
        let dataset = PostgresSource::dataset(self);
        let context = self.binary_context()?;
        // A recycled buffer, sized for the last chunk: no doubling and
        // copying as it grows.
        let mut raw = self.buffers.take();
        raw.reserve(self.last_chunk_bytes + self.last_chunk_bytes / 8);
        let cut = {
            let client = self.client()?;
            client.copy_out(query, &mut raw, cap).map_err(|e| {
                if is_connection_error(&e) {
                    ChunkError::Connection(format!("COPY interrupted: {e}"))
                } else {
                    ChunkError::Fatal(SourceError::Read {
                        dataset: dataset.clone(),
                        reason: db_message(&e),
                    })
                }
            })?
        };
        let read = |raw: &mut Vec<u8>| {
            if cut {
                pgbinary::close_cut(raw, context.fields.len())?;
            }
            pgbinary::split_rows(raw, context.fields.len())
        };
        let rows = read(&mut raw).map_err(|reason| {
            ChunkError::Fatal(SourceError::Read {
                dataset: dataset.clone(),
                reason: reason.to_string(),
            })
        })?;
        self.last_chunk_bytes = raw.len();
        self.stats.note(raw.len() as u64);
        Ok((BinaryChunk { raw, rows }, cut))
    }

    /// The key of the last row of `chunk`.
    fn last_key(&self, chunk: &BinaryChunk) -> Result<Option<Vec<Value>>, SourceError> {
        let context = self.binary_context()?;
        chunk
            .rows
            .last()
            .map(|&at| context.values(&chunk.raw, at, Some(self.mapping.key().len())))
            .transpose()
    }

    /// The piece of a block walk at `at`, read whole or, if its rows do
    /// not fit `chunk_bytes`, in smaller pieces or by key.
    fn fetch_blocks(
        &mut self,
        mut walk: BlockWalk,
        mut at: BlockCursor,
    ) -> Result<(BlockWalk, Fetched<BinaryChunk, PgCursor>), ChunkError> {
        let cap = self.options.chunk_bytes;
        loop {
            if at.read == PieceRead::Whole && walk.by_key && at.piece_blocks() == Some(1) {
                at.read = PieceRead::ByKey(None);
            }
            let limit = self.budget.rows();
            let query = self.blocks_query(&at, limit)?;
            let (chunk, cut) = self.copy_chunk(&query, cap)?;
            let n = chunk.rows.len() as u64;
            let next = match &at.read {
                PieceRead::Whole if cut => {
                    // Rows in heap order cannot be resumed mid-piece: drop
                    // them and read a smaller piece.
                    self.buffers.give(chunk.raw);
                    walk.shrink(&mut at);
                    continue;
                }
                PieceRead::Whole => {
                    if let Some(blocks) = at.piece_blocks() {
                        walk.observe(blocks, chunk.raw.len() as u64, cap);
                    }
                    walk.after(&at)
                }
                PieceRead::ByKey(_) => {
                    self.budget.observe(n, chunk.raw.len() as u64);
                    match self.last_key(&chunk)? {
                        Some(last) if keyset::keyset_continues(n, limit, cut) => {
                            Some(BlockCursor {
                                read: PieceRead::ByKey(Some(last)),
                                ..at.clone()
                            })
                        }
                        _ => walk.after(&at),
                    }
                }
            };
            let fetched = Fetched {
                rows: n,
                raw: chunk,
                next: next.map(PgCursor::Blocks),
            };
            return Ok((walk, fetched));
        }
    }
}

impl KeysetReader for PostgresSource {
    type Raw = BinaryChunk;
    type Cursor = PgCursor;

    fn options(&self) -> &ScanOptions {
        &self.options
    }

    fn dataset(&self) -> String {
        PostgresSource::dataset(self)
    }

    fn fetch_chunk(
        &mut self,
        from: Option<&PgCursor>,
    ) -> Result<Fetched<BinaryChunk, PgCursor>, ChunkError> {
        if let Some(mut walk) = self.blocks.take() {
            let at = match from {
                Some(PgCursor::Blocks(at)) => Some(at.clone()),
                _ => walk.first(),
            };
            let Some(at) = at else {
                self.blocks = Some(walk);
                return Ok(empty_chunk());
            };
            // The walk's state survives a failed read: it is put back
            // before any error is returned.
            let result = self.fetch_blocks(walk.clone(), at);
            self.blocks = Some(match &result {
                Ok((changed, _)) => changed.clone(),
                Err(_) => walk,
            });
            return result.map(|(_, fetched)| fetched);
        }
        let after = match from {
            Some(PgCursor::After(last)) => Some(last.as_slice()),
            _ => None,
        };
        let limit = self.budget.rows();
        let query = self.keyset_query(after, limit)?;
        let (chunk, cut) = self.copy_chunk(&query, self.options.chunk_bytes)?;
        let n = chunk.rows.len() as u64;
        self.budget.observe(n, chunk.raw.len() as u64);
        let next = match self.last_key(&chunk)? {
            Some(last) if keyset::keyset_continues(n, limit, cut) => Some(PgCursor::After(last)),
            _ => None,
        };
        Ok(Fetched {
            rows: n,
            raw: chunk,
            next,
        })
    }

    fn lanes(&mut self) -> Vec<PostgresSource> {
        let Some(walk) = &self.blocks else {
            return Vec::new();
        };
        (1..walk.lanes)
            .map(|_| PostgresSource {
                url: self.url.clone(),
                relation: self.relation.clone(),
                mapping: self.mapping.clone(),
                options: self.options,
                client: None,
                binary: self.binary.clone(),
                select: self.select.clone(),
                last_chunk_bytes: self.last_chunk_bytes,
                buffers: self.buffers.clone(),
                budget: self.budget,
                blocks: Some(walk.lane()),
                stats: Arc::clone(&self.stats),
            })
            .collect()
    }

    fn connect_again(&mut self) -> Result<(), SourceError> {
        self.client = None;
        self.client = Some(self.connect()?);
        Ok(())
    }
}

impl Source for PostgresSource {
    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn check(&mut self) -> Result<(), SourceError> {
        let probe = format!(
            "SELECT {} FROM {} LIMIT 0",
            keyset::select_list(&self.mapping, ident),
            self.from()
        );
        let dataset = self.dataset();
        let client = self.client()?;
        let stmt = client.prepare(&probe).map_err(|e| {
            let problem = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            // A probe that timed out (a lock held by another session) or
            // lost its connection says nothing about the schema: it is
            // tried again, where a missing table or column is not.
            if is_connection_error(&e) || is_timeout(&e) {
                SourceError::Read {
                    dataset: dataset.clone(),
                    reason: problem,
                }
            } else {
                SourceError::Schema {
                    dataset: dataset.clone(),
                    problem,
                }
            }
        })?;
        let cols: Vec<_> = self.mapping.all_columns().collect();
        let mut fields = Vec::with_capacity(cols.len());
        let mut select = Vec::with_capacity(cols.len());
        for (c, col) in cols.iter().zip(stmt.columns()) {
            let Some(field) = Field::of(c.kind, col.type_()) else {
                return Err(keyset::unreadable_column(
                    dataset,
                    "PostgreSQL",
                    c,
                    col.type_().name(),
                ));
            };
            fields.push(field);
            select.push(if *col.type_() == postgres::types::Type::BPCHAR {
                format!("{0}::text AS {0}", ident(&c.source))
            } else {
                ident(&c.source)
            });
        }
        self.select = Some(select.join(", "));
        self.binary = Some(Arc::new(BinaryContext {
            chunk: ChunkContext {
                mapping: self.mapping.clone(),
                dataset,
            },
            fields,
        }));
        Ok(())
    }

    #[instrument(skip_all, fields(dataset = %self.dataset()))]
    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        self.check()?;
        // Always by key: a rescan takes a key it did not see for a deleted
        // row, and an update can move a row behind a block walk.
        self.blocks = None;
        let context = self.binary_context()?;
        let pool = self.buffers.clone();
        keyset::scan_records(
            self,
            &|chunk, parallel| context.records(chunk, parallel, &pool),
            visit,
        )
    }

    fn build_may_repeat_keys(&self) -> bool {
        self.blocks.is_some()
    }

    #[instrument(skip_all, fields(dataset = %self.dataset()))]
    fn scan_hashed(
        &mut self,
        keys: &DatasetKeys,
        visit: &mut dyn FnMut(Vec<HashedBatch>) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        self.check()?;
        self.choose_walk()?;
        let context = self.binary_context()?;
        let pool = self.buffers.clone();
        keyset::scan_in_chunks(
            self,
            &|chunk, parallel| context.hashed(keys, chunk, parallel, &pool),
            visit,
        )
    }

    fn changed_since(
        &mut self,
        column: &str,
        since: Option<&str>,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<Option<String>, SourceError> {
        self.check()?;
        let filter = match since {
            Some(s) => format!(" WHERE {} >= '{}'", ident(column), s.replace('\'', "''")),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {}, {}::text FROM {}{filter} ORDER BY {}",
            self.columns_sql(),
            ident(column),
            self.from(),
            ident(column)
        );
        let rows = self.query_rows(&sql)?;
        // The watermark column comes after the mapped ones.
        let mark_at = self.mapping.key().len() + self.mapping.columns().len();
        let mut last = None;
        for row in rows {
            if let Some(mark) = row.get(mark_at) {
                last = Some(mark.to_owned());
            }
            visit(self.record(self.text_row(&row)?)?)?;
        }
        Ok(last.or_else(|| since.map(str::to_owned)))
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        if self.mapping.normalises_keys() {
            return crate::fetch_by_scan(self, keys);
        }
        let context = self.context();
        keyset::fetch_in_batches(keys, |batch| {
            let cond =
                crate::sink::keys_condition(crate::sink::Dialect::Postgres, &self.mapping, batch)
                    .map_err(|problem| self.value_error("(key)", problem.to_string()))?;
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond}",
                self.columns_sql(),
                self.from()
            );
            self.query_rows(&sql)?
                .iter()
                .map(|row| context.record(text_values(&context, row)?))
                .collect()
        })
    }
}

/// Repairs written into a PostgreSQL table (see [`crate::sink`]).
///
/// One transaction per batch on a read-write session: the batch's rows
/// are read `FOR UPDATE` (locked until commit, so nobody changes them
/// between the check and the write), then every write that passed runs in
/// one round trip.
pub struct PostgresSink {
    url: String,
    context: ChunkContext,
    statements: crate::sink::Statements,
    statement_timeout: std::time::Duration,
    client: Option<PgClient>,
}

impl PostgresSink {
    /// A sink for `relation`, which must be a table. Connects on first use.
    pub fn new(
        url: impl Into<String>,
        relation: Relation,
        mapping: Mapping,
        statement_timeout: std::time::Duration,
    ) -> Result<PostgresSink, SourceError> {
        let url = url.into();
        let (table, context) = crate::sink::target(&redact_url(&url), relation, mapping.clone())?;
        Ok(PostgresSink {
            context,
            statements: crate::sink::Statements::new(
                crate::sink::Dialect::Postgres,
                &table,
                mapping,
            ),
            url,
            statement_timeout,
            client: None,
        })
    }

    fn err(&self, e: &postgres::Error) -> SourceError {
        if is_connection_error(e) {
            SourceError::Open {
                what: format!("postgres {}", redact_url(&self.url)),
                reason: db_message(e),
            }
        } else {
            SourceError::Write {
                dataset: self.context.dataset.clone(),
                reason: db_message(e),
            }
        }
    }
}

impl crate::sink::Sink for PostgresSink {
    fn apply(
        &mut self,
        writes: &[crate::sink::Write],
        keys: &arbor_record::DatasetKeys,
    ) -> Result<Vec<crate::sink::Outcome>, SourceError> {
        crate::sink::check_batch(&self.context.mapping, writes, &self.context.dataset)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let value_err = |p: crate::sink::LiteralError| SourceError::Value {
            dataset: self.context.dataset.clone(),
            column: "(write)".into(),
            problem: p.to_string(),
        };
        let wanted: Vec<&[Value]> = writes.iter().map(|w| w.key.as_slice()).collect();
        let select = self.statements.select_current(&wanted).map_err(value_err)?;
        if self.client.as_ref().is_none_or(PgClient::is_closed) {
            self.client = Some(open_session(&self.url, self.statement_timeout, false)?);
        }
        let Some(client) = self.client.as_mut() else {
            unreachable!("connected above")
        };
        let result =
            (|| -> Result<Result<Vec<crate::sink::Outcome>, SourceError>, postgres::Error> {
                let mut tx = client.transaction()?;
                let mut found = std::collections::HashMap::new();
                for m in tx.simple_query(&select)? {
                    if let SimpleQueryMessage::Row(row) = m {
                        let values = match text_values(&self.context, &row) {
                            Ok(v) => v,
                            Err(e) => return Ok(Err(e)),
                        };
                        match self.context.record(values) {
                            Ok(r) => {
                                found.insert(arbor_record::tuple_bytes(&r.key), r);
                            }
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                }
                let current: Vec<Option<Record>> = writes
                    .iter()
                    .map(|w| found.remove(&arbor_record::tuple_bytes(&w.key)))
                    .collect();
                let decided = crate::sink::decide(keys, &self.context.mapping, writes, &current);
                let mut script = String::new();
                for ((w, (_, run)), cur) in writes.iter().zip(&decided).zip(&current) {
                    if *run {
                        match self.statements.statement(w, cur.is_some()) {
                            Ok(sql) => {
                                script.push_str(&sql);
                                script.push_str(";\n");
                            }
                            Err(p) => return Ok(Err(value_err(p))),
                        }
                    }
                }
                if !script.is_empty() {
                    tx.batch_execute(&script)?;
                }
                tx.commit()?;
                Ok(Ok(decided.into_iter().map(|(o, _)| o).collect()))
            })();
        match result {
            Ok(inner) => inner,
            Err(e) => {
                let err = self.err(&e);
                if matches!(err, SourceError::Open { .. }) {
                    self.client = None;
                }
                Err(err)
            }
        }
    }

    fn render(&self, write: &crate::sink::Write) -> Result<String, SourceError> {
        self.statements
            .planned_statement(write)
            .map_err(|p| SourceError::Value {
                dataset: self.context.dataset.clone(),
                column: "(write)".into(),
                problem: p.to_string(),
            })
    }
}

/// The mapped values of a simple-query (text) row, select-list order.
fn text_values(
    context: &ChunkContext,
    row: &postgres::SimpleQueryRow,
) -> Result<Vec<Value>, SourceError> {
    let cols = context.mapping.all_columns();
    cols.enumerate()
        .map(|(i, c)| match row.get(i) {
            None => Ok(Value::Null),
            Some(t) => text::parse(c.kind, t).map_err(|p| context.value_error(&c.source, p)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// However the lanes' pieces overflow and shrink, the pieces read
        /// cover every block once, and exactly one is open-ended.
        #[test]
        fn the_lanes_of_a_block_walk_read_every_block_once_and_one_open_ended(
            table_blocks in 0u64..60,
            per_chunk in 1u64..9,
            connections in 1u32..5,
            // Per piece read: whether it overflows, and its bytes.
            luck in proptest::collection::vec((proptest::bool::weighted(0.3), 0u64..64), 200),
        ) {
            use super::{BlockWalk, PieceRead};
            let first = BlockWalk::new(table_blocks, per_chunk, 16, connections);
            let mut lanes: Vec<BlockWalk> = (0..first.lanes).map(|_| first.lane()).collect();
            let mut at: Vec<_> = lanes.iter_mut().map(|l| l.first()).collect();
            let (mut read, mut luck) = (Vec::new(), luck.into_iter().cycle());
            while at.iter().any(Option::is_some) {
                for (lane, cursor) in lanes.iter_mut().zip(at.iter_mut()) {
                    let Some(mut c) = cursor.take() else { continue };
                    let (overflow, bytes) = luck.next().unwrap();
                    if c.read == PieceRead::Whole && overflow {
                        lane.shrink(&mut c);
                        *cursor = Some(c);
                        continue;
                    }
                    if let Some(blocks) = c.piece_blocks() {
                        lane.observe(blocks, bytes, 8);
                    }
                    read.push((c.start, c.piece_end));
                    *cursor = lane.after(&c);
                }
            }
            read.sort_unstable();
            let case = (table_blocks, per_chunk, connections, first.lanes);
            let mut next = 0;
            for (i, &(start, end)) in read.iter().enumerate() {
                proptest::prop_assert_eq!(start, next, "{:?} {:?}", case, read);
                match end {
                    Some(end) => next = end,
                    None => proptest::prop_assert_eq!(i, read.len() - 1, "{:?} {:?}", case, read),
                }
            }
            proptest::prop_assert!(read.last().is_some_and(|l| l.1.is_none()));
            proptest::prop_assert!(first.lanes <= u64::from(connections));
        }
    }

    use super::*;

    #[test]
    fn urls_never_show_passwords() {
        assert_eq!(
            redact_url("postgres://arbor:s3cret@db:5432/x"),
            "postgres://arbor:***@db:5432/x"
        );
        assert_eq!(
            redact_url("host=db user=a password=s3cret"),
            "host=db user=a password=***"
        );
        assert_eq!(redact_url("postgres://arbor@db/x"), "postgres://arbor@db/x");
    }

    #[test]
    fn literals_quote_safely() {
        assert_eq!(literal(&Value::text("o'brien")).unwrap(), "'o''brien'");
        assert_eq!(literal(&Value::Integer(-5)).unwrap(), "-5");
        assert!(literal(&Value::float(1.0)).is_err());
        assert_eq!(table_ident("public.customers"), "\"public\".\"customers\"");
    }
}
