//! `arbor demo`: the embedded demo's two systems.
//!
//! A CRM (`crm.db`, table `customers`) and an ERP (`erp.db`, table
//! `clients`) hold the same customers under different column names, mapped
//! to the same canonical names. Then drift is seeded, a known amount of each
//! kind: customers missing from the ERP, clients missing from the CRM, and
//! customers whose email, name or balance differ. Agent configs for both
//! sides are written next to the databases.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rusqlite::{Connection, params};

/// Options of `arbor demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Directory for the databases, configs and agent data.
    #[arg(long)]
    dir: PathBuf,
    /// Customers in each system.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Drifted rows of each kind.
    #[arg(long, default_value_t = 300)]
    drift: u64,
}

const SECRET: &str = "arbor demo secret: use secret_env or secret_file in production";

fn email(id: u64) -> String {
    format!("customer{id}@example.com")
}

fn name(id: u64) -> String {
    const FIRST: [&str; 8] = [
        "Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    const LAST: [&str; 8] = [
        "Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    format!(
        "{} {} {id}",
        FIRST[(id % 8) as usize],
        LAST[(id / 8 % 8) as usize]
    )
}

fn balance(id: u64) -> String {
    format!("{}.{:02}", id * 37 % 100_000, id % 100)
}

/// Writes the demo; prints what was seeded.
pub fn run(args: DemoArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let drift = args.drift.min(args.rows / 4);
    let crm_path = args.dir.join("crm.db");
    let erp_path = args.dir.join("erp.db");
    for p in [&crm_path, &erp_path] {
        if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("remove the old {}", p.display()))?;
        }
    }
    // Drift, by id ranges spread over the key space:
    //   ids ≡ 1 (mod step), the first `drift` of them: only in the CRM;
    //   ids ≡ 2 (mod step): changed in the ERP (email, name or balance);
    //   ids rows..rows+drift: only in the ERP.
    let step = (args.rows / drift.max(1)).max(3);
    let only_crm = |id: u64| drift > 0 && id % step == 1 && id / step < drift;
    let changed = |id: u64| drift > 0 && id % step == 2 && id / step < drift;

    let mut crm = Connection::open(&crm_path).context("create crm.db")?;
    crm.execute_batch(
        "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, email TEXT NOT NULL, full_name TEXT,
                                 balance NUMERIC, updated_at TEXT);",
    )?;
    let tx = crm.transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO customers VALUES (?1, ?2, ?3, ?4, '2026-11-01 09:00:00')")?;
        for id in 0..args.rows {
            insert.execute(params![id as i64, email(id), name(id), balance(id)])?;
        }
    }
    tx.commit()?;

    let mut erp = Connection::open(&erp_path).context("create erp.db")?;
    erp.execute_batch(
        "CREATE TABLE clients (client_no INTEGER PRIMARY KEY, mail TEXT NOT NULL, display_name TEXT,
                               credit TEXT, modified TEXT);",
    )?;
    let tx = erp.transaction()?;
    let mut changed_columns = [0u64; 3];
    {
        let mut insert =
            tx.prepare("INSERT INTO clients VALUES (?1, ?2, ?3, ?4, '2026-11-02T10:30:00Z')")?;
        for id in (0..args.rows + drift).filter(|&id| !only_crm(id)) {
            let (mut e, mut n, mut b) = (email(id), name(id), balance(id));
            if changed(id) {
                let which = (id / step % 3) as usize;
                changed_columns[which] += 1;
                match which {
                    0 => e = format!("customer{id}@old-domain.example"),
                    1 => n = format!("{n} Jr."),
                    _ => b = format!("{}.50", id * 37 % 100_000 + 1),
                }
            }
            insert.execute(params![id as i64, e, n, b])?;
        }
    }
    tx.commit()?;

    write_config(
        &args.dir.join("crm.toml"),
        "crm.db",
        "customers",
        &[("customer_id", "id", "integer")],
        &[
            ("email", "email", "text"),
            ("full_name", "name", "text"),
            ("balance", "balance", "decimal"),
        ],
    )?;
    write_config(
        &args.dir.join("erp.toml"),
        "erp.db",
        "clients",
        &[("client_no", "id", "integer")],
        &[
            ("mail", "email", "text"),
            ("display_name", "name", "text"),
            ("credit", "balance", "decimal"),
        ],
    )?;
    outln!(
        "demo: {} customers in the CRM and {} in the ERP; seeded drift: {} missing from the ERP, \
         {} missing from the CRM, {} changed ({} email, {} name, {} balance)",
        args.rows,
        args.rows + drift - drift,
        drift,
        drift,
        drift,
        changed_columns[0],
        changed_columns[1],
        changed_columns[2]
    );
    Ok(0)
}

fn write_config(
    path: &Path,
    db: &str,
    table: &str,
    key: &[(&str, &str, &str)],
    columns: &[(&str, &str, &str)],
) -> Result<()> {
    let side = path.file_stem().and_then(|s| s.to_str()).unwrap_or("agent");
    let col = |(s, n, k): &(&str, &str, &str)| {
        format!("  {{ source = \"{s}\", name = \"{n}\", kind = \"{k}\" }},")
    };
    let text = format!(
        "# arbor demo agent for the {side} system (written by `arbor demo`).\n\
         [agent]\nlisten = \"127.0.0.1:0\"\n\
         # A trial on one machine: no principals, yet repairs and value fetches\n\
         # are served. Never on a network: use [agent.auth] and [agent.tls].\n\
         insecure = true\n\
         data_dir = \"{side}-data\"\n\n\
         [[dataset]]\nname = \"customers\"\nsecret = \"{SECRET}\"\n\
         source = {{ kind = \"sqlite\", path = \"{db}\", table = \"{table}\" }}\n\
         key = [\n{}\n]\ncolumns = [\n{}\n]\n         # A trial setup: sync runs may read values here and write repairs.\n         serve_values = true\nallow_repairs = true\n",
        key.iter().map(col).collect::<Vec<_>>().join("\n"),
        columns.iter().map(col).collect::<Vec<_>>().join("\n"),
    );
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
