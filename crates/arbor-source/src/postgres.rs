//! PostgreSQL: a table or query streamed with `COPY ... TO STDOUT` in keyset
//! chunks, safe to run beside a production database.
//!
//! * **Keyset chunks**: `COPY (SELECT … WHERE (key) > (last) ORDER BY key
//!   LIMIT n) TO STDOUT`. Each chunk is its own short read-only transaction,
//!   so no snapshot is held for the whole scan (vacuum is never blocked for
//!   long), and a scan can **resume** from the last key it read.
//! * **Resilient**: when the connection breaks mid-scan (a restart, a
//!   failover), the source reconnects with backoff and resumes after the
//!   last key handed out; nothing is read twice or skipped.
//! * **Gentle**: `chunk_rows`, a `max_rows_per_sec` throttle and a
//!   `statement_timeout` bound what each statement costs the server.
//! * **Canonical text**: the session runs with `TimeZone=UTC`, ISO dates,
//!   `extra_float_digits=3` (shortest exact floats) and hex `bytea`, and
//!   values are read through [`crate::text`]; the mapping's kinds are checked
//!   against the column types at start.
//!
//! Key columns must be integer, text or uuid (see [`crate::mapping`]).

use arbor_record::value::format_uuid;
use arbor_record::{Record, Value, ValueKind};
use postgres::types::Type;
use postgres::{Client, NoTls, SimpleQueryMessage};
use tracing::instrument;

use crate::keyset::{self, ChunkContext, ChunkError, Fetched, KeysetReader};
use crate::mapping::Mapping;
use crate::sqlite::Relation;
use crate::{Source, SourceError, text};

pub use crate::keyset::ScanOptions;

/// A dataset in a PostgreSQL database.
pub struct PostgresSource {
    url: String,
    relation: Relation,
    mapping: Mapping,
    options: ScanOptions,
    client: Option<Client>,
}

/// The URL with its password masked, for messages.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name, schema-qualified or not: `public.customers` → `"public"."customers"`.
pub(crate) fn table_ident(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
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

/// Whether a PostgreSQL column type can be read as `kind` without loss.
fn compatible(kind: ValueKind, t: &Type) -> bool {
    let is = |types: &[Type]| types.contains(t);
    match kind {
        ValueKind::Integer => is(&[Type::INT2, Type::INT4, Type::INT8]),
        ValueKind::Bool => is(&[Type::BOOL]),
        ValueKind::Decimal => is(&[Type::NUMERIC, Type::INT2, Type::INT4, Type::INT8]),
        ValueKind::Float => is(&[Type::FLOAT4, Type::FLOAT8]),
        ValueKind::Text => is(&[Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME]),
        ValueKind::Bytes => is(&[Type::BYTEA]),
        ValueKind::Date => is(&[Type::DATE]),
        ValueKind::Timestamp => is(&[Type::TIMESTAMP, Type::TIMESTAMPTZ]),
        ValueKind::Uuid => is(&[Type::UUID]),
        ValueKind::Json => is(&[Type::JSON, Type::JSONB]),
    }
}

/// Undoes the escapes of COPY's text format in one field. Most fields hold
/// no escape: they are borrowed, not copied (a build parses ~9 per row).
fn unescape(field: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
    if !field.contains(&b'\\') {
        return std::str::from_utf8(field)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|_| "value is not UTF-8".to_string());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| "value is not UTF-8".to_string())
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
) -> Result<Client, SourceError> {
    let open_err = |e: &dyn std::fmt::Display| SourceError::Open {
        what: format!("postgres {}", redact_url(url)),
        reason: e.to_string(),
    };
    let mut client = Client::connect(url, NoTls).map_err(|e| open_err(&e))?;
    client
        .batch_execute(&format!(
            "SET application_name = 'arbor'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD';
             SET extra_float_digits = 3; SET bytea_output = 'hex'; SET standard_conforming_strings = on;
             SET default_transaction_read_only = {}; SET statement_timeout = {};",
            if read_only { "on" } else { "off" },
            statement_timeout.as_millis().max(1)
        ))
        .map_err(|e| open_err(&e))?;
    Ok(client)
}

/// A database error's own message, or the driver's.
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

impl PostgresSource {
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
        }
    }

    fn dataset(&self) -> String {
        match &self.relation {
            Relation::Table(t) => format!("{}:{t}", redact_url(&self.url)),
            Relation::Query(_) => format!("{}:(query)", redact_url(&self.url)),
        }
    }

    fn from(&self) -> String {
        match &self.relation {
            Relation::Table(t) => table_ident(t),
            Relation::Query(q) => format!("({q}) AS arbor_q"),
        }
    }

    fn connect(&self) -> Result<Client, SourceError> {
        open_session(&self.url, self.options.statement_timeout, true)
    }

    fn client(&mut self) -> Result<&mut Client, SourceError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.connect()?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn columns_sql(&self) -> String {
        keyset::select_list(&self.mapping, ident)
    }

    fn key_sql(&self) -> String {
        keyset::key_list(&self.mapping, ident)
    }

    fn chunk_query(&self, after: Option<&[Value]>) -> Result<String, SourceError> {
        let filter = match after {
            None => String::new(),
            Some(last) => {
                let lits = last
                    .iter()
                    .map(literal)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|problem| SourceError::Value {
                        dataset: self.dataset(),
                        column: "(key)".into(),
                        problem,
                    })?;
                format!(" WHERE ({}) > ({})", self.key_sql(), lits.join(", "))
            }
        };
        Ok(format!(
            "COPY (SELECT {} FROM {}{filter} ORDER BY {} LIMIT {}) TO STDOUT",
            self.columns_sql(),
            self.from(),
            self.key_sql(),
            self.options.chunk_rows.max(1)
        ))
    }

    /// A record from a row in select-list order (see [`Mapping::record`]).
    fn record(&self, values: Vec<Value>) -> Result<Record, SourceError> {
        self.mapping
            .record(values)
            .map_err(|c| self.value_error(c, "key column is NULL".into()))
    }

    /// The mapped values of a simple-query (text) row.
    fn text_row(&self, row: &postgres::SimpleQueryRow) -> Result<Vec<Value>, SourceError> {
        let cols = self.mapping.key().iter().chain(self.mapping.columns());
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

/// One row of COPY text output into values, select-list order; only the
/// first `take` fields when given (the key of a chunk's last row).
fn copy_fields(
    context: &ChunkContext,
    line: &[u8],
    take: Option<usize>,
) -> Result<Vec<Value>, SourceError> {
    let mapped = context.mapping.key().len() + context.mapping.columns().len();
    let cols = context
        .mapping
        .key()
        .iter()
        .chain(context.mapping.columns());
    let wanted = take.unwrap_or(mapped).min(mapped);
    let mut values = Vec::with_capacity(wanted);
    let mut fields = line.split(|&b| b == b'\t');
    for c in cols.take(wanted) {
        let Some(f) = fields.next() else {
            return Err(SourceError::Read {
                dataset: context.dataset.clone(),
                reason: format!("COPY row has fewer than the {mapped} mapped fields"),
            });
        };
        values.push(if f == b"\\N" {
            Value::Null
        } else {
            let t = unescape(f).map_err(|p| context.value_error(&c.source, p))?;
            text::parse(c.kind, &t).map_err(|p| context.value_error(&c.source, p))?
        });
    }
    if take.is_none() && fields.next().is_some() {
        return Err(SourceError::Read {
            dataset: context.dataset.clone(),
            reason: format!("COPY row has more than the {mapped} mapped fields"),
        });
    }
    Ok(values)
}

/// The lines of a COPY text chunk (each ends in a newline; a field never
/// holds a raw newline, COPY escapes it).
fn copy_lines(raw: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    let body = raw.strip_suffix(b"\n").unwrap_or(raw);
    (!raw.is_empty())
        .then(|| body.split(|&b| b == b'\n'))
        .into_iter()
        .flatten()
}

impl KeysetReader for PostgresSource {
    /// The chunk's COPY text output, whole.
    type Raw = Vec<u8>;

    fn options(&self) -> &ScanOptions {
        &self.options
    }

    fn dataset(&self) -> String {
        PostgresSource::dataset(self)
    }

    fn context(&self) -> ChunkContext {
        ChunkContext {
            mapping: self.mapping.clone(),
            dataset: PostgresSource::dataset(self),
        }
    }

    fn fetch_chunk(&mut self, after: Option<&[Value]>) -> Result<Fetched<Vec<u8>>, ChunkError> {
        let query = self.chunk_query(after)?;
        let dataset = PostgresSource::dataset(self);
        let mut raw = Vec::new();
        {
            let client = self.client()?;
            let mut reader = client.copy_out(query.as_str()).map_err(|e| {
                if is_connection_error(&e) {
                    ChunkError::Connection(e.to_string())
                } else {
                    ChunkError::Fatal(SourceError::Read {
                        dataset: dataset.clone(),
                        reason: db_message(&e),
                    })
                }
            })?;
            // The driver reports a COPY stream cut short as an IO error.
            std::io::Read::read_to_end(&mut reader, &mut raw)
                .map_err(|e| ChunkError::Connection(format!("COPY interrupted: {e}")))?;
        }
        let rows = raw.iter().filter(|&&b| b == b'\n').count() as u64;
        let last_key = match copy_lines(&raw).next_back() {
            Some(line) if rows > 0 => Some(copy_fields(
                &self.context(),
                line,
                Some(self.mapping.key().len()),
            )?),
            _ => None,
        };
        Ok(Fetched {
            raw,
            rows,
            last_key,
        })
    }

    fn parse_chunk(
        context: &ChunkContext,
        raw: Vec<u8>,
        parallel: bool,
    ) -> Result<Vec<Record>, SourceError> {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let record = |line: &[u8]| context.record(copy_fields(context, line, None)?);
        if parallel {
            use rayon::prelude::*;
            let lines: Vec<&[u8]> = copy_lines(&raw).collect();
            lines.par_iter().map(|l| record(l)).collect()
        } else {
            copy_lines(&raw).map(record).collect()
        }
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
        let probe = format!("SELECT {} FROM {} LIMIT 0", self.columns_sql(), self.from());
        let dataset = self.dataset();
        let client = self.client()?;
        let stmt = client.prepare(&probe).map_err(|e| SourceError::Schema {
            dataset: dataset.clone(),
            problem: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        })?;
        let cols: Vec<_> = self
            .mapping
            .key()
            .iter()
            .chain(self.mapping.columns())
            .collect();
        for (c, col) in cols.iter().zip(stmt.columns()) {
            if !compatible(c.kind, col.type_()) {
                return Err(SourceError::Schema {
                    dataset,
                    problem: format!(
                        "column {:?} is {} in PostgreSQL and cannot be read as {} (mapped to {:?})",
                        c.source,
                        col.type_().name(),
                        c.kind,
                        c.canonical()
                    ),
                });
            }
        }
        Ok(())
    }

    #[instrument(skip_all, fields(dataset = %self.dataset()))]
    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        self.check()?;
        keyset::scan_in_chunks(self, visit)
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
        let dataset = self.dataset();
        let rows = self
            .client()?
            .simple_query(&sql)
            .map_err(|e| SourceError::Read {
                dataset,
                reason: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            })?;
        // The watermark column comes after the mapped ones.
        let mark_at = self.mapping.key().len() + self.mapping.columns().len();
        let mut last = None;
        for m in rows {
            if let SimpleQueryMessage::Row(row) = m {
                if let Some(mark) = row.get(mark_at) {
                    last = Some(mark.to_owned());
                }
                visit(self.record(self.text_row(&row)?)?)?;
            }
        }
        Ok(last.or_else(|| since.map(str::to_owned)))
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        let context = self.context();
        keyset::fetch_in_batches(keys, |batch| {
            let cond =
                crate::sink::keys_condition(crate::sink::Dialect::Postgres, &self.mapping, batch)
                    .map_err(|problem| self.value_error("(key)", problem))?;
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond}",
                self.columns_sql(),
                self.from()
            );
            let dataset = self.dataset();
            let rows = self
                .client()?
                .simple_query(&sql)
                .map_err(|e| SourceError::Read {
                    dataset,
                    reason: db_message(&e),
                })?;
            rows.iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                })
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
    client: Option<Client>,
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
        let table = crate::sink::target_table(relation, &redact_url(&url))?;
        Ok(PostgresSink {
            context: ChunkContext {
                mapping: mapping.clone(),
                dataset: format!("{}:{table}", redact_url(&url)),
            },
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
        let value_err = |p: String| SourceError::Value {
            dataset: self.context.dataset.clone(),
            column: "(write)".into(),
            problem: p,
        };
        let wanted: Vec<&[Value]> = writes.iter().map(|w| w.key.as_slice()).collect();
        let select = self.statements.select_current(&wanted).map_err(value_err)?;
        if self.client.as_ref().is_none_or(Client::is_closed) {
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
                let decided = crate::sink::decide(keys, writes, &current);
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
                problem: p,
            })
    }
}

/// The mapped values of a simple-query (text) row, select-list order.
fn text_values(
    context: &ChunkContext,
    row: &postgres::SimpleQueryRow,
) -> Result<Vec<Value>, SourceError> {
    let cols = context
        .mapping
        .key()
        .iter()
        .chain(context.mapping.columns());
    cols.enumerate()
        .map(|(i, c)| match row.get(i) {
            None => Ok(Value::Null),
            Some(t) => text::parse(c.kind, t).map_err(|p| context.value_error(&c.source, p)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_are_undone() {
        assert_eq!(unescape(b"a\\tb\\nc\\\\d").unwrap(), "a\tb\nc\\d");
        assert_eq!(unescape(b"\\101\\x42").unwrap(), "AB");
        assert_eq!(unescape(b"\\\\x00ff").unwrap(), "\\x00ff");
        assert_eq!(unescape(b"plain").unwrap(), "plain");
    }

    #[test]
    fn copy_chunks_split_into_lines_from_both_ends() {
        assert_eq!(copy_lines(b"").count(), 0);
        assert_eq!(copy_lines(b"\n").collect::<Vec<_>>(), vec![&b""[..]]);
        let raw = b"1\ta\n2\tb\n";
        assert_eq!(copy_lines(raw).count(), 2);
        assert_eq!(copy_lines(raw).next_back(), Some(&b"2\tb"[..]));
    }

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
