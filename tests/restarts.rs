//! Database restarts (issue 18): the server an agent follows is restarted
//! while the agent captures its changes under a steady write load.
//!
//! * PostgreSQL, followed by logical capture: the slot survives the
//!   restart; the agent reconnects and resumes from what its index holds.
//! * MariaDB, followed by polling (and a rescan for deletes): the agent
//!   reconnects and resumes from its watermark.
//!
//! The oracle in both: once the writes stop, the agent's index equals a
//! fresh build of the table (same root), so no acknowledged change was
//! lost and none applied twice.
//!
//! * PostgreSQL, and MariaDB, restarted during a throttled repair into it:
//!   the run ends 0 or 2, a rerun finishes, and a trigger counting
//!   committed updates shows every row written exactly once (a batch
//!   committed before the restart cut its answer is found already applied,
//!   not applied again).
//!
//! A restart cuts every session of the server, so these tests must not
//! run beside others: `tools/test.sh` runs the suite with
//! `--skip restarts::`, then this module alone, one test at a time. They
//! need the restart commands `tools/databases.sh` exports for its private
//! instances; under CI their absence is a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::crashes::{LogicalFollow, Server, server_config, steady_server_writes};
use super::*;

/// Restarts of the server per test.
const RESTARTS: usize = 2;

/// The command that restarts the private instance, from `var`.
fn restart_command(var: &str) -> Option<String> {
    let command = std::env::var(var).ok();
    if command.is_none() {
        skip(&format!(
            "{var} is not set: the server is not a private instance of tools/databases.sh"
        ));
    }
    command
}

fn restart(command: &str) {
    let started = Instant::now();
    let status = Command::new("sh").arg("-c").arg(command).status().unwrap();
    assert!(status.success(), "restart failed: {command}");
    eprintln!("restart: {command:?} took {:?}", started.elapsed());
}

/// Restarts the server twice under writes while `followed` follows
/// `table`, then checks it equals a fresh build made by `fresh`.
fn restarted_under_writes(
    dir: &Path,
    server: Server,
    table: &str,
    command: &str,
    followed: &str,
    fresh: &str,
) {
    let agent = AgentProcess::start(dir, followed);
    let (code, summary, _) = compare(dir, &agent.address, &agent.address);
    assert_eq!(code, 0, "{summary}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_server_writes(server, table.to_owned(), Arc::clone(&stop), 5_000_000);
    for _ in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(1_500));
        restart(command);
    }
    std::thread::sleep(Duration::from_millis(1_500));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let oracle = AgentProcess::start(dir, fresh);
    let summary = wait_in_sync(dir, &oracle.address, &agent.address);
    assert_eq!(
        summary["left"]["root"], summary["right"]["root"],
        "{summary}"
    );
    eprintln!("restart: {server:?}: {RESTARTS} restarts, {writes} writes, none lost");
}

#[test]
fn postgres_restarted_during_logical_capture_under_writes_loses_no_change() {
    let Some(command) = restart_command("ARBOR_TEST_POSTGRES_RESTART") else {
        return;
    };
    let dir = demo(2_000, 0);
    let Some(follow) = LogicalFollow::new(dir.path(), "arbor_restart") else {
        return;
    };
    follow.config(dir.path(), "logical", true);
    follow.config(dir.path(), "fresh", false);
    restarted_under_writes(
        dir.path(),
        Server::Postgres,
        &follow.table,
        &command,
        "logical.toml",
        "fresh.toml",
    );
}

#[test]
fn mariadb_restarted_during_poll_capture_under_writes_loses_no_change() {
    use mysql::prelude::Queryable;
    let Some(command) = restart_command("ARBOR_TEST_MYSQL_RESTART") else {
        return;
    };
    let dir = demo(2_000, 0);
    let (mut my, table) = crm_into_mariadb(dir.path());
    // Every write stamps the row, so polling sees it.
    my.query_drop(format!(
        "ALTER TABLE {table} MODIFY updated_at datetime(6) NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"
    ))
    .unwrap();
    let capture = "capture = { mode = \"poll\", column = \"updated_at\", interval_secs = 1, rescan_interval_secs = 5 }\n";
    for (name, capture) in [("polled", capture), ("fresh", "")] {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            server_config(name, "mysql", "ARBOR_TEST_MYSQL_URL", &table, capture),
        )
        .unwrap();
    }
    drop(my);
    restarted_under_writes(
        dir.path(),
        Server::Mariadb,
        &table,
        &command,
        "polled.toml",
        "fresh.toml",
    );
}

#[test]
fn postgres_restarted_during_a_repair_batch_applies_every_write_once() {
    const ROWS: i64 = 2_000;
    let Some(command) = restart_command("ARBOR_TEST_POSTGRES_RESTART") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    // The source: SQLite rows 'new'; the target: PostgreSQL rows 'old',
    // each committed UPDATE counted by a trigger in its own transaction.
    super::faults::counted_pair(dir.path(), ROWS);
    let url = std::env::var("ARBOR_TEST_POSTGRES_URL").unwrap();
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let table = unique_table("restart_dst");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v text);
         CREATE TABLE {table}_writes (id int8);
         CREATE FUNCTION {table}_count() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO {table}_writes VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER counted AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_count();
         INSERT INTO {table} SELECT g, 'old' FROM generate_series(1, {ROWS}) g;"
    ))
    .unwrap();
    let code = repair_through_a_restart(
        dir.path(),
        &command,
        &format!(
            "{{ kind = \"postgres\", url_env = \"ARBOR_TEST_POSTGRES_URL\", table = \"{table}\" }}"
        ),
    );
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let twice: Vec<(i64, i64)> = pg
        .query(
            &format!(
                "SELECT id, count(*) FROM {table}_writes GROUP BY id HAVING count(*) <> 1 LIMIT 5"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(twice.is_empty(), "rows written other than once: {twice:?}");
    let counted: i64 = pg
        .query_one(
            &format!("SELECT count(DISTINCT id) FROM {table}_writes"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(counted, ROWS, "every row was written");
    let values: Vec<String> = pg
        .query(&format!("SELECT DISTINCT v FROM {table}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, vec!["new".to_owned()]);
    eprintln!(
        "restart: a repair through a PostgreSQL restart: first run exit {code:?}, every row written once"
    );
    pg.batch_execute(&format!(
        "DROP TABLE {table}; DROP TABLE {table}_writes; DROP FUNCTION {table}_count()"
    ))
    .unwrap();
}

#[test]
fn mariadb_restarted_during_a_repair_batch_applies_every_write_once() {
    use mysql::prelude::Queryable;
    const ROWS: i64 = 2_000;
    let Some(command) = restart_command("ARBOR_TEST_MYSQL_RESTART") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    super::faults::counted_pair(dir.path(), ROWS);
    let url = std::env::var("ARBOR_TEST_MYSQL_URL").unwrap();
    let mut my = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    let table = unique_table("restart_dst");
    my.query_drop(format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, v text)"
    ))
    .unwrap();
    my.query_drop(format!("CREATE TABLE {table}_writes (id bigint)"))
        .unwrap();
    my.query_drop(format!(
        "CREATE TRIGGER {table}_counted AFTER UPDATE ON {table} FOR EACH ROW INSERT INTO {table}_writes VALUES (NEW.id)"
    ))
    .unwrap();
    my.query_drop(format!(
        "INSERT INTO {table} SELECT seq, 'old' FROM seq_1_to_{ROWS}"
    ))
    .unwrap();
    let code = repair_through_a_restart(
        dir.path(),
        &command,
        &format!("{{ kind = \"mysql\", url_env = \"ARBOR_TEST_MYSQL_URL\", table = \"{table}\" }}"),
    );
    let mut my = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    let twice: Vec<(i64, i64)> = my
        .query(format!(
            "SELECT id, count(*) FROM {table}_writes GROUP BY id HAVING count(*) <> 1 LIMIT 5"
        ))
        .unwrap();
    assert!(twice.is_empty(), "rows written other than once: {twice:?}");
    let counted: i64 = my
        .query_first(format!("SELECT count(DISTINCT id) FROM {table}_writes"))
        .unwrap()
        .unwrap();
    assert_eq!(counted, ROWS, "every row was written");
    let values: Vec<String> = my.query(format!("SELECT DISTINCT v FROM {table}")).unwrap();
    assert_eq!(values, vec!["new".to_owned()]);
    eprintln!(
        "restart: a repair through a MariaDB restart: first run exit {code:?}, every row written once"
    );
    my.query_drop(format!("DROP TABLE {table}, {table}_writes"))
        .unwrap();
}

/// Runs a throttled sync (about two seconds) from `src.toml` into a
/// target agent over `dst_source`, restarts the target's server 900 ms in,
/// and ends it (a rerun if the first run failed); returns the first run's
/// exit code.
fn repair_through_a_restart(dir: &Path, command: &str, dst_source: &str) -> Option<i32> {
    std::fs::write(
        dir.join("dst.toml"),
        dataset_agent(
            "dst-data",
            dst_source,
            "key = [{ source = \"id\", kind = \"integer\" }]\ncolumns = [{ source = \"v\", kind = \"text\" }]\n",
            "allow_repairs = true",
        ),
    )
    .unwrap();
    let src = AgentProcess::start(dir, "src.toml");
    let dst = AgentProcess::start(dir, "dst.toml");
    let run = super::crashes::throttled_sync(dir, &src, &dst);
    std::thread::sleep(Duration::from_millis(900));
    restart(command);
    super::crashes::end_and_rerun(dir, run, &src, &dst)
}
