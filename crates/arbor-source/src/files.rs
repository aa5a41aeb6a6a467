//! CSV and JSON Lines exports: one file, or every `.csv` / `.jsonl` file of
//! a directory in name order, with column types declared by the mapping.
//!
//! * **CSV**: the first row names the columns. A field equal to the null
//!   marker (default `\N`, as PostgreSQL's COPY writes) is NULL; anything
//!   else, the empty field included, is text read through [`crate::text`].
//! * **JSONL**: one object per line, columns by key. JSON `null` or a
//!   missing key is NULL; strings are read through [`crate::text`]; numbers
//!   and booleans through their JSON text (write exact decimals as strings);
//!   objects and arrays are JSON values.
//!
//! Files are read-only and streamed. A file source has no index on its key,
//! so [`Source::fetch`] scans: fine for column digests of a few keys.
//!
//! **A file that changes while it is read is never taken for whole.** Each
//! file's size, modification time and inode are noted before it is read
//! and compared after the whole scan, and the directory's list of files
//! too; a file whose last line has no newline is refused before it is read
//! (a writer may be half way through that line). Either fails the scan
//! with an error naming the file, so a build fails (and is retried) and a
//! rescan removes nothing. Exports should be written under another name
//! and renamed into place, which is atomic.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arbor_record::{CanonicalJson, Record, Value, ValueKind};

use crate::mapping::Mapping;
use crate::{Source, SourceError, text};

/// The format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The file name extension of this format.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// What identifies a file's content between two looks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// What a scan says of a file that changed while it was read.
const CHANGED_WHILE_READ: &str = "changed while it was read: a file being written is never \
     indexed (the scan is retried later); write exports under another name and rename them \
     into place";

/// A dataset held in files.
pub struct FileSource {
    path: PathBuf,
    format: Format,
    mapping: Mapping,
    null_marker: String,
}

impl FileSource {
    /// A source over `path` (a file, or a directory of `.csv`/`.jsonl` files).
    pub fn new(
        path: impl Into<PathBuf>,
        format: Format,
        mapping: Mapping,
        null_marker: Option<String>,
    ) -> FileSource {
        FileSource {
            path: path.into(),
            format,
            mapping,
            null_marker: null_marker.unwrap_or_else(|| "\\N".to_owned()),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        let open_err = |e: std::io::Error| SourceError::Open {
            what: format!("{} {}", self.format.extension(), self.path.display()),
            reason: e.to_string(),
        };
        let meta = std::fs::metadata(&self.path).map_err(open_err)?;
        if meta.is_file() {
            return Ok(vec![self.path.clone()]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(open_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(self.format.extension()))
            .collect();
        files.sort();
        Ok(files)
    }

    fn dataset(&self, file: &Path) -> String {
        file.display().to_string()
    }

    fn value_error(&self, file: &Path, line: u64, column: &str, problem: String) -> SourceError {
        SourceError::Value {
            dataset: format!("{} line {line}", self.dataset(file)),
            column: column.to_owned(),
            problem,
        }
    }

    fn record(&self, values: Vec<Value>, file: &Path, line: u64) -> Result<Record, SourceError> {
        self.mapping
            .record(values)
            .map_err(|c| self.value_error(file, line, c, crate::NULL_KEY.into()))
    }

    fn scan_csv(
        &self,
        file: &Path,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        let read_err = |e: csv::Error| SourceError::Read {
            dataset: self.dataset(file),
            reason: e.to_string(),
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(file)
            .map_err(read_err)?;
        let headers = reader.headers().map_err(read_err)?.clone();
        let cols: Vec<_> = self.mapping.all_columns().collect();
        let mut index = Vec::with_capacity(cols.len());
        for c in &cols {
            let i =
                headers
                    .iter()
                    .position(|h| h == c.source)
                    .ok_or_else(|| SourceError::Schema {
                        dataset: self.dataset(file),
                        problem: format!(
                            "column {:?} (mapped to {:?}) is not in the header; the columns are {}",
                            c.source,
                            c.canonical(),
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    })?;
            index.push(i);
        }
        // Rows are named by line and columns by header, counted from 1
        // (the csv crate counts fields from 0).
        let row_err = |e: csv::Error| {
            let line = |p: Option<&csv::Position>| p.map_or(0, csv::Position::line);
            let reason = match e.kind() {
                csv::ErrorKind::Utf8 { pos, err } => format!(
                    "line {}, column {:?} (field {}): not UTF-8 text",
                    line(pos.as_ref()),
                    headers.get(err.field()).unwrap_or("?"),
                    err.field() + 1
                ),
                csv::ErrorKind::UnequalLengths {
                    pos,
                    expected_len,
                    len,
                } => format!(
                    "line {}: {len} fields, but the header has {expected_len}",
                    line(pos.as_ref())
                ),
                _ => e.to_string(),
            };
            SourceError::Read {
                dataset: self.dataset(file),
                reason,
            }
        };
        let mut n = 0u64;
        let mut row = csv::StringRecord::new();
        while reader.read_record(&mut row).map_err(row_err)? {
            let line = row.position().map_or(0, |p| p.line());
            let mut values = Vec::with_capacity(cols.len());
            for (c, &i) in cols.iter().zip(&index) {
                let field = row.get(i).unwrap_or("");
                values.push(if field == self.null_marker {
                    Value::Null
                } else {
                    text::parse(c.kind, field)
                        .map_err(|p| self.value_error(file, line, &c.source, p))?
                });
            }
            visit(self.record(values, file, line)?)?;
            n += 1;
        }
        Ok(n)
    }

    fn scan_jsonl(
        &self,
        file: &Path,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        let f = File::open(file).map_err(|e| SourceError::Open {
            what: self.dataset(file),
            reason: e.to_string(),
        })?;
        let cols: Vec<_> = self.mapping.all_columns().collect();
        let mut n = 0u64;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line_no = i as u64 + 1;
            let line = line.map_err(|e| SourceError::Read {
                dataset: format!("{} line {line_no}", self.dataset(file)),
                reason: if e.kind() == std::io::ErrorKind::InvalidData {
                    "not UTF-8 text".to_owned()
                } else {
                    e.to_string()
                },
            })?;
            // A UTF-8 byte order mark before the first object, as in CSV.
            let line = if line_no == 1 {
                line.strip_prefix('\u{feff}').unwrap_or(&line)
            } else {
                &line
            };
            if line.trim().is_empty() {
                continue;
            }
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .map_err(|e| SourceError::Read {
                    dataset: format!("{} line {line_no}", self.dataset(file)),
                    reason: format!("not a JSON object: {e}"),
                })?;
            let mut values = Vec::with_capacity(cols.len());
            for c in &cols {
                let v = match object.get(&c.source) {
                    None | Some(serde_json::Value::Null) => Ok(Value::Null),
                    Some(serde_json::Value::String(s)) => text::parse(c.kind, s),
                    Some(j) if c.kind == ValueKind::Json => {
                        Ok(Value::Json(CanonicalJson::from_value(j)))
                    }
                    Some(j @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        text::parse(c.kind, &j.to_string())
                    }
                    Some(other) => Err(format!("expected {}, found {other}", c.kind)),
                }
                .map_err(|p| self.value_error(file, line_no, &c.source, p))?;
                values.push(v);
            }
            visit(self.record(values, file, line_no)?)?;
            n += 1;
        }
        Ok(n)
    }
}

impl Source for FileSource {
    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn check(&mut self) -> Result<(), SourceError> {
        let files = self.files()?;
        if files.is_empty() {
            return Err(SourceError::Open {
                what: self.path.display().to_string(),
                reason: format!("no .{} files", self.format.extension()),
            });
        }
        if self.format == Format::Csv {
            // The header names every mapped column (checked by reading it).
            for f in &files {
                self.scan_csv_header(f)?;
            }
        }
        Ok(())
    }

    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        self.check()?;
        let files = self.files()?;
        let mut stamps = Vec::with_capacity(files.len());
        for f in &files {
            stamps.push(self.complete(f)?);
        }
        let mut n = 0;
        for f in &files {
            n += match self.format {
                Format::Csv => self.scan_csv(f, visit)?,
                Format::Jsonl => self.scan_jsonl(f, visit)?,
            };
        }
        // Every record handed out came from the files as they were before.
        if self.files()? != files {
            return Err(SourceError::Read {
                dataset: self.path.display().to_string(),
                reason: format!("files were added or removed: the directory {CHANGED_WHILE_READ}"),
            });
        }
        for (f, before) in files.iter().zip(&stamps) {
            if Stamp::of(f).ok().as_ref() != Some(before) {
                return Err(SourceError::Read {
                    dataset: self.dataset(f),
                    reason: format!("the file {CHANGED_WHILE_READ}"),
                });
            }
        }
        Ok(n)
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        crate::fetch_by_scan(self, keys)
    }
}

impl FileSource {
    /// A file's stamp, once it is known to end with a newline: a last line
    /// without one may be half written.
    fn complete(&self, file: &Path) -> Result<Stamp, SourceError> {
        use std::io::{Seek, SeekFrom};
        let open_err = |e: std::io::Error| SourceError::Open {
            what: self.dataset(file),
            reason: e.to_string(),
        };
        let stamp = Stamp::of(file).map_err(open_err)?;
        if stamp.len > 0 {
            let mut f = File::open(file).map_err(open_err)?;
            let mut last = [0u8; 1];
            f.seek(SeekFrom::End(-1))
                .and_then(|_| std::io::Read::read_exact(&mut f, &mut last))
                .map_err(open_err)?;
            if last[0] != b'\n' {
                return Err(SourceError::Read {
                    dataset: self.dataset(file),
                    reason: "the last line has no newline at its end: the file may still be \
                             being written (a complete export ends every line with a newline)"
                        .into(),
                });
            }
        }
        Ok(stamp)
    }

    fn scan_csv_header(&self, file: &Path) -> Result<(), SourceError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(file)
            .map_err(|e| SourceError::Open {
                what: self.dataset(file),
                reason: e.to_string(),
            })?;
        let headers = reader.headers().map_err(|e| SourceError::Read {
            dataset: self.dataset(file),
            reason: e.to_string(),
        })?;
        for c in self.mapping.all_columns() {
            if !headers.iter().any(|h| h == c.source) {
                return Err(SourceError::Schema {
                    dataset: self.dataset(file),
                    problem: format!(
                        "column {:?} (mapped to {:?}) is not in the header; the columns are {}",
                        c.source,
                        c.canonical(),
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnMapping;

    fn mapping() -> Mapping {
        Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![
                ColumnMapping::new("name", "name", ValueKind::Text),
                ColumnMapping::new("amount", "amount", ValueKind::Decimal),
                ColumnMapping::new("meta", "meta", ValueKind::Json),
            ],
        )
        .unwrap()
    }

    fn scan_jsonl(bytes: &[u8]) -> Result<Vec<Record>, SourceError> {
        scan_as(Format::Jsonl, "a.jsonl", bytes)
    }

    fn scan_as(format: Format, name: &str, bytes: &[u8]) -> Result<Vec<Record>, SourceError> {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let mut s = FileSource::new(dir.path(), format, mapping(), None);
        let mut out = Vec::new();
        s.scan(&mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    proptest::proptest! {
        /// Whatever a file holds, a scan returns records or an error;
        /// never a panic. Inputs are built from the pieces files are made of
        /// (quotes, separators, line ends, braces, digits, bytes that are
        /// not UTF-8), so that many get past the first line.
        #[test]
        fn any_file_is_read_or_refused_never_a_panic(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"id,name,amount,meta\n".to_vec()),
                    proptest::strategy::Just(b"{\"id\": 1, \"name\": \"a\", \"amount\": 1.5, \"meta\": {}}\n".to_vec()),
                    proptest::collection::vec(proptest::sample::select(
                        b",\"\n\r{}[]:0123456789.-eE \\\xef\xbb\xbf\xff\x00abN".to_vec()), 0..12),
                    proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..8),
                ],
                0..12,
            ),
        ) {
            let bytes: Vec<u8> = pieces.concat();
            let _ = scan_as(Format::Csv, "a.csv", &bytes);
            let _ = scan_as(Format::Jsonl, "a.jsonl", &bytes);
        }
    }

    #[test]
    fn jsonl_takes_a_leading_byte_order_mark_and_names_the_line_that_is_not_utf8() {
        let plain = b"{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2}\n".to_vec();
        let mut bom = b"\xef\xbb\xbf".to_vec();
        bom.extend_from_slice(&plain);
        assert_eq!(scan_jsonl(&bom).unwrap(), scan_jsonl(&plain).unwrap());
        assert_eq!(scan_jsonl(&plain).unwrap().len(), 2);
        // A BOM anywhere else is not white space: an error naming the line.
        let mut late = plain.clone();
        late.extend_from_slice(b"\xef\xbb\xbf{\"id\": 3}\n");
        let e = scan_jsonl(&late).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let mut broken = plain.clone();
        broken.extend_from_slice(b"{\"id\": 3, \"name\": \"\xff\"}\n");
        let e = scan_jsonl(&broken).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn jsonl_numbers_keep_every_digit_in_every_kind_of_column() {
        let r = scan_jsonl(
            b"{\"id\": 1, \"name\": 0.30000000000000001, \"amount\": 123456789012345678901.5, \
              \"meta\": {\"n\": 18446744073709551617, \"x\": 0.1000000000000000001}}\n",
        )
        .unwrap();
        assert_eq!(
            r[0].values,
            vec![
                Value::Decimal(arbor_record::Decimal::parse("123456789012345678901.5").unwrap()),
                Value::Json(
                    CanonicalJson::parse(r#"{"n":18446744073709551617,"x":0.1000000000000000001}"#)
                        .unwrap()
                ),
                Value::text("0.30000000000000001"),
            ]
        );
        // A number the column cannot hold is quoted as written.
        let r = scan_jsonl(b"{\"id\": 18446744073709551617}\n").unwrap();
        assert_eq!(r[0].key, vec![Value::Integer(18_446_744_073_709_551_617)]);
        let e = scan_jsonl(b"{\"id\": 340282366920938463463374607431768211457}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("340282366920938463463374607431768211457") && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn csv_errors_name_the_line_and_the_column() {
        let dir = tempfile::TempDir::new().unwrap();
        let scan = |bytes: &[u8]| {
            std::fs::write(dir.path().join("a.csv"), bytes).unwrap();
            let mut s = FileSource::new(dir.path(), Format::Csv, mapping(), None);
            s.scan(&mut |_| Ok(())).unwrap_err().to_string()
        };
        let e = scan(b"id,name,amount,meta\n1,a,1,\\N\n2,\xff,2,\\N\n");
        assert!(
            e.contains("line 3") && e.contains("\"name\"") && e.contains("field 2"),
            "{e}"
        );
        let e = scan(b"id,name,amount,meta\n1,a,1,\\N\n2,b\n");
        assert!(
            e.contains("line 3") && e.contains("2 fields") && e.contains("has 4"),
            "{e}"
        );
    }

    #[test]
    fn csv_and_jsonl_read_the_same_records() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("a.csv"),
            "id,name,amount,meta,ignored\n1,Zoë,1.10,\"{\"\"b\"\":1,\"\"a\"\":2}\",x\n2,,\\N,\\N,y\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.jsonl"),
            "{\"id\": 1, \"name\": \"Zoë\", \"amount\": \"1.1\", \"meta\": {\"a\": 2, \"b\": 1}}\n\n{\"id\": \"2\", \"name\": \"\"}\n",
        )
        .unwrap();
        let read = |format| {
            let mut s = FileSource::new(dir.path(), format, mapping(), None);
            let mut out = Vec::new();
            s.scan(&mut |r| {
                out.push(r);
                Ok(())
            })
            .unwrap();
            out
        };
        let csv = read(Format::Csv);
        assert_eq!(csv, read(Format::Jsonl));
        assert_eq!(csv.len(), 2);
        assert_eq!(
            csv[1].values,
            vec![Value::Null, Value::Null, Value::text("")],
            "empty is text, \\N is NULL"
        );
        let mut s = FileSource::new(dir.path(), Format::Csv, mapping(), None);
        assert_eq!(
            s.fetch(&[vec![Value::Integer(2)], vec![Value::Integer(3)]])
                .unwrap(),
            vec![Some(csv[1].clone()), None]
        );
    }

    #[test]
    fn missing_columns_and_bad_values_are_named() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("x.csv"), "id,nam,amount,meta\n1,a,1,{}\n").unwrap();
        let e = FileSource::new(dir.path(), Format::Csv, mapping(), None)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"name\"") && e.contains("nam"), "{e}");
        std::fs::write(
            dir.path().join("x.csv"),
            "id,name,amount,meta\n1,a,one,{}\n",
        )
        .unwrap();
        let mut s = FileSource::new(dir.path(), Format::Csv, mapping(), None);
        let e = s.scan(&mut |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"amount\""), "{e}");
    }

    #[test]
    fn a_file_that_changes_while_it_is_read_is_never_taken_for_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("a.csv");
        let header = "id,name,amount,meta\n";
        let scan = |s: &mut FileSource, change: &dyn Fn(u64)| {
            let mut n = 0;
            s.scan(&mut |_| {
                n += 1;
                change(n);
                Ok(())
            })
            .map(|_| n)
            .map_err(|e| e.to_string())
        };
        let mut s = FileSource::new(dir.path(), Format::Csv, mapping(), None);

        // A half-written last line is refused before anything is read.
        std::fs::write(&file, format!("{header}1,a,1,\\N\n2,b,16")).unwrap();
        let e = scan(&mut s, &|_| {}).unwrap_err();
        assert!(e.contains("a.csv") && e.contains("no newline"), "{e}");

        // Appended to while read.
        std::fs::write(&file, format!("{header}1,a,1,\\N\n2,b,2,\\N\n")).unwrap();
        assert_eq!(scan(&mut s, &|_| {}), Ok(2));
        let append = |n: u64| {
            if n == 1 {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                f.write_all(b"3,c,3,\\N\n").unwrap();
            }
        };
        let e = scan(&mut s, &append).unwrap_err();
        assert!(
            e.contains("a.csv") && e.contains("changed while it was read"),
            "{e}"
        );

        // Replaced by a rename while read (same size, another inode).
        let replace = |n: u64| {
            if n == 1 {
                let tmp = dir.path().join("a.tmp");
                std::fs::copy(&file, &tmp).unwrap();
                std::fs::rename(&tmp, &file).unwrap();
            }
        };
        let e = scan(&mut s, &replace).unwrap_err();
        assert!(e.contains("changed while it was read"), "{e}");

        // A file added to the directory while it is read.
        let add = |n: u64| {
            if n == 1 {
                std::fs::write(dir.path().join("b.csv"), header).unwrap();
            }
        };
        let e = scan(&mut s, &add).unwrap_err();
        assert!(e.contains("added or removed"), "{e}");
        // Once the writers are done, the scan reads everything.
        assert_eq!(scan(&mut s, &|_| {}), Ok(3));
    }
}
