//! MySQL and MariaDB: a table or query streamed in keyset chunks over the
//! binary protocol, with the same guarantees as [`crate::postgres`].
//!
//! * **Keyset chunks**: `SELECT … WHERE (key) > (?) ORDER BY key LIMIT n`,
//!   each an autocommit statement in a read-only session, streamed row by
//!   row as `mysql --quick` does, so no snapshot outlives a chunk.
//! * **Resilient**: a lost connection is re-established with backoff and the
//!   scan resumes after the last key handed out; each chunk is read whole
//!   before any of it is handed out.
//! * **Exact values**: the binary protocol delivers integers, doubles and
//!   dates natively (no float formatting on the server); the session uses
//!   `time_zone = '+00:00'` so TIMESTAMP columns come out in UTC. FLOAT
//!   (single precision) becomes its shortest decimal form, as PostgreSQL
//!   prints `float4`, so the same value hashes the same in both.
//! * `tinyint(1)` reads as bool; uuids may be `char(36)` or `binary(16)`.

use arbor_record::value::{Date, Decimal, Timestamp, parse_uuid};
use arbor_record::{Record, Value, ValueKind};
use mysql::consts::ColumnType as T;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use tracing::{instrument, warn};

use crate::keyset::{
    self, ChunkContext, ChunkError, ChunkStats, Fetched, KeysetReader, RowBudget, ScanOptions,
};
use crate::mapping::Mapping;
use crate::postgres::redact_url;
use crate::relation::Relation;
use crate::{Source, SourceError, text};

/// The binary character set id: BLOB and BINARY columns carry it.
const BINARY_CHARSET: u16 = 63;

/// A dataset in a MySQL or MariaDB database.
pub struct MysqlSource {
    url: String,
    relation: Relation,
    mapping: Mapping,
    options: ScanOptions,
    conn: Option<Conn>,
    /// Sizes chunks to `chunk_bytes` from the rows read so far.
    budget: RowBudget,
    /// The chunks read.
    stats: ChunkStats,
    /// Per key column, whether it is binary (`BINARY(16)`), as
    /// [`Source::check`] found it: lookups match its stored form.
    binary_keys: Vec<bool>,
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Whether a column can be read as `kind` without loss.
fn compatible(kind: ValueKind, c: &mysql::Column) -> bool {
    let t = c.column_type();
    let binary = c.character_set() == BINARY_CHARSET;
    let stringy = matches!(
        t,
        T::MYSQL_TYPE_VARCHAR
            | T::MYSQL_TYPE_VAR_STRING
            | T::MYSQL_TYPE_STRING
            | T::MYSQL_TYPE_TINY_BLOB
            | T::MYSQL_TYPE_MEDIUM_BLOB
            | T::MYSQL_TYPE_LONG_BLOB
            | T::MYSQL_TYPE_BLOB
    );
    let integer = matches!(
        t,
        T::MYSQL_TYPE_TINY
            | T::MYSQL_TYPE_SHORT
            | T::MYSQL_TYPE_INT24
            | T::MYSQL_TYPE_LONG
            | T::MYSQL_TYPE_LONGLONG
    );
    match kind {
        ValueKind::Integer => integer,
        ValueKind::Bool => t == T::MYSQL_TYPE_TINY,
        ValueKind::Decimal => {
            integer || matches!(t, T::MYSQL_TYPE_NEWDECIMAL | T::MYSQL_TYPE_DECIMAL)
        }
        ValueKind::Float => matches!(t, T::MYSQL_TYPE_FLOAT | T::MYSQL_TYPE_DOUBLE),
        ValueKind::Text => stringy && !binary,
        ValueKind::Bytes => stringy && binary,
        ValueKind::Date => matches!(t, T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE),
        ValueKind::Timestamp => matches!(
            t,
            T::MYSQL_TYPE_DATETIME
                | T::MYSQL_TYPE_DATETIME2
                | T::MYSQL_TYPE_TIMESTAMP
                | T::MYSQL_TYPE_TIMESTAMP2
        ),
        ValueKind::Uuid => stringy,
        ValueKind::Json => t == T::MYSQL_TYPE_JSON || (stringy && !binary),
    }
}

/// Reads one binary-protocol value as `kind`.
pub fn convert(v: mysql::Value, kind: ValueKind) -> Result<Value, String> {
    use mysql::Value as M;
    let utf8 = |b: Vec<u8>| String::from_utf8(b).map_err(|_| "value is not UTF-8".to_string());
    Ok(match (kind, v) {
        (_, M::NULL) => Value::Null,
        (ValueKind::Integer, M::Int(i)) => Value::Integer(i.into()),
        (ValueKind::Integer, M::UInt(u)) => Value::Integer(u.into()),
        (ValueKind::Bool, M::Int(0)) => Value::Bool(false),
        (ValueKind::Bool, M::Int(1)) => Value::Bool(true),
        (ValueKind::Bool, M::Int(i)) => return Err(format!("expected bool (0 or 1), found {i}")),
        (ValueKind::Decimal, M::Int(i)) => {
            Value::Decimal(Decimal::parse(&i.to_string()).map_err(|e| e.to_string())?)
        }
        (ValueKind::Decimal, M::UInt(u)) => {
            Value::Decimal(Decimal::parse(&u.to_string()).map_err(|e| e.to_string())?)
        }
        (ValueKind::Float, M::Double(x)) => Value::float(x),
        // Single precision: its shortest decimal form, as PostgreSQL prints float4.
        (ValueKind::Float, M::Float(x)) => {
            Value::float(format!("{x}").parse::<f64>().map_err(|e| e.to_string())?)
        }
        (ValueKind::Bytes, M::Bytes(b)) => Value::Bytes(b),
        (ValueKind::Uuid, M::Bytes(b)) if b.len() == 16 => {
            Value::Uuid(b.try_into().map_err(|_| "uuid of 16 bytes".to_string())?)
        }
        (ValueKind::Uuid, M::Bytes(b)) => {
            Value::Uuid(parse_uuid(&utf8(b)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Date, M::Date(y, m, d, 0, 0, 0, 0)) => Value::Date(
            Date::from_ymd(i32::from(y), u32::from(m), u32::from(d)).map_err(|e| e.to_string())?,
        ),
        (ValueKind::Timestamp, M::Date(y, mo, d, h, mi, s, us)) => {
            let date = Date::from_ymd(i32::from(y), u32::from(mo), u32::from(d))
                .map_err(|e| e.to_string())?;
            let secs = i64::from(date.0) * 86_400
                + i64::from(h) * 3600
                + i64::from(mi) * 60
                + i64::from(s);
            Value::Timestamp(Timestamp(secs * 1_000_000 + i64::from(us)))
        }
        (kind, M::Bytes(b)) => text::parse(kind, &utf8(b)?)?,
        (kind, other) => return Err(format!("expected {kind}, found {other:?}")),
    })
}

/// Repair statements sent together (one multi-statement query).
const STATEMENTS_PER_ROUND_TRIP: usize = 200;

/// Opens a session in UTC (TIMESTAMP columns read and written as UTC),
/// with a statement timeout under the name this server knows; `read_only`
/// for scans, not for repairs.
fn open_session(
    url: &str,
    statement_timeout: std::time::Duration,
    read_only: bool,
) -> Result<Conn, SourceError> {
    let open_err = |e: &dyn std::fmt::Display| SourceError::Open {
        what: format!("mysql {}", redact_url(url)),
        reason: e.to_string(),
    };
    let opts = Opts::from_url(url).map_err(|e| open_err(&e))?;
    let mut conn = Conn::new(opts).map_err(|e| open_err(&e))?;
    conn.query_drop("SET SESSION time_zone = '+00:00'")
        .map_err(|e| open_err(&e))?;
    if read_only {
        conn.query_drop("SET SESSION TRANSACTION READ ONLY")
            .map_err(|e| open_err(&e))?;
    } else {
        // Repairs write exactly or fail: without strict mode a NULL or an
        // over-long value in an UPDATE becomes '' or a truncated value and
        // a warning.
        conn.query_drop(
            "SET SESSION sql_mode = TRIM(BOTH ',' FROM CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'))",
        )
        .map_err(|e| open_err(&e))?;
    }
    // MariaDB and MySQL name the statement timeout differently; set
    // whichever this server knows.
    let secs = statement_timeout.as_secs().max(1);
    if conn
        .query_drop(format!("SET SESSION max_statement_time = {secs}"))
        .is_err()
    {
        let _ = conn.query_drop(format!("SET SESSION max_execution_time = {}", secs * 1000));
    }
    Ok(conn)
}

fn is_connection_error(e: &mysql::Error) -> bool {
    // A write to a socket the server closed (a restart) comes back as a
    // codec error around the broken pipe.
    matches!(
        e,
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) | mysql::Error::DriverError(_)
    ) || matches!(e, mysql::Error::MySqlError(m) if matches!(m.code, 1053 | 2006 | 2013 | 1927))
}

impl MysqlSource {
    /// A source that connects on first use.
    pub fn new(
        url: impl Into<String>,
        relation: Relation,
        mapping: Mapping,
        options: ScanOptions,
    ) -> MysqlSource {
        MysqlSource {
            url: url.into(),
            relation,
            mapping,
            options,
            conn: None,
            budget: RowBudget::of_chunks(&options),
            stats: ChunkStats::default(),
            binary_keys: Vec::new(),
        }
    }

    /// What this source's scans held (see [`ChunkStats`]).
    pub fn chunk_stats(&self) -> &ChunkStats {
        &self.stats
    }

    fn dataset(&self) -> String {
        self.relation.dataset_name(&redact_url(&self.url))
    }

    fn from(&self) -> String {
        self.relation.from_item(ident)
    }

    fn columns_sql(&self) -> String {
        keyset::select_list(&self.mapping, ident)
    }

    fn key_sql(&self) -> String {
        keyset::key_list(&self.mapping, ident)
    }

    fn connect(&self) -> Result<Conn, SourceError> {
        open_session(&self.url, self.options.statement_timeout, true)
    }

    fn conn(&mut self) -> Result<&mut Conn, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A failed read. A connection the error left unusable (the server
    /// restarted, the link broke) is dropped, so the next call connects
    /// again instead of failing on the dead socket for ever.
    fn read_failed(&mut self, e: mysql::Error) -> SourceError {
        if is_connection_error(&e) {
            self.conn = None;
        }
        SourceError::Read {
            dataset: self.dataset(),
            reason: e.to_string(),
        }
    }

    fn value_error(&self, column: &str, problem: String) -> SourceError {
        SourceError::Value {
            dataset: self.dataset(),
            column: column.to_owned(),
            problem,
        }
    }

    fn record(&self, row: Vec<mysql::Value>) -> Result<Record, SourceError> {
        let cols: Vec<_> = self.mapping.all_columns().collect();
        let mut values = Vec::with_capacity(cols.len());
        for (v, c) in row.into_iter().zip(&cols) {
            values.push(convert(v, c.kind).map_err(|p| self.value_error(&c.source, p))?);
        }
        self.mapping
            .record(values)
            .map_err(|c| self.value_error(c, crate::NULL_KEY.into()))
    }
}

/// A condition matching these keys however the table stores them: a uuid
/// key matches its 16 bytes in a binary column (`BINARY(16)`), and its text
/// with and without dashes in lower and upper case (`CHAR(36)`, `CHAR(32)`,
/// under a binary collation too). A column holds only one of these forms,
/// so the others match nothing. `binary` says, per key column, whether it
/// is binary (raw bytes compared with a text column are an error).
fn stored_keys_condition(
    mapping: &Mapping,
    binary: &[bool],
    keys: &[&[Value]],
) -> Result<String, crate::sink::LiteralError> {
    use crate::sink::Dialect;
    crate::sink::keys_condition_with(Dialect::Mysql, mapping, keys, |column, v| {
        let Value::Uuid(u) = v else {
            return Ok(vec![Dialect::Mysql.literal(v)?]);
        };
        let dashed = arbor_record::value::format_uuid(u);
        let plain = dashed.replace('-', "");
        let mut forms = vec![
            format!("'{dashed}'"),
            format!("'{}'", dashed.to_uppercase()),
            format!("'{plain}'"),
            format!("'{}'", plain.to_uppercase()),
        ];
        if binary.get(column) == Some(&true) {
            forms.push(format!("X'{plain}'"));
        }
        Ok(forms)
    })
}

/// Bytes a value read off the wire holds.
fn value_bytes(v: &mysql::Value) -> u64 {
    let heap = match v {
        mysql::Value::Bytes(b) => b.len(),
        _ => 0,
    };
    (std::mem::size_of::<mysql::Value>() + heap) as u64
}

/// A fetched row (select-list order) into a record.
fn row_record(context: &ChunkContext, row: Vec<mysql::Value>) -> Result<Record, SourceError> {
    let cols = context.mapping.all_columns();
    let key_len = context.mapping.key().len();
    let mut values = Vec::with_capacity(row.len());
    for (i, (v, c)) in row.into_iter().zip(cols).enumerate() {
        let value = convert(v, c.kind).map_err(|p| {
            let key = (i >= key_len).then(|| &values[..key_len]);
            context.in_row(context.value_error(&c.source, p), key)
        })?;
        values.push(value);
    }
    context.record(values)
}

impl MysqlSource {
    /// A fetched chunk's rows as records, in parallel if `parallel`.
    fn parse_chunk(
        context: &ChunkContext,
        raw: Vec<Vec<mysql::Value>>,
        parallel: bool,
    ) -> Result<Vec<Record>, SourceError> {
        if parallel {
            use rayon::prelude::*;
            raw.into_par_iter()
                .map(|r| row_record(context, r))
                .collect()
        } else {
            raw.into_iter().map(|r| row_record(context, r)).collect()
        }
    }

    /// What parsing a chunk needs.
    fn context(&self) -> ChunkContext {
        ChunkContext {
            mapping: self.mapping.clone(),
            dataset: MysqlSource::dataset(self),
        }
    }
}

impl KeysetReader for MysqlSource {
    /// The chunk's rows, values as the binary protocol sent them.
    type Raw = Vec<Vec<mysql::Value>>;
    /// The key of the last row read, as the server sent it: the next
    /// chunk's bound is the stored value in the column's own type and
    /// collation (an upper-case uuid in CHAR(36), BINARY(16), CHAR(32), an
    /// unsigned 64-bit integer), never its canonical form, which may sort
    /// elsewhere.
    type Cursor = Vec<mysql::Value>;

    fn options(&self) -> &ScanOptions {
        &self.options
    }

    fn dataset(&self) -> String {
        MysqlSource::dataset(self)
    }

    fn fetch_chunk(
        &mut self,
        after: Option<&Vec<mysql::Value>>,
    ) -> Result<Fetched<Vec<Vec<mysql::Value>>, Vec<mysql::Value>>, ChunkError> {
        let filter = match after {
            None => String::new(),
            Some(last) => {
                let marks = vec!["?"; last.len()].join(", ");
                format!(" WHERE ({}) > ({marks})", self.key_sql())
            }
        };
        let params = after.cloned().unwrap_or_default();
        let limit = self.budget.rows();
        let sql = format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
            self.columns_sql(),
            self.from(),
            self.key_sql(),
        );
        let dataset = MysqlSource::dataset(self);
        let classify = |e: mysql::Error| {
            if is_connection_error(&e) {
                ChunkError::Connection(e.to_string())
            } else {
                ChunkError::Fatal(SourceError::Read {
                    dataset: dataset.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let budget = self.budget;
        let conn = self.conn()?;
        let result = conn.exec_iter(sql.as_str(), params).map_err(classify)?;
        let (mut rows, mut bytes, mut cut) = (Vec::new(), 0u64, false);
        for row in result {
            let row = row.map_err(classify)?.unwrap();
            bytes += row.iter().map(value_bytes).sum::<u64>();
            rows.push(row);
            if budget.full(bytes) {
                // Dropping the result reads the rest of it off the
                // connection without keeping it.
                cut = true;
                break;
            }
        }
        let n = rows.len() as u64;
        self.budget.observe(n, bytes);
        self.stats.note(bytes);
        let keys = self.mapping.key().len();
        let last_key = rows.last().map(|row| row[..keys.min(row.len())].to_vec());
        if let (Some(last), Some(after)) = (&last_key, after) {
            // `>` on the stored values always moves on; a server that
            // answers otherwise would loop forever.
            if last == after {
                return Err(ChunkError::Fatal(SourceError::Read {
                    dataset: MysqlSource::dataset(self),
                    reason: format!(
                        "the keyset walk made no progress: the chunk after key {after:?} ends at \
                         the same key (the key columns' order is not a total order?)"
                    ),
                }));
            }
        }
        Ok(Fetched::keyset(rows, n, limit, cut, last_key))
    }

    fn connect_again(&mut self) -> Result<(), SourceError> {
        self.conn = None;
        self.conn = Some(self.connect()?);
        Ok(())
    }
}

impl Source for MysqlSource {
    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn check(&mut self) -> Result<(), SourceError> {
        let probe = format!("SELECT {} FROM {} LIMIT 0", self.columns_sql(), self.from());
        let dataset = self.dataset();
        let stmt = match self.conn()?.prep(&probe) {
            Ok(stmt) => stmt,
            // A lost connection says nothing of the schema: a read error,
            // retried, not a reason to stop.
            Err(e) if is_connection_error(&e) => return Err(self.read_failed(e)),
            Err(e) => {
                return Err(SourceError::Schema {
                    dataset,
                    problem: e.to_string(),
                });
            }
        };
        let cols: Vec<_> = self.mapping.all_columns().collect();
        for (c, col) in cols.iter().zip(stmt.columns().iter()) {
            if !compatible(c.kind, col) {
                let found = format!(
                    "{:?}{}",
                    col.column_type(),
                    if col.character_set() == BINARY_CHARSET {
                        " (binary)"
                    } else {
                        ""
                    }
                );
                return Err(keyset::unreadable_column(dataset, "MySQL", c, &found));
            }
        }
        self.binary_keys = stmt
            .columns()
            .iter()
            .take(self.mapping.key().len())
            .map(|col| col.character_set() == BINARY_CHARSET)
            .collect();
        Ok(())
    }

    #[instrument(skip_all, fields(dataset = %self.dataset()))]
    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        self.check()?;
        let context = self.context();
        keyset::scan_records(
            self,
            &|raw, parallel| MysqlSource::parse_chunk(&context, raw, parallel),
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
        let filter = if since.is_some() {
            format!(" WHERE {} >= ?", ident(column))
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {}, CAST({} AS CHAR) FROM {}{filter} ORDER BY {}",
            self.columns_sql(),
            ident(column),
            self.from(),
            ident(column)
        );
        let params: Vec<mysql::Value> = since
            .map(|s| mysql::Value::Bytes(s.as_bytes().to_vec()))
            .into_iter()
            .collect();
        let rows: Vec<mysql::Row> = match self.conn()?.exec(sql.as_str(), params) {
            Ok(rows) => rows,
            Err(e) => return Err(self.read_failed(e)),
        };
        let mut last = None;
        for row in rows {
            let mut values = row.unwrap();
            let mark = values.pop();
            if let Some(mysql::Value::Bytes(b)) = mark {
                last = Some(String::from_utf8_lossy(&b).into_owned());
            }
            visit(self.record(values)?)?;
        }
        Ok(last.or_else(|| since.map(str::to_owned)))
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        if self.mapping.normalises_keys() {
            return crate::fetch_by_scan(self, keys);
        }
        if self.binary_keys.is_empty() {
            self.check()?;
        }
        keyset::fetch_in_batches(keys, |batch| {
            let cond = stored_keys_condition(&self.mapping, &self.binary_keys, batch)
                .map_err(|p| self.value_error("(key)", p.to_string()))?;
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond}",
                self.columns_sql(),
                self.from()
            );
            let rows: Vec<mysql::Row> = match self.conn()?.exec(sql.as_str(), ()) {
                Ok(rows) => rows,
                Err(e) => return Err(self.read_failed(e)),
            };
            rows.into_iter()
                .map(|row| self.record(row.unwrap()))
                .collect()
        })
    }
}

/// Repairs written into a MySQL/MariaDB table (see [`crate::sink`]).
///
/// One transaction per batch on a read-write session (UTC): the batch's
/// rows are read `FOR UPDATE` over the binary protocol, then every write
/// that passed its check runs before the commit.
pub struct MysqlSink {
    url: String,
    context: ChunkContext,
    statements: Option<crate::sink::Statements>,
    table: String,
    statement_timeout: std::time::Duration,
    conn: Option<Conn>,
    /// The server's `max_allowed_packet`: no round trip may be longer.
    packet: usize,
}

/// Bytes of a round trip kept free of statements under `max_allowed_packet`
/// (the packet header, the separators).
const PACKET_SLACK: usize = 1024;

impl MysqlSink {
    /// A sink for `relation`, which must be a table. Connects on first use.
    pub fn new(
        url: impl Into<String>,
        relation: Relation,
        mapping: Mapping,
        statement_timeout: std::time::Duration,
    ) -> Result<MysqlSink, SourceError> {
        let url = url.into();
        let (table, context) = crate::sink::target(&redact_url(&url), relation, mapping)?;
        Ok(MysqlSink {
            context,
            url,
            statements: None,
            table,
            statement_timeout,
            conn: None,
            packet: 0,
        })
    }

    /// Connects, and learns which uuid columns are `binary(16)` (once).
    fn ready(&mut self) -> Result<(), SourceError> {
        if self.conn.is_none() {
            let mut conn = open_session(&self.url, self.statement_timeout, false)?;
            let packet: Option<u64> = conn
                .query_first("SELECT @@max_allowed_packet")
                .map_err(|e| mysql_write_error(&self.url, &self.context.dataset, e))?;
            self.packet = packet.unwrap_or(0) as usize;
            self.conn = Some(conn);
        }
        if self.statements.is_none() {
            let mapping = &self.context.mapping;
            let probe = format!(
                "SELECT {} FROM {} LIMIT 0",
                keyset::select_list(mapping, ident),
                crate::sink::Dialect::Mysql.table(&self.table)
            );
            let Some(conn) = self.conn.as_mut() else {
                unreachable!("connected above")
            };
            let stmt = conn.prep(&probe).map_err(|e| SourceError::Schema {
                dataset: self.context.dataset.clone(),
                problem: e.to_string(),
            })?;
            let binary: Vec<bool> = mapping
                .all_columns()
                .zip(stmt.columns().iter())
                .map(|(c, col)| c.kind == ValueKind::Uuid && col.character_set() == BINARY_CHARSET)
                .collect();
            self.statements = Some(
                crate::sink::Statements::new(
                    crate::sink::Dialect::Mysql,
                    &self.table,
                    mapping.clone(),
                )
                .with_binary_uuids(binary),
            );
        }
        Ok(())
    }

    fn value_err(&self, problem: crate::sink::LiteralError) -> SourceError {
        SourceError::Value {
            dataset: self.context.dataset.clone(),
            column: "(write)".into(),
            problem: problem.to_string(),
        }
    }

    fn run_batch(
        &mut self,
        writes: &[crate::sink::Write],
        keys: &arbor_record::DatasetKeys,
    ) -> Result<Vec<crate::sink::Outcome>, SourceError> {
        self.ready()?;
        let (url, dataset) = (self.url.clone(), self.context.dataset.clone());
        let write_err = |e: mysql::Error| mysql_write_error(&url, &dataset, e);
        let value_err = |problem: crate::sink::LiteralError| SourceError::Value {
            dataset: dataset.clone(),
            column: "(write)".into(),
            problem: problem.to_string(),
        };
        let (Some(conn), Some(statements)) = (self.conn.as_mut(), self.statements.as_ref()) else {
            unreachable!("ready above")
        };
        let wanted: Vec<&[Value]> = writes.iter().map(|w| w.key.as_slice()).collect();
        let select = statements.select_current(&wanted).map_err(value_err)?;
        let mut tx = match conn.start_transaction(mysql::TxOpts::default()) {
            Ok(tx) => tx,
            Err(e) => return Err(write_err(e)),
        };
        let rows: Vec<mysql::Row> = match tx.exec(select.as_str(), ()) {
            Ok(r) => r,
            Err(e) => return Err(write_err(e)),
        };
        let mut found = std::collections::HashMap::new();
        for row in rows {
            let r = row_record(&self.context, row.unwrap())?;
            found.insert(arbor_record::tuple_bytes(&r.key), r);
        }
        let current: Vec<Option<Record>> = writes
            .iter()
            .map(|w| found.remove(&arbor_record::tuple_bytes(&w.key)))
            .collect();
        let decided = crate::sink::decide(keys, &self.context.mapping, writes, &current);
        let mut script = Vec::new();
        let mut script_keys = Vec::new();
        for ((w, (_, run)), cur) in writes.iter().zip(&decided).zip(&current) {
            if *run {
                script.push(statements.statement(w, cur.is_some()).map_err(value_err)?);
                script_keys.push(w.key.as_slice());
            }
        }
        // A few round trips per batch, not one per statement, each within
        // the server's packet limit; every statement's result is read, so an
        // error anywhere fails the batch.
        let limit = match self.packet {
            0 => usize::MAX,
            packet => packet.saturating_sub(PACKET_SLACK),
        };
        let shown = self.context.mapping.keys_shown();
        if let Some(i) = script.iter().position(|st| st.len() > limit) {
            let row = if shown {
                format!(
                    ", row with key {}",
                    arbor_record::display_tuple(script_keys[i])
                )
            } else {
                String::new()
            };
            return Err(SourceError::Write {
                dataset: format!("{}{row}", self.context.dataset),
                reason: format!(
                    "the row's statement is {} bytes; the server's max_allowed_packet is {} bytes",
                    script[i].len(),
                    self.packet
                ),
            });
        }
        let groups = round_trips(&script, STATEMENTS_PER_ROUND_TRIP, limit);
        for (group, keys) in groups
            .iter()
            .map(|r| (&script[r.clone()], &script_keys[r.clone()]))
        {
            if let Err((at, e)) = run_all(&mut tx, group) {
                // Dropping the transaction rolls it back.
                let e = write_err(e);
                return Err(match (e, keys.get(at)) {
                    (SourceError::Write { dataset, reason }, Some(key)) if shown => {
                        SourceError::Write {
                            dataset: format!(
                                "{dataset}, row with key {}",
                                arbor_record::display_tuple(key)
                            ),
                            reason,
                        }
                    }
                    (e, _) => e,
                });
            }
        }
        if let Err(e) = tx.commit() {
            return Err(write_err(e));
        }
        Ok(decided.into_iter().map(|(o, _)| o).collect())
    }
}

impl crate::sink::Sink for MysqlSink {
    fn apply(
        &mut self,
        writes: &[crate::sink::Write],
        keys: &arbor_record::DatasetKeys,
    ) -> Result<Vec<crate::sink::Outcome>, SourceError> {
        crate::sink::check_batch(&self.context.mapping, writes, &self.context.dataset)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.run_batch(writes, keys);
        if matches!(result, Err(SourceError::Open { .. })) {
            self.conn = None;
        }
        result
    }

    fn render(&self, write: &crate::sink::Write) -> Result<String, SourceError> {
        let plain = crate::sink::Statements::new(
            crate::sink::Dialect::Mysql,
            &self.table,
            self.context.mapping.clone(),
        );
        self.statements
            .as_ref()
            .unwrap_or(&plain)
            .planned_statement(write)
            .map_err(|p| self.value_err(p))
    }
}

/// Splits statements into round trips of at most `max` statements and
/// `bytes` bytes (joined by `;\n`); each statement fits alone.
fn round_trips(statements: &[String], max: usize, bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, st) in statements.iter().enumerate() {
        let len = st.len() + 2;
        if i > start && (i - start >= max || size + len > bytes) {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < statements.len() {
        out.push(start..statements.len());
    }
    out
}

/// Runs `statements` in one multi-statement round trip and reads every
/// result: `query_drop` reports only the first statement's error, and the
/// server stops at the first failing one, so a later error would otherwise
/// leave the statements before it to be committed. Returns the index of the
/// statement that failed.
fn run_all(
    tx: &mut mysql::Transaction<'_>,
    statements: &[String],
) -> Result<(), (usize, mysql::Error)> {
    let mut result = tx.query_iter(statements.join(";\n")).map_err(|e| (0, e))?;
    let mut at = 0;
    while let Some(set) = result.iter() {
        for row in set {
            row.map_err(|e| (at, e))?;
        }
        at += 1;
    }
    if at != statements.len() {
        return Err((
            at,
            mysql::Error::DriverError(mysql::DriverError::UnexpectedPacket),
        ));
    }
    Ok(())
}

/// A failed repair statement: a lost connection (retry) or a refusal.
fn mysql_write_error(url: &str, dataset: &str, e: mysql::Error) -> SourceError {
    if is_connection_error(&e) {
        SourceError::Open {
            what: format!("mysql {}", redact_url(url)),
            reason: e.to_string(),
        }
    } else {
        SourceError::Write {
            dataset: dataset.to_owned(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_within_the_packet_and_the_count() {
        let st = |n: usize| "x".repeat(n);
        let script = vec![st(10), st(10), st(30), st(5), st(5), st(5)];
        // 12 bytes a statement with its separator, 32 for the long one.
        assert_eq!(round_trips(&script, 10, 24), vec![0..2, 2..3, 3..6]);
        assert_eq!(round_trips(&script, 2, 1000), vec![0..2, 2..4, 4..6]);
        assert!(round_trips(&[], 2, 1000).is_empty());
    }
}
